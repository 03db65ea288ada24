"""The ``full`` matching engine: autograd through the whole unroll (the MTT reference).

Exact. Autograd keeps every step's activations and the graph of every step's gradient, so
activation memory grows linearly with the number of student steps N.
"""

from __future__ import annotations

import torch

from mtt_fast.match.loss import MatchResult, check_loss_mask, masked_trajectory_loss, soft_labels
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
    *,
    loss_mask: torch.Tensor | None = None,
) -> MatchResult:
    """Unroll ``len(plan)`` SGD steps from ``theta_start`` and match ``theta_target``.

    ``theta_{i+1} = theta_i - syn_lr * grad_theta CE(student(theta_i, A_i(x[b_i])), y[b_i])``;
    loss = ``||theta_N - target||^2 / ||start - target||^2``.

    Args:
        student: the functional student network.
        theta_start, theta_target: ``[P]`` expert parameters (epoch t and t + M).
        images: ``[n, C, H, W]`` synthetic images (the leaf we differentiate w.r.t.).
        labels: ``[n]`` hard labels, or ``[n, K]`` floating soft-label logits (then the
            result also carries d loss / d labels).
        syn_lr: 0-dim learnable student learning rate.
        plan: the steps' batches and augmentations (see :func:`plan_steps`).
        loss_mask: None, or a bool ``[P]``: the loss uses only these entries of theta.

    Returns:
        The loss and its gradients w.r.t. ``images``, ``syn_lr`` (and soft ``labels``).
    """
    loss_mask = check_loss_mask(loss_mask, theta_start)
    soft = soft_labels(labels)
    x = images.detach().requires_grad_(True)
    y = labels.detach().requires_grad_(True) if soft else labels
    lr = syn_lr.detach().requires_grad_(True)
    theta = theta_start.detach().clone().requires_grad_(True)
    for step in plan:
        g = student.step_grad(theta, x, y, step, create_graph=True)
        theta = theta - lr * g
    loss = masked_trajectory_loss(theta, theta_target.detach(), theta_start.detach(), loss_mask)
    grads = torch.autograd.grad(loss, (x, lr, y) if soft else (x, lr))
    return MatchResult(loss.detach(), grads[0], grads[1], theta.detach(), grads[2] if soft else None)
