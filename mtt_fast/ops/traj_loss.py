"""The trajectory-matching loss ``||a - b||^2 / ||c - b||^2`` as a compiled op.

``torch.ops.mtt_fast.traj_loss(student, target, start)`` computes both sums in one fused
pass (csrc/traj_loss). This module gives it what torch needs around a C++ op:

* fake kernels (``torch.library.register_fake``) for both ops, so ``torch.compile`` and
  meta/fake tensors trace through them;
* autograd for ``traj_loss``, whose backward is the compiled ``traj_loss_backward`` op;
* autograd for ``traj_loss_backward`` itself, written with differentiable torch ops, so
  double (and higher) backward works: MTT differentiates through the student's own
  gradient, and the loss's gradient may itself be differentiated.

Registration happens at import, only when ``mtt_fast._C`` loaded (the schemas must exist).
:func:`trajectory_loss` is the entry point the rest of the package uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.ops import _load, reference
from mtt_fast.ops.impl import IMPLS, fused_selected, resolve_impl

__all__ = ["IMPLS", "fused_available", "trajectory_loss"]

_COMPILED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------
# fake kernels: shapes, dtypes and devices of the outputs
# --------------------------------------------------------------------------------------
def _fake_check(student: Tensor, target: Tensor, start: Tensor) -> None:
    torch._check(
        student.dim() == 1 and target.dim() == 1 and start.dim() == 1,
        lambda: "traj_loss: student, target and start must be 1-D",
    )
    torch._check(
        student.shape == target.shape and student.shape == start.shape,
        lambda: "traj_loss: student, target and start must have the same length",
    )
    torch._check(
        student.dtype == target.dtype == start.dtype,
        lambda: "traj_loss: student, target and start must have the same dtype",
    )
    torch._check(
        student.dtype in _COMPILED_DTYPES,
        lambda: f"traj_loss: only float32 and float64 are supported, got {student.dtype}",
    )
    torch._check(
        student.device == target.device == start.device,
        lambda: "traj_loss: student, target and start must be on the same device",
    )


def _traj_loss_fake(student: Tensor, target: Tensor, start: Tensor) -> Tensor:
    _fake_check(student, target, start)
    return student.new_empty(())


def _traj_loss_backward_fake(
    grad: Tensor, student: Tensor, target: Tensor, start: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    _fake_check(student, target, start)
    torch._check(grad.numel() == 1, lambda: "traj_loss_backward: grad must hold one element")
    return torch.empty_like(student), torch.empty_like(target), torch.empty_like(start)


# --------------------------------------------------------------------------------------
# autograd of traj_loss: its backward is the compiled backward op
# --------------------------------------------------------------------------------------
def _traj_loss_setup_context(ctx, inputs, output) -> None:
    student, target, start = inputs
    ctx.save_for_backward(student, target, start)


def _traj_loss_backward_formula(ctx, grad: Tensor):
    student, target, start = ctx.saved_tensors
    if not any(ctx.needs_input_grad):
        return None, None, None
    ga, gb, gc = torch.ops.mtt_fast.traj_loss_backward.default(grad, student, target, start)
    return (
        ga if ctx.needs_input_grad[0] else None,
        gb if ctx.needs_input_grad[1] else None,
        gc if ctx.needs_input_grad[2] else None,
    )


# --------------------------------------------------------------------------------------
# autograd of traj_loss_backward (double backward), in differentiable torch ops
# --------------------------------------------------------------------------------------
# The backward op maps (g, a, b, c) to (ga, gb, gc) with u = a - b, v = c - b, N = u.u,
# D = v.v:  ga = 2 g u / D,  gc = -2 g N v / D^2,  gb = -(ga + gc).
# For cotangents (Ra, Rb, Rc) of (ga, gb, gc), the scalar s = Ra.ga + Rb.gb + Rc.gc equals
# P.ga + Q.gc with P = Ra - Rb, Q = Rc - Rb, i.e. s = g (2 pu / D - 2 N qv / D^2) with
# pu = P.u, qv = Q.v. Differentiating:
#   ds/dg = 2 pu / D - 2 N qv / D^2
#   ds/du = g (2 P / D - 4 qv u / D^2)
#   ds/dv = g (-4 pu v / D^2 - 2 N Q / D^2 + 8 N qv v / D^3)
#   ds/da = ds/du,  ds/dc = ds/dv,  ds/db = -(ds/du + ds/dv).
# These are plain torch ops, so autograd differentiates them again (third order and up).
def _traj_loss_backward_setup_context(ctx, inputs, output) -> None:
    grad, student, target, start = inputs
    ctx.save_for_backward(grad, student, target, start)


def _traj_loss_double_backward(ctx, r_a, r_b, r_c):
    grad, student, target, start = ctx.saved_tensors
    need_g, need_a, need_b, need_c = ctx.needs_input_grad
    if not (need_g or need_a or need_b or need_c):
        return None, None, None, None
    zeros = torch.zeros_like(student)
    r_a = zeros if r_a is None else r_a
    r_b = zeros if r_b is None else r_b
    r_c = zeros if r_c is None else r_c
    g = grad.reshape(())
    u = student - target
    v = start - target
    num = torch.dot(u, u)
    den = torch.dot(v, v)
    p = r_a - r_b
    q = r_c - r_b
    pu = torch.dot(p, u)
    qv = torch.dot(q, v)
    den2 = den * den

    d_g = d_u = d_v = None
    if need_g:
        d_g = (2 * pu / den - 2 * num * qv / den2).reshape(grad.shape)
    if need_a or need_b:
        d_u = g * (2 / den * p - (4 * qv / den2) * u)
    if need_c or need_b:
        d_v = g * ((-4 * pu / den2 + 8 * num * qv / (den2 * den)) * v - (2 * num / den2) * q)
    d_b = -(d_u + d_v) if need_b else None
    return d_g, (d_u if need_a else None), d_b, (d_v if need_c else None)


def _register() -> bool:
    """Registers fake kernels and autograd for both ops; False when ``_C`` is not loaded."""
    if not _load.loaded():
        return False
    torch.library.register_fake("mtt_fast::traj_loss")(_traj_loss_fake)
    torch.library.register_fake("mtt_fast::traj_loss_backward")(_traj_loss_backward_fake)
    torch.library.register_autograd(
        "mtt_fast::traj_loss",
        _traj_loss_backward_formula,
        setup_context=_traj_loss_setup_context,
    )
    torch.library.register_autograd(
        "mtt_fast::traj_loss_backward",
        _traj_loss_double_backward,
        setup_context=_traj_loss_backward_setup_context,
    )
    return True


REGISTERED = _register()

# Device types with a compiled kernel, fixed at import (a dict/set lookup that
# torch.compile can trace, unlike the dispatcher query behind it).
COMPILED_DEVICES = _load.compiled_devices("traj_loss", REGISTERED)


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
def _check_args(student: Tensor, target: Tensor, start: Tensor) -> None:
    for name, t in (("student", student), ("target", target), ("start", start)):
        if not isinstance(t, Tensor):
            raise TypeError(f"trajectory_loss: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(
                f"trajectory_loss: {name} must be a 1-D flat parameter vector, "
                f"got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"trajectory_loss: {name} must be floating point, got {t.dtype}")
    if not (student.shape == target.shape == start.shape):
        raise ValueError(
            "trajectory_loss: student, target and start must have the same length, got "
            f"{student.shape[0]}, {target.shape[0]}, {start.shape[0]}"
        )
    if not (student.dtype == target.dtype == start.dtype):
        raise ValueError(
            "trajectory_loss: student, target and start must have the same dtype, got "
            f"{student.dtype}, {target.dtype}, {start.dtype}"
        )
    if not (student.device == target.device == start.device):
        raise ValueError(
            "trajectory_loss: student, target and start must be on the same device, got "
            f"{student.device}, {target.device}, {start.device}"
        )


def fused_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the fused (compiled) op can run on tensors of this device and dtype."""
    device_type = torch.device(device).type
    return device_type in COMPILED_DEVICES and dtype in _COMPILED_DTYPES


