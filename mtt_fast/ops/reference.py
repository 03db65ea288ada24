"""Pure-PyTorch references of every compiled op: the specification.

Each function here computes exactly what the op of the same name in
``torch.ops.mtt_fast`` computes (up to floating-point summation order), with plain
differentiable torch operations, so autograd gives its derivatives of any order. Tests
compare the compiled kernels against these, and the package falls back on them when the
extension is not built or has no kernel for a device.
"""

from __future__ import annotations

from torch import Tensor


def traj_loss(student: Tensor, target: Tensor, start: Tensor) -> Tensor:
    """Normalized-L2 trajectory-matching loss of MTT.

    ``L = ||student - target||^2 / ||start - target||^2``

    Args:
        student: ``[P]`` student parameters after N synthetic steps (theta_N).
        target: ``[P]`` expert parameters M epochs later (theta*_{t+M}).
        start: ``[P]`` expert parameters the student started from (theta*_t).

    Returns:
        A 0-dim tensor of the inputs' dtype. ``start == target`` gives inf or nan.
    """
    num = (student - target).pow(2).sum()
    den = (start - target).pow(2).sum()
    return num / den


def traj_loss_backward(
    grad: Tensor, student: Tensor, target: Tensor, start: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`traj_loss` for the upstream gradient ``grad`` (0-dim).

    With ``u = student - target``, ``v = start - target``, ``N = u.u``, ``D = v.v``:
    ``d/dstudent = 2 g u / D``, ``d/dstart = -2 g N v / D^2``,
    ``d/dtarget = -(d/dstudent + d/dstart)``.

    Returns:
        ``(grad_student, grad_target, grad_start)``, each ``[P]``.
    """
    u = student - target
    v = start - target
    num = u.pow(2).sum()
    den = v.pow(2).sum()
    ga = (2 * grad / den) * u
    gc = (-2 * grad * num / (den * den)) * v
    gb = -(ga + gc)
    return ga, gb, gc


# The name the rest of the package (match/, tests) uses for the reference loss.
trajectory_loss_ref = traj_loss
