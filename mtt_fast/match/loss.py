"""The trajectory-matching objective and what every engine returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MatchResult:
    """Result of one matching computation.

    Attributes:
        loss: 0-dim, ``||theta_N - target||^2 / ||start - target||^2`` (over the masked
            entries when the engine was given a ``loss_mask``).
        grad_images: ``[n, C, H, W]`` d loss / d synthetic images.
        grad_lr: 0-dim d loss / d syn_lr.
        theta_end: ``[P]`` the student's final parameters (detached).
        grad_labels: d loss / d labels, the labels' shape, when the labels are floating
            (soft-label logits ``[n, K]``); None for hard (integer) labels.
        info: what the engine wants logged (e.g. ``auto``'s kept steps and memory budget).
    """

    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    theta_end: torch.Tensor
    grad_labels: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


def trajectory_loss(student: torch.Tensor, target: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Normalized squared L2 distance of paper eq. (2), through the fused op when it is built.

    Args:
        student: ``[P]`` student parameters after N steps.
        target: ``[P]`` expert parameters M epochs after the start.
        start: ``[P]`` expert parameters at the start.
    """
    from mtt_fast.ops import trajectory_loss as op

    return op(student, target, start)


def masked_trajectory_loss(student: torch.Tensor, target: torch.Tensor, start: torch.Tensor,
                           loss_mask: torch.Tensor | None) -> torch.Tensor:
    """:func:`trajectory_loss` over the entries of theta selected by ``loss_mask``.

    Both the numerator and the denominator use only the masked entries, so a mask that
    keeps the deepest layers matches those layers' trajectory alone (PAD's layer-restricted
    loss).

    Args:
        student, target, start: ``[P]`` parameter vectors.
        loss_mask: None (every entry) or a bool ``[P]`` tensor on the parameters' device.
    """
    if loss_mask is None:
        return trajectory_loss(student, target, start)
    return trajectory_loss(student[loss_mask], target[loss_mask], start[loss_mask])


def check_loss_mask(loss_mask: torch.Tensor | None, theta: torch.Tensor) -> torch.Tensor | None:
    """Validate a ``loss_mask`` against ``[P]`` parameters; returns it on theta's device.

    Raises:
        ValueError: the mask is not bool ``[P]`` or selects nothing.
    """
    if loss_mask is None:
        return None
    if loss_mask.dtype != torch.bool or loss_mask.shape != theta.shape:
        raise ValueError(f"loss_mask must be a bool tensor of shape {tuple(theta.shape)}, "
                         f"got {loss_mask.dtype} {tuple(loss_mask.shape)}")
    loss_mask = loss_mask.to(theta.device)
    if not bool(loss_mask.any()):
        raise ValueError("loss_mask selects no parameters")
    return loss_mask


def soft_labels(labels: torch.Tensor) -> bool:
    """True when ``labels`` are soft-label logits (floating ``[n, K]``), False for hard classes."""
    return labels.is_floating_point()
