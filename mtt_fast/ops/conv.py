"""conv2d whose double backward runs on the convolution kernels' own backward passes.

Trajectory matching differentiates the student's gradient again (reverse over reverse). For a
convolution ``y = conv(x, w)``, autograd's double backward (``aten::_convolution_double_backward``)
computes its four products as FORWARD convolutions: the weight gradient's derivative on a
batch/channel-transposed copy of the tensors and the input gradient's as a transposed
convolution. On the CPU those reach about 200 GFLOP/s here against about 285 for the
convolution's own backward kernels (``benchmarks/results/profile_cpu.md``: "double_backward,
fwd conv"). :func:`conv2d` states the same mathematics with the backward kernels:

* first backward: ``(gx, gw) = convolution_backward(gy, x, w)`` (as autograd does), recorded as
  one differentiable node :class:`_ConvBackward` when a graph is being built;
* its backward, given ``(ggx, ggw)``:

  - ``gy_bar = conv(ggx, w) + conv(x, ggw)``            (two forward convolutions),
  - ``x_bar  = convolution_backward(gy, x, ggw)[dX]``    (the input-gradient kernel, weight ggw),
  - ``w_bar  = convolution_backward(gy, ggx, w)[dW]``    (the weight-gradient kernel, input ggx).

The result equals autograd's (float64 to rounding, ``tests/ops/test_conv_op.py``, with gradcheck
and gradgradcheck); only the kernels differ. Higher derivatives stay right: the second-order
node's backward is made of differentiable ops (``convolution_backward`` has its own derivative
in autograd), so a third derivative runs on autograd's formulas. (It is not marked
``once_differentiable`` on purpose: ``torch.autograd.grad(..., inputs=...)`` prunes the error
node that decorator inserts and silently returns zeros for a third derivative.)

Pure PyTorch (no compiled code): on CUDA the same calls run on cuDNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

__all__ = ["conv2d"]


def _backward(gy, x, w, stride, padding, dilation, mask, bias=False):
    """``aten::convolution_backward``: (dX, dW, db) as ``mask`` asks, in the one call autograd's own
    convolution node makes (so first-order gradients keep its bits)."""
    return torch.ops.aten.convolution_backward(gy, x, w, [w.shape[0]] if bias else None, stride, padding, dilation,
                                               False, [0, 0], 1, mask)


def _needed(ctx, i: int) -> bool:
    """Whether the running backward pass uses input ``i``'s gradient. ``ctx.needs_input_grad`` only
    says that the input requires grad; ``torch.autograd.grad(loss, params, create_graph=True)``
    (the student step) never uses the gradient of the images that enter the first layer, which
    autograd's own convolution node skips too (it asks the engine, as this does)."""
    if not ctx.needs_input_grad[i]:
        return False
    try:
        node = ctx.next_functions[i][0]
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError, TypeError):  # outside a backward pass, or a torch without it
        return True


def _gy_bar(x, w, ggx, ggw, stride, padding, dilation):
    """The double backward's ``d/d gy``: ``conv(x, ggw) + conv(ggx, w)`` (a term is left out when
    its cotangent is None; None when both are). A module function, so
    ``benchmarks/profile_step.py`` can time other ways of computing it."""
    out = None
    if ggw is not None:
        out = F.conv2d(x, ggw, None, stride, padding, dilation)
    if ggx is not None:
        t = F.conv2d(ggx, w, None, stride, padding, dilation)
        out = t if out is None else out + t
    return out


class _ConvBackward(Function):
    """``(x, w, gy) -> (gx, gw, gb)`` of a convolution, differentiable once more."""

    @staticmethod
    def forward(ctx, x, w, gy, stride, padding, dilation, need_x, has_bias):
        ctx.save_for_backward(x, w, gy)
        ctx.conf, ctx.need_x = (stride, padding, dilation), need_x
        gx, gw, gb = _backward(gy, x, w, stride, padding, dilation, [need_x, True, has_bias], bias=has_bias)
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        x, w, gy = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        ggx = ggx if ctx.need_x else None
        x_bar = w_bar = None
        gy_bar = _gy_bar(x, w, ggx, ggw, stride, padding, dilation)
        if ggw is not None and _needed(ctx, 0):
            x_bar = _backward(gy, x, ggw, stride, padding, dilation, [True, False, False])[0]
        if ggx is not None and _needed(ctx, 1):
            w_bar = _backward(gy, ggx, w, stride, padding, dilation, [False, True, False])[1]
        if ggb is not None:  # gb = gy summed over batch and space
            t = ggb.view(1, -1, 1, 1).expand_as(gy)
            gy_bar = t if gy_bar is None else gy_bar + t
        return x_bar, w_bar, gy_bar, None, None, None, None, None


class _Conv(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation):
        ctx.save_for_backward(x, w)
        ctx.conf, ctx.has_bias = (stride, padding, dilation), b is not None
        return F.conv2d(x, w, b, stride, padding, dilation)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need_x, need_w = _needed(ctx, 0), _needed(ctx, 1)
        need_b = ctx.has_bias and _needed(ctx, 2)
        if torch.is_grad_enabled():  # create_graph: the gradient is differentiated again
            gx, gw, gb = _ConvBackward.apply(x, w, gy, *ctx.conf, need_x, need_b)
        else:
            gx, gw, gb = _backward(gy, x, w, *ctx.conf, [need_x, need_w, need_b], bias=need_b)
        return (gx if need_x else None), (gw if need_w else None), (gb if need_b else None), None, None, None


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1) -> torch.Tensor:
    """``F.conv2d`` (groups 1, numeric padding) with the double backward described above.

    Where no gradient will be taken (grad mode off, or nothing requires grad) and under autocast
    (whose casts the custom nodes would not replay) it is ``F.conv2d`` itself.
    """
    if x.dim() != 4 or isinstance(padding, str):
        raise ValueError("mtt_fast.ops.conv.conv2d: a 4-d input and numeric padding only")
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not needs_grad or torch.is_autocast_enabled(x.device.type):
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    return _Conv.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation))
