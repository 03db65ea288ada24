"""The ``full`` matching engine: autograd through the whole unroll (the MTT reference).

Exact. Autograd keeps every step's activations and the graph of every step's gradient, so
activation memory grows linearly with the number of student steps N.
"""

from __future__ import annotations

import torch

from mtt_fast.match.loss import MatchResult, trajectory_loss
from mtt_fast.match.plan import StepPlan
from mtt_fast.match.student import Student


def match_full(
    student: Student,
    theta_start: torch.Tensor,
    theta_target: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    plan: list[StepPlan],
) -> MatchResult:
    """Unroll ``len(plan)`` SGD steps from ``theta_start`` and match ``theta_target``.

    ``theta_{i+1} = theta_i - syn_lr * grad_theta CE(student(theta_i, A_i(x[b_i])), y[b_i])``;
    loss = ``||theta_N - target||^2 / ||start - target||^2``.

    Args:
        student: the functional student network.
        theta_start, theta_target: ``[P]`` expert parameters (epoch t and t + M).
        images: ``[n, C, H, W]`` synthetic images (the leaf we differentiate w.r.t.).
        labels: ``[n]`` labels.
        syn_lr: 0-dim learnable student learning rate.
        plan: the steps' batches and augmentations (see :func:`plan_steps`).

    Returns:
        The loss and its gradients w.r.t. ``images`` and ``syn_lr``.
    """
    x = images.detach().requires_grad_(True)
    lr = syn_lr.detach().requires_grad_(True)
    theta = theta_start.detach().clone().requires_grad_(True)
    for step in plan:
        ce = student.step_loss(theta, x, labels, step)
        (g,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - lr * g
    loss = trajectory_loss(theta, theta_target, theta_start)
    grad_x, grad_lr = torch.autograd.grad(loss, (x, lr))
    return MatchResult(loss.detach(), grad_x, grad_lr, theta.detach())
