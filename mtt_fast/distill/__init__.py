"""Distillation loops: MTT on pixels, and the random-real baseline."""

from mtt_fast.distill.mtt import DistillConfig, MTTDistiller, distill_random

__all__ = ["DistillConfig", "MTTDistiller", "distill_random"]
