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
    dL/dy     += -alpha ds_i/dy                          (soft labels: the same backward)

which is the chain rule of the unroll, term for term: the result equals the ``full``
engine's up to floating-point rounding, with the activation memory of one step.

``tesla`` is the per-step approximation of TESLA (Cui et al., 2023) and of GLaD's MTT
script: it uses ``lambda_N`` for every step (``lambda_i = lambda_N``), which drops the
Hessian terms through later steps. Exact for N = 1, biased for N > 1; kept for comparison.
"""

from __future__ import annotations

import torch

from mtt_fast.match.loss import MatchResult, check_loss_mask, masked_trajectory_loss, soft_labels
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


class _Grads:
    """The accumulated d loss / d (images, syn_lr, soft labels) of a reverse pass."""

    def __init__(self, x0: torch.Tensor, y0: torch.Tensor, lr: torch.Tensor, soft: bool):
        self.x = torch.zeros_like(x0)
        self.lr = torch.zeros((), dtype=lr.dtype, device=lr.device)
        self.y = torch.zeros_like(y0) if soft else None


def graph_free_step(student: Student, theta: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                    lr: torch.Tensor, step: StepPlan) -> torch.Tensor:
    """One student SGD step without keeping a graph: ``theta - lr * grad CE(theta)``, detached."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        g = student.step_grad(th, x0, y0, step)
    return (theta.detach() - lr * g).detach()


def reverse_steps(student: Student, history: _History, lam: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                  lr: torch.Tensor, plan: list[StepPlan], stop: int, grads: _Grads, *, exact: bool) -> torch.Tensor:
    """Walk steps ``stop-1 .. 0`` backwards from ``lam = dL/dtheta_stop``, accumulating into ``grads``.

    Each step is recomputed from ``history`` with a graph and differentiated once:
    ``s_i = lam . g_i`` gives ``ds_i/dx``, ``ds_i/dy`` (soft labels) and ``ds_i/dtheta_i``.
    With ``exact=False`` (tesla) ``lam`` stays fixed and ``ds/dtheta`` is not computed.

    Returns:
        ``dL/dtheta_0`` (``lam`` after the last step walked; for tesla the unchanged input).
    """
    soft = grads.y is not None
    for i in range(stop - 1, -1, -1):
        step = plan[i]
        with torch.enable_grad():
            th = history.get(i).clone().requires_grad_(True)
            x = x0.detach().requires_grad_(True)
            y = y0.detach().requires_grad_(True) if soft else y0
            g = student.step_grad(th, x, y, step, create_graph=True)
            s = torch.dot(lam, g)
            wrt = (x, y) if soft else (x,)
            out = torch.autograd.grad(s, (*wrt, th) if exact else wrt)
        grads.x.sub_(lr * out[0])
        if soft:
            grads.y.sub_(lr * out[1])
        grads.lr = grads.lr - s.detach()
        if exact:
            lam = lam - lr * out[-1]
    return lam


def _reverse_engine(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor,
                    images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan],
                    *, exact: bool, offload: bool, loss_mask: torch.Tensor | None) -> MatchResult:
    loss_mask = check_loss_mask(loss_mask, theta_start)
    soft = soft_labels(labels)
    x0 = images.detach()
    y0 = labels.detach()
    lr = syn_lr.detach()
    n = len(plan)
    history = _History(theta_start, n, offload)

    # forward: N SGD steps, no graph kept across steps
    theta = theta_start.detach().clone()
    for i, step in enumerate(plan):
        history.put(i, theta)
        theta = graph_free_step(student, theta, x0, y0, lr, step)
    theta_end = theta

    with torch.enable_grad():
        th_end = theta_end.clone().requires_grad_(True)
        loss = masked_trajectory_loss(th_end, theta_target.detach(), theta_start.detach(), loss_mask)
        (lam,) = torch.autograd.grad(loss, th_end)

    # reverse: recompute step i with a graph; one backward of s_i = lambda . g_i
    grads = _Grads(x0, y0, lr, soft)
    reverse_steps(student, history, lam, x0, y0, lr, plan, n, grads, exact=exact)
    return MatchResult(loss.detach(), grads.x, grads.lr, theta_end, grads.y)


def match_adjoint(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan], *,
                  loss_mask: torch.Tensor | None = None, offload: bool = False) -> MatchResult:
    """Exact gradients of the unrolled matching loss with one step of activation memory.

    Same arguments and result as :func:`mtt_fast.match.match_full`.

    Args:
        offload: keep the parameter history on the host (pinned memory) instead of the
            compute device, for networks whose ``N x P`` does not fit beside the activations.
    """
    return _reverse_engine(student, theta_start, theta_target, images, labels, syn_lr, plan,
                           exact=True, offload=offload, loss_mask=loss_mask)


def match_tesla(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor, images: torch.Tensor,
                labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan], *,
                loss_mask: torch.Tensor | None = None, offload: bool = False) -> MatchResult:
    """TESLA's per-step approximation (APPROXIMATE for N > 1: no Hessian terms through later steps).

    Same arguments and result as :func:`mtt_fast.match.match_full`; the loss and ``theta_end``
    are exact, the gradients (images, syn_lr, soft labels) use ``dL/dtheta_N`` in place of
    every step's adjoint.
    """
    return _reverse_engine(student, theta_start, theta_target, images, labels, syn_lr, plan,
                           exact=False, offload=offload, loss_mask=loss_mask)
