"""The student network as a pure function of a flat parameter vector, and its SGD step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mtt_fast.augment import apply as apply_augment
from mtt_fast.match.plan import StepPlan
from mtt_fast.models import FlatParams, forward_flat


@dataclass
class Student:
    """A network architecture used functionally: ``logits = student(theta, x)``.

    Attributes:
        module: the network (its own parameters are never read or changed).
        layout: where each parameter sits in the flat vector ``theta`` (``[P]``).
        aug_impl: which augmentation implementation to use ("auto", "reference", ...).
    """

    module: nn.Module
    layout: FlatParams
    aug_impl: str = "auto"

    @classmethod
    def of(cls, module: nn.Module, aug_impl: str = "auto") -> Student:
        return cls(module, FlatParams.of(module), aug_impl)

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return forward_flat(self.module, self.layout, theta, x)

    def step_loss(self, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                  step: StepPlan) -> torch.Tensor:
        """Cross-entropy of the student on one planned (augmented) minibatch.

        With hard labels (integer ``[n]``) this is the ordinary cross-entropy; with soft
        labels (floating ``[n, K]`` logits, DATM's learnable labels) it is the soft
        cross-entropy ``-(softmax(y_b) * log_softmax(logits)).sum(1).mean()``, differentiable
        w.r.t. the label logits.

        Args:
            theta: ``[P]`` parameters.
            images: the whole synthetic set ``[n, C, H, W]``.
            labels: ``[n]`` class indices, or ``[n, K]`` soft-label logits.
            step: which images and which augmentation.
        """
        x = images[step.indices]
        if step.aug is not None:
            x = apply_augment(x, step.aug, impl=self.aug_impl)
        logits = self(theta, x)
        y = labels[step.indices]
        if y.is_floating_point():
            return -(torch.softmax(y, dim=1) * torch.log_softmax(logits, dim=1)).sum(1).mean()
        return F.cross_entropy(logits, y)
