"""Differentiable Siamese Augmentation (DSA), as used by MTT.

Parameter SAMPLING (Python, seeded from an explicit ``torch.Generator``) is kept apart from
APPLICATION (a pure differentiable function of the images and the parameter tensors), so
an augmentation can be replayed exactly and applied identically to several batches.

    from mtt_fast.augment import DSAConfig, sample_params, apply, augment
    cfg = DSAConfig()                                  # MTT defaults, mode "S"
    g = torch.Generator().manual_seed(0)
    params = sample_params(cfg, x.shape, g, device=x.device, dtype=x.dtype)
    y = apply(x, params)                               # same params -> same transform
    y, params = augment(x, cfg, g)                     # sample + apply

``mtt_fast.augment.functional`` holds one function per op group (the augmentation as MTT
defines it, which ``impl="reference"`` runs and the fused path reproduces in mode "S"; the
spec of the compiled op itself is ``mtt_fast.ops.reference.dsa``);
``mtt_fast.augment.sampling`` documents the exact draw order.
"""

from mtt_fast.augment.config import DEFAULT_STRATEGY, OP_GROUPS, DSAConfig, parse_strategy
from mtt_fast.augment.dsa import (
    IMPLS,
    FusedDSAUnavailable,
    apply,
    apply_reference,
    augment,
    uses_fused,
)
from mtt_fast.augment.functional import (
    apply_brightness,
    apply_color,
    apply_contrast,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_noise,
    apply_rotate,
    apply_saturation,
    apply_scale,
    cutout_mask,
    rotate_theta,
    scale_theta,
)
from mtt_fast.augment.sampling import TENSOR_FIELDS, AugParams, sample_params

__all__ = [
    "DEFAULT_STRATEGY",
    "IMPLS",
    "OP_GROUPS",
    "TENSOR_FIELDS",
    "AugParams",
    "DSAConfig",
    "FusedDSAUnavailable",
    "apply",
    "apply_brightness",
    "apply_color",
    "apply_contrast",
    "apply_crop",
    "apply_cutout",
    "apply_flip",
    "apply_noise",
    "apply_reference",
    "apply_rotate",
    "apply_saturation",
    "apply_scale",
    "augment",
    "cutout_mask",
    "parse_strategy",
    "rotate_theta",
    "sample_params",
    "scale_theta",
    "uses_fused",
]
