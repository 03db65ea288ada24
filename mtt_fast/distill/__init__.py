"""Distillation loops: MTT on pixels, GLaD (MTT through a generator), DD, and the random-real baseline."""

from mtt_fast.distill.dd import DD_DEFAULTS, DDDistiller
from mtt_fast.distill.glad import GLaDDistiller
from mtt_fast.distill.mtt import DistillConfig, MTTDistiller, distill_random

__all__ = ["DD_DEFAULTS", "DDDistiller", "DistillConfig", "GLaDDistiller", "MTTDistiller", "distill_random"]
