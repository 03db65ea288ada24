"""The fused ConvNet block (instance norm + ReLU + 2x2 average pool), twice differentiable.

Three compiled ops (csrc/block; every formula is written out in csrc/block/block.h):

* ``convblock_forward(x, weight, bias, eps) -> (y, stats)``: for the conv output ``x``
  ``[B, C, H, W]``, ``y = avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``
  ``[B, C, H//2, W//2]`` and ``stats`` ``[B, C, 2]`` = per (sample, channel) mean and
  ``rstd = 1/sqrt(var + eps)``. Autograd saves only ``x`` and ``stats`` (and the two
  ``[C]`` vectors), never the normalized or ReLU map.
* ``convblock_backward(grad_y, x, weight, bias, stats) -> (grad_x, grad_weight,
  grad_bias)``: the backward, itself an op with autograd, so ``create_graph=True`` records
  one node per block instead of the dozens of small ops of the native double backward.
* ``convblock_double_backward(grad_y, x, weight, bias, stats, r_x, r_weight, r_bias) ->
  (d/dgrad_y, d/dx, d/dweight)``: the vector-Jacobian product of the backward for
  cotangents of its outputs. That is what the MTT engines need (the Hessian-vector
  product of the student's step); its own backward raises NotImplementedError (third
  order through a fused block: use the reference block).

The stats passed to the backward ops are the forward's (non-differentiable) stats of the
same ``x``; the backward ops' derivatives w.r.t. ``x`` are total (through mean and rstd).

:func:`convblock` is the entry point (:class:`mtt_fast.models.ConvNet` calls it);
:func:`mtt_fast.ops.reference.convblock` is the spec.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.ops import _load, reference
from mtt_fast.ops.impl import IMPLS, fused_selected, resolve_impl

__all__ = ["COMPILED_DEVICES", "IMPLS", "convblock", "fused_available"]

_COMPILED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------
# fake kernels
# --------------------------------------------------------------------------------------
def _fake_check(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    torch._check(x.dim() == 4, lambda: "convblock: x must be [B, C, H, W]")
    torch._check(x.dtype in _COMPILED_DTYPES, lambda: f"convblock: float32/float64 only, got {x.dtype}")
    torch._check(weight.shape == (x.shape[1],) and bias.shape == (x.shape[1],),
                 lambda: "convblock: weight and bias must be [C]")
    torch._check(weight.dtype == x.dtype and bias.dtype == x.dtype,
                 lambda: "convblock: weight and bias must have x's dtype")


def _forward_fake(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _fake_check(x, weight, bias)
    b, c, h, w = x.shape
    return x.new_empty((b, c, h // 2, w // 2)), x.new_empty((b, c, 2))


def _backward_fake(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor,
                   stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _fake_check(x, weight, bias)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _double_backward_fake(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, stats: Tensor,
                          r_x: Tensor | None, r_weight: Tensor | None,
                          r_bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    _fake_check(x, weight, bias)
    return torch.empty_like(grad_y), torch.empty_like(x), torch.empty_like(weight)


# --------------------------------------------------------------------------------------
# autograd of convblock_forward: its backward is the compiled convblock_backward
# --------------------------------------------------------------------------------------
def _forward_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps = inputs
    _y, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(x, weight, bias, stats)


def _forward_backward(ctx, grad_y: Tensor, _grad_stats: Tensor | None):
    x, weight, bias, stats = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if not (need_x or need_w or need_b):
        return None, None, None, None
    gx, gw, gb = torch.ops.mtt_fast.convblock_backward.default(
        grad_y.contiguous(), x, weight, bias, stats
    )
    return (gx if need_x else None), (gw if need_w else None), (gb if need_b else None), None


# --------------------------------------------------------------------------------------
# autograd of convblock_backward: the compiled double backward
# --------------------------------------------------------------------------------------
def _backward_setup_context(ctx, inputs, output) -> None:
    grad_y, x, weight, bias, stats = inputs
    ctx.set_materialize_grads(False)  # absent cotangents go to the op as None (zero)
    ctx.save_for_backward(grad_y, x, weight, bias, stats)


def _backward_backward(ctx, r_x: Tensor | None, r_weight: Tensor | None, r_bias: Tensor | None):
    grad_y, x, weight, bias, stats = ctx.saved_tensors
    need_g, need_x, need_w = ctx.needs_input_grad[:3]
    if not (need_g or need_x or need_w) or (r_x is None and r_weight is None and r_bias is None):
        return None, None, None, None, None
    ggy, ggx, ggw = torch.ops.mtt_fast.convblock_double_backward.default(
        grad_y, x, weight, bias, stats,
        None if r_x is None else r_x.contiguous(),
        None if r_weight is None else r_weight.contiguous(),
        None if r_bias is None else r_bias.contiguous(),
    )
    # bias: the outputs of the backward depend on it only through the ReLU mask (piecewise
    # constant), so its derivative is zero; stats: the x derivative above is the total one.
    return (ggy if need_g else None), (ggx if need_x else None), (ggw if need_w else None), None, None


def _double_backward_setup_context(ctx, inputs, output) -> None:
    pass


def _double_backward_backward(ctx, *grads):
    raise NotImplementedError(
        "mtt_fast::convblock_double_backward: derivatives of third order through the fused "
        "ConvNet block are not implemented; build the ConvNet with block_impl='reference'"
    )


def _register() -> bool:
    """Registers fake kernels and autograd; False when ``_C`` is not loaded or lacks the ops."""
    if not _load.loaded() or not hasattr(torch.ops.mtt_fast, "convblock_forward"):
        return False
    torch.library.register_fake("mtt_fast::convblock_forward")(_forward_fake)
    torch.library.register_fake("mtt_fast::convblock_backward")(_backward_fake)
    torch.library.register_fake("mtt_fast::convblock_double_backward")(_double_backward_fake)
    torch.library.register_autograd(
        "mtt_fast::convblock_forward", _forward_backward, setup_context=_forward_setup_context
    )
    torch.library.register_autograd(
        "mtt_fast::convblock_backward", _backward_backward, setup_context=_backward_setup_context
    )
    torch.library.register_autograd(
        "mtt_fast::convblock_double_backward", _double_backward_backward,
        setup_context=_double_backward_setup_context,
    )
    return True


REGISTERED = _register()

# Device types with a compiled kernel, fixed at import (traceable by torch.compile).
COMPILED_DEVICES = _load.compiled_devices("convblock_forward", REGISTERED)


def fused_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the fused block can run on tensors of this device and dtype."""
    return torch.device(device).type in COMPILED_DEVICES and dtype in _COMPILED_DTYPES


