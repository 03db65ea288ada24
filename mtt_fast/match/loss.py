"""The trajectory-matching objective and what every engine returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MatchResult:
    """Result of one matching computation.

    Attributes:
        loss: 0-dim, ``||theta_N - target||^2 / ||start - target||^2``.
        grad_images: ``[n, C, H, W]`` d loss / d synthetic images.
        grad_lr: 0-dim d loss / d syn_lr.
        theta_end: ``[P]`` the student's final parameters (detached).
    """

    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    theta_end: torch.Tensor


def trajectory_loss(student: torch.Tensor, target: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Normalized squared L2 distance of paper eq. (2), through the fused op when it is built.

    Args:
        student: ``[P]`` student parameters after N steps.
        target: ``[P]`` expert parameters M epochs after the start.
        start: ``[P]`` expert parameters at the start.
    """
    from mtt_fast.ops import trajectory_loss as op

    return op(student, target, start)
