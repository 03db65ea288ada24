"""The student network as a pure function of a flat parameter vector, and its SGD step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mtt_fast.augment import apply as apply_augment
from mtt_fast.match.parallel import RankShare, aug_rows, replicated, sum_over_ranks
from mtt_fast.match.plan import StepPlan
from mtt_fast.models import FlatParams, forward_flat


@dataclass
class Student:
    """A network architecture used functionally: ``logits = student(theta, x)``.

    Attributes:
        module: the network (its own parameters are never read or changed).
        layout: where each parameter sits in the flat vector ``theta`` (``[P]``).
        aug_impl: which augmentation implementation to use ("auto", "reference", ...).
        share: under torchrun, this rank's slice of the synthetic set (each step's loss and
            gradient are split by image owner: :mod:`mtt_fast.match.parallel`); None in one process.
    """

    module: nn.Module
    layout: FlatParams
    aug_impl: str = "auto"
    share: RankShare | None = None

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
        if self.share is not None:
            return self._share_loss(theta, images, labels, step)
        x = images[step.indices]
        if step.aug is not None:
            x = apply_augment(x, step.aug, impl=self.aug_impl)
        logits = self(theta, x)
        y = labels[step.indices]
        if y.is_floating_point():
            return -(torch.softmax(y, dim=1) * torch.log_softmax(logits, dim=1)).sum(1).mean()
        return F.cross_entropy(logits, y)

    def _share_loss(self, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                    step: StepPlan) -> torch.Tensor | None:
        """This rank's share of the step loss: the sum over the batch rows it owns divided by the
        whole batch size (None when it owns none of them)."""
        rows = self.share.rows(step.indices, len(images))
        if len(rows) == 0:
            return None
        idx = step.indices[rows]
        x = images[idx]
        if step.aug is not None:
            x = apply_augment(x, aug_rows(step.aug, rows), impl=self.aug_impl)
        logits = self(theta, x)
        y = labels[idx]
        b = len(step.indices)
        if y.is_floating_point():
            return -(torch.softmax(y, dim=1) * torch.log_softmax(logits, dim=1)).sum() / b
        return F.cross_entropy(logits, y, reduction="sum") / b

    def step_grad(self, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, step: StepPlan, *,
                  create_graph: bool = False) -> torch.Tensor:
        """``grad_theta`` of :meth:`step_loss` (``theta`` must require grad), the one gradient every
        engine takes per step. Under torchrun it is summed over the ranks' shares, and with
        ``create_graph`` differentiable the way :mod:`mtt_fast.match.parallel` explains."""
        if self.share is None:
            return torch.autograd.grad(self.step_loss(theta, images, labels, step), theta, create_graph=create_graph)[0]
        if not create_graph:
            part = self.step_loss(theta, images, labels, step)
            g = torch.zeros_like(theta) if part is None else torch.autograd.grad(part, theta)[0]
            return RankShare.sum(g.contiguous())
        th = replicated(theta)
        part = self.step_loss(th, images, labels, step)
        if part is None:  # owns no row of this batch: a zero share that still depends on theta (so that
            # this rank joins the backward's all-reduce like the others) and on the images and labels
            # (which the engines differentiate: their gradient from this step is exactly 0 here)
            ties = th.sum() + images.sum()
            if labels.is_floating_point():
                ties = ties + labels.sum()
            part = 0 * th.sum() * ties  # its gradient 0 * ties + 0 * th.sum() depends on all three
        (g,) = torch.autograd.grad(part, th, create_graph=True)
        return sum_over_ranks(g)

    def agree_max(self, value: float) -> float:
        """``value`` made the same on every rank (their maximum); ``value`` itself in one process."""
        return value if self.share is None else RankShare.agree_max(value)