def trajectory_loss(student: Tensor, target: Tensor, start: Tensor, impl: str = "auto") -> Tensor:
    """MTT's normalized trajectory-matching loss ``||a - b||^2 / ||c - b||^2``.

    Differentiable in all three inputs, to any order.

    Args:
        student: ``[P]`` student parameters after N synthetic steps (theta_N).
        target: ``[P]`` expert parameters M epochs after the start (theta*_{t+M}).
        start: ``[P]`` expert parameters the student started from (theta*_t).
        impl: ``"auto"`` uses the fused (compiled) op when ``mtt_fast._C`` is loaded and has
            a kernel for the inputs' device and dtype (float32/float64) that passed its
            parity check there (:mod:`mtt_fast.ops.verify`), else the reference;
            ``"fused"`` requires the fused op (RuntimeError if unavailable; ``"compiled"``
            is an alias, see :mod:`mtt_fast.ops.impl`); ``"reference"`` always uses the
            pure-PyTorch reference.

    Returns:
        A 0-dim tensor of the inputs' dtype.

    Raises:
        ValueError: bad ``impl``, or inputs that are not 1-D / same length / same dtype /
            same device.
        RuntimeError: ``impl="fused"`` where the fused op cannot run.
    """
    impl = resolve_impl(impl, "trajectory_loss")
    _check_args(student, target, start)
    if impl == "reference":
        return reference.traj_loss(student, target, start)
    usable = fused_available(student.device, student.dtype)
    if impl == "fused" and not usable:
        raise RuntimeError(_unavailable_reason(student.device, student.dtype))
    if not fused_selected(impl, "traj_loss", student.device, student.dtype, usable):
        return reference.traj_loss(student, target, start)
    return torch.ops.mtt_fast.traj_loss.default(
        student.contiguous(), target.contiguous(), start.contiguous()
    )


def _unavailable_reason(device: torch.device, dtype: torch.dtype) -> str:
    why = _load.unavailable_reason("traj_loss", device, dtype, devices=COMPILED_DEVICES, dtypes=_COMPILED_DTYPES)
    return f"trajectory_loss(impl='fused'): {why}; or use impl='auto'"
