"""Applying sampled DSA parameters to a batch: ``apply`` and ``augment``.

``apply(x, params)`` is a pure function of ``x`` and the parameter tensors: the same
``params`` applied to two batches of the same shape transform them identically (the
"Siamese" in DSA), and applying them again replays the call bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.augment.config import DSAConfig
from mtt_fast.augment.functional import (
    apply_color,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_noise,
    apply_rotate,
    apply_scale,
)
from mtt_fast.augment.fused import apply_fused
from mtt_fast.augment.sampling import AugParams, sample_params
from mtt_fast.errors import UserError
from mtt_fast.ops.dsa import fused_available, unavailable_reason
from mtt_fast.ops.impl import IMPLS, fused_selected, resolve_impl

__all__ = ["IMPLS", "FusedDSAUnavailable", "apply", "apply_reference", "augment", "uses_fused"]


class FusedDSAUnavailable(UserError, NotImplementedError):
    """``impl="fused"`` was asked for, but the fused DSA op cannot run on these images."""


def _apply_group(x: Tensor, op: str, p: AugParams) -> Tensor:
    if op == "color":
        return apply_color(x, p.brightness, p.saturation, p.contrast)
    if op == "crop":
        return apply_crop(x, p.crop_shift)
    if op == "cutout":
        return apply_cutout(x, p.cutout_center, p.cutout_size)
    if op == "flip":
        return apply_flip(x, p.flip)
    if op == "scale":
        return apply_scale(x, p.theta_scale)
    if op == "rotate":
        return apply_rotate(x, p.theta_rot)
    if op == "noise":
        return apply_noise(x, p.noise)
    raise ValueError(f"unknown DSA op {op!r} in AugParams.ops")


def apply_reference(x: Tensor, params: AugParams) -> Tensor:
    """The pure-PyTorch DSA: each group of ``params.ops`` in order (see :mod:`.functional`)."""
    for op in params.ops:
        x = _apply_group(x, op, params)
    return x


def apply(x: Tensor, params: AugParams, impl: str = "reference") -> Tensor:
    """Apply sampled DSA parameters to images.

    Differentiable (and twice differentiable) in ``x``; draws no random numbers.

    Args:
        x: images ``[B, C, H, W]``, a floating dtype, the shape ``params`` was drawn for.
        params: from :func:`sample_params`; moved to ``x``'s device and dtype as needed.
        impl: ``"reference"`` (pure PyTorch, :func:`apply_reference`), ``"fused"`` (the
            compiled one-pass op, :mod:`mtt_fast.augment.fused`) or ``"auto"`` (the fused
            op when ``mtt_fast._C`` is loaded with a kernel for ``x``'s device and dtype,
            float32/float64, that passed its parity check there (:mod:`mtt_fast.ops.verify`),
            else the reference). In mode "S" both agree to float
            rounding; in mode "M" the fused op samples once through the composed
            geometry (see :mod:`mtt_fast.augment.fused` for the exact differences).
            ``"compiled"`` is accepted as an alias of ``"fused"`` (:mod:`mtt_fast.ops.impl`).

    Returns:
        The augmented images, same shape and dtype as ``x``.

    Raises:
        UserError: unknown ``impl``; :class:`FusedDSAUnavailable` for ``"fused"`` where
            the compiled op cannot run (not built, no kernel for the device, dtype).
        ValueError: ``x`` does not have the shape the parameters were drawn for.
    """
    impl = resolve_impl(impl, "DSA", error=UserError)
    if impl == "fused" and not fused_available(x.device, x.dtype):
        raise FusedDSAUnavailable(
            f"DSA impl 'fused' is not available: {unavailable_reason(x.device, x.dtype)}; "
            "use impl 'reference' or 'auto'"
        )
    if x.dim() != 4:
        raise ValueError(f"DSA expects images [B, C, H, W], got shape {tuple(x.shape)}")
    if tuple(x.shape) != tuple(params.shape):
        raise ValueError(
            f"DSA params were drawn for shape {tuple(params.shape)}, got images of shape "
            f"{tuple(x.shape)}"
        )
    if not params.ops:
        return x
    if fused_selected(impl, "dsa", x.device, x.dtype, fused_available(x.device, x.dtype)):
        return apply_fused(x, params)
    return apply_reference(x, params)


def augment(
    x: Tensor, cfg: DSAConfig, generator: torch.Generator, impl: str = "reference"
) -> tuple[Tensor, AugParams]:
    """Sample parameters for ``x`` and apply them; returns ``(y, params)``.

    Keep ``params`` to apply the same augmentation to another batch (Siamese) or to replay
    this call (e.g. the adjoint engine's recomputation).
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # the fused op packs its parameters on the host: sample them there (same values)
    impl = resolve_impl(impl, "DSA", error=UserError)
    where = "cpu" if uses_fused(x, impl) else x.device
    params = sample_params(cfg, tuple(x.shape), generator, device=where, dtype=dtype)
    return apply(x, params, impl=impl), params


def uses_fused(x: Tensor, impl: str) -> bool:
    """Whether :func:`apply` with ``impl`` takes the fused op for images like ``x``."""
    impl = resolve_impl(impl, "DSA", error=UserError)
    if impl == "fused":
        return True
    return x.is_floating_point() and fused_selected(impl, "dsa", x.device, x.dtype, fused_available(x.device, x.dtype))
