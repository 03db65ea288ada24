"""A reference matching engine with issue 18's contract (soft-label logits, ``loss_mask``), for the
distill-side tests while the real engines may not have it yet.

``engine(student, theta_start, theta_target, images, labels, syn_lr, plan, *, loss_mask=None)``:
full autograd through the unroll; float ``labels`` ``[n, K]`` are logits whose softmax is the
target of the student's cross-entropy; the loss is over the ``loss_mask`` entries only. Returns an
object with ``loss``, ``grad_images``, ``grad_lr``, ``grad_labels`` (None for hard labels),
``theta_end`` and ``info``. :func:`contract_engines` returns the real ``ENGINES`` when they already
take ``loss_mask`` (the engine work has landed), else ones that use this reference.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch
from torch.nn import functional as F

from mtt_fast.augment import apply as apply_augment


def _step_loss(student, theta, images, labels, step):
    x = images[step.indices]
    if step.aug is not None:
        x = apply_augment(x, step.aug, impl=student.aug_impl)
    out = student(theta, x)
    y = labels[step.indices]
    if y.is_floating_point():
        return -(torch.softmax(y, 1) * F.log_softmax(out, 1)).sum(1).mean()
    return F.cross_entropy(out, y)


def reference_engine(student, theta_start, theta_target, images, labels, syn_lr, plan, *, loss_mask=None, **_):
    soft = labels.is_floating_point()
    x = images.detach().requires_grad_(True)
    y = labels.detach().requires_grad_(soft) if soft else labels
    lr = syn_lr.detach().requires_grad_(True)
    theta = theta_start.detach().clone().requires_grad_(True)
    for step in plan:
        (g,) = torch.autograd.grad(_step_loss(student, theta, x, y, step), theta, create_graph=True)
        theta = theta - lr * g
    m = slice(None) if loss_mask is None else loss_mask
    loss = ((theta[m] - theta_target[m]) ** 2).sum() / ((theta_start[m] - theta_target[m]) ** 2).sum()
    grads = torch.autograd.grad(loss, [x, lr, y] if soft else [x, lr])
    return SimpleNamespace(loss=loss.detach(), grad_images=grads[0], grad_lr=grads[1],
                           grad_labels=grads[2] if soft else None, theta_end=theta.detach(), info={})


def has_contract() -> bool:
    """Whether the real engines take ``loss_mask`` (issue 18's engine contract)."""
    from mtt_fast.match import ENGINES

    return "loss_mask" in inspect.signature(ENGINES["adjoint"]).parameters


def patch_engines(monkeypatch) -> None:
    """Route every engine name to :func:`reference_engine` unless the real ones have the contract."""
    if has_contract():
        return
    from mtt_fast.distill import objectives

    monkeypatch.setattr(objectives, "ENGINES", {k: reference_engine for k in objectives.ENGINES})
