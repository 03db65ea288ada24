"""Distillation: one loop (:class:`Distiller`) and the methods that plug into it.

Methods (``--method``): mtt (pixels, trajectory matching), glad (a generator's latents,
trajectory matching), dd (pixels, unrolled cross-entropy), random (real images, no
optimization). See :mod:`mtt_fast.distill.methods`.
"""

from mtt_fast.distill.config import (
           DDOptions,
           DistillConfig,
           GLaDOptions,
           InLoopEval,
           TrajectoryOptions,
)
from mtt_fast.distill.loop import Distiller
from mtt_fast.distill.registry import METHODS, method_class

__all__ = [
           "METHODS",
           "DDOptions",
           "DistillConfig",
           "Distiller",
           "GLaDOptions",
           "InLoopEval",
           "TrajectoryOptions",
           "method_class",
]
