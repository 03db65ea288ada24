"""The ``adjoint`` engine (exact, one step of activation memory) and ``tesla`` (approximate).

Both run the N student steps forward without a graph, keeping only the parameter history
``theta_0 .. theta_{N-1}`` (``N x P`` floats: 1.3 MB per step for ConvNet-D3 width 128),
then walk the steps backwards, recomputing one step at a time with a graph.

``adjoint`` carries the adjoint ``lambda_i = dL/dtheta_i`` back through every step. With
``g_i = grad_theta CE(theta_i, A_i(x[b_i]))`` and ``theta_{i+1} = theta_i - alpha g_i``:

    lambda_N   = dL/dtheta_N
    s_i        = lambda_{i+1} . g_i                      (one scalar per step)
    dL/dx     += -alpha ds_i/dx                          (one backward gives both
    lambda_i   = lambda_{i+1} - alpha ds_i/dtheta_i       ds_i/dx and ds_i/dtheta_i)
    dL/dalpha += -g_i . lambda_{i+1}

which is the chain rule of the unroll, term for term: the result equals the ``full``
engine's up to floating-point rounding, with the activation memory of one step.

``tesla`` is the per-step approximation of TESLA (Cui et al., 2023) and of GLaD's MTT
script: it uses ``lambda_N`` for every step (``lambda_i = lambda_N``), which drops the
Hessian terms through later steps. Exact for N = 1, biased for N > 1; kept for comparison.
"""

from __future__ import annotations

import torch

from mtt_fast.match.loss import MatchResult, trajectory_loss
from mtt_fast.match.plan import StepPlan
from mtt_fast.match.student import Student


class _History:
    """theta_0 .. theta_{N-1}, on the compute device or offloaded to (pinned) host memory."""

    def __init__(self, like: torch.Tensor, steps: int, offload: bool):
        self.device = like.device
        self.offload = offload and like.device.type != "cpu"
        if self.offload:
            pin = torch.cuda.is_available()
            self.store = torch.empty((steps, like.numel()), dtype=like.dtype, pin_memory=pin)
        else:
            self.store = torch.empty((steps, like.numel()), dtype=like.dtype, device=like.device)

    def put(self, i: int, theta: torch.Tensor) -> None:
        self.store[i].copy_(theta, non_blocking=self.offload)

    def get(self, i: int) -> torch.Tensor:
        if self.offload:
            return self.store[i].to(self.device, non_blocking=True)
        return self.store[i]


def _reverse_engine(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor,
                    images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan],
                    *, exact: bool, offload: bool) -> MatchResult:
    x0 = images.detach()
    lr = syn_lr.detach()
    n = len(plan)
    history = _History(theta_start, n, offload)

    # forward: N SGD steps, no graph kept across steps
    theta = theta_start.detach().clone()
    for i, step in enumerate(plan):
        history.put(i, theta)
        with torch.enable_grad():
            th = theta.requires_grad_(True)
            (g,) = torch.autograd.grad(student.step_loss(th, x0, labels, step), th)
        theta = (theta.detach() - lr * g).detach()
    theta_end = theta

    with torch.enable_grad():
        th_end = theta_end.clone().requires_grad_(True)
        loss = trajectory_loss(th_end, theta_target.detach(), theta_start.detach())
        (lam,) = torch.autograd.grad(loss, th_end)

    # reverse: recompute step i with a graph; one backward of s_i = lambda . g_i
    grad_x = torch.zeros_like(x0)
    grad_lr = torch.zeros((), dtype=lr.dtype, device=lr.device)
    for i in range(n - 1, -1, -1):
        step = plan[i]
        with torch.enable_grad():
            th = history.get(i).clone().requires_grad_(True)
            x = x0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(student.step_loss(th, x, labels, step), th, create_graph=True)
            s = torch.dot(lam, g)
            if exact:
                ds_dx, ds_dth = torch.autograd.grad(s, (x, th))
            else:
                (ds_dx,) = torch.autograd.grad(s, x)
        grad_x.sub_(lr * ds_dx)
        grad_lr = grad_lr - s.detach()
        if exact:
            lam = lam - lr * ds_dth
    return MatchResult(loss.detach(), grad_x, grad_lr, theta_end)


def match_adjoint(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan], *,
                  offload: bool = False) -> MatchResult:
    """Exact gradients of the unrolled matching loss with one step of activation memory.

    Same arguments and result as :func:`mtt_fast.match.match_full`.

    Args:
        offload: keep the parameter history on the host (pinned memory) instead of the
            compute device, for networks whose ``N x P`` does not fit beside the activations.
    """
    return _reverse_engine(student, theta_start, theta_target, images, labels, syn_lr, plan,
                           exact=True, offload=offload)


def match_tesla(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor, images: torch.Tensor,
                labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan], *,
                offload: bool = False) -> MatchResult:
    """TESLA's per-step approximation (APPROXIMATE for N > 1: no Hessian terms through later steps).

    Same arguments and result as :func:`mtt_fast.match.match_full`; the loss and ``theta_end``
    are exact, the gradients use ``dL/dtheta_N`` in place of every step's adjoint.
    """
    return _reverse_engine(student, theta_start, theta_target, images, labels, syn_lr, plan,
                           exact=False, offload=offload)