def unavailable_reason(device: torch.device | str, dtype: torch.dtype) -> str:
    """Why :func:`fused_available` is False, for error messages."""
    return _load.unavailable_reason("convblock", device, dtype, devices=COMPILED_DEVICES, dtypes=_COMPILED_DTYPES,
                                    registered=REGISTERED)


def convblock(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5, impl: str = "auto") -> Tensor:
    """Instance norm (affine) -> ReLU -> 2x2 average pool of the conv output ``x``.

    Equal to :func:`mtt_fast.ops.reference.convblock` (``nn.GroupNorm(C, C)``, ``nn.ReLU``,
    ``nn.AvgPool2d(2, 2)``), differentiable twice in ``x``, ``weight`` and ``bias``.

    Args:
        x: ``[B, C, H, W]``, H and W at least 2.
        weight, bias: ``[C]``.
        eps: the norm's epsilon.
        impl: ``"auto"`` (fused when :func:`fused_available` and verified on this device and
            dtype, :mod:`mtt_fast.ops.verify`; else the reference),
            ``"fused"`` (RuntimeError when unavailable) or ``"reference"``
            (:mod:`mtt_fast.ops.impl`; ``"compiled"`` is an alias of ``"fused"``).

    Returns:
        ``[B, C, H // 2, W // 2]``.
    """
    impl = resolve_impl(impl, "convblock")
    if impl == "reference":
        return reference.convblock(x, weight, bias, eps)
    usable = fused_available(x.device, x.dtype) and weight.dtype == x.dtype and bias.dtype == x.dtype
    if not usable and impl == "fused":
        raise RuntimeError(f"convblock(impl='fused'): {unavailable_reason(x.device, x.dtype)}")
    if not fused_selected(impl, "block", x.device, x.dtype, usable):
        return reference.convblock(x, weight, bias, eps)
    y, _stats = torch.ops.mtt_fast.convblock_forward.default(
        x.contiguous(), weight.contiguous(), bias.contiguous(), float(eps)
    )
    return y
