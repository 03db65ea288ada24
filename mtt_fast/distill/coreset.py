"""Coreset baselines: ``ipc`` real images per class chosen in an expert's feature space.

The feature space is the penultimate layer (the final linear layer's input) of expert
``LABEL_EXPERT`` (0) at its last epoch (:class:`mtt_fast.distill.soft.ExpertNetwork`). Selection is
per class, over all of the class's training images, deterministic (no random draw; ties go to
the lower index):

* herding (Welling 2009; Chen, Welling & Smola 2010): greedily add the image that keeps the mean
  of the chosen features closest to the class's mean feature;
* k-center (Sener & Savarese 2018, greedy 2-approximation): start from the image nearest the
  class mean, then repeatedly add the image farthest from its nearest chosen image.

Both optimize nothing (like ``random``). With ``--soft-labels`` the labels are the expert's
logits on the chosen images (the soft-label controls of issue 18).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mtt_fast.distill.methods import Method
from mtt_fast.distill.soft import ExpertNetwork
from mtt_fast.errors import UserError
from mtt_fast.synth.params import PixelParam


def herding(features: torch.Tensor, k: int) -> list[int]:
    """Greedy herding: indices of ``k`` rows of ``features`` ``[m, D]`` whose running mean tracks the mean.

    Step ``t`` (1-based) picks ``argmin_i || mu - (S + f_i) / t ||`` over the unchosen rows, where
    ``S`` is the sum of the ``t - 1`` chosen rows and ``mu`` the mean of all rows.
    """
    f = features.double()
    if not 1 <= k <= len(f):
        raise ValueError(f"herding: cannot choose {k} of {len(f)} rows")
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    free = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, k + 1):
        d = ((mu - (total + f) / t) ** 2).sum(1)
        d[~free] = torch.inf
        i = int(torch.argmin(d))
        chosen.append(i)
        free[i] = False
        total += f[i]
    return chosen


def kcenter(features: torch.Tensor, k: int) -> list[int]:
    """Greedy k-center: the row nearest the mean, then each time the row farthest from the chosen ones."""
    f = features.double()
    if not 1 <= k <= len(f):
        raise ValueError(f"kcenter: cannot choose {k} of {len(f)} rows")
    first = int(torch.argmin(((f - f.mean(0)) ** 2).sum(1)))
    chosen = [first]
    nearest = ((f - f[first]) ** 2).sum(1)
    for _ in range(k - 1):
        nearest[chosen] = -1.0  # never pick a chosen row again (duplicates have distance 0, not -1)
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, ((f - f[i]) ** 2).sum(1))
    return chosen


SELECTORS = {"herding": herding, "kcenter": kcenter}


def select_coreset(train_split, ipc: int, expert: ExpertNetwork, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` training images per class by ``rule`` in the expert's feature space; images and labels."""
    xs, ys = [], []
    for c, name in enumerate(train_split.classes):
        idx = train_split.class_indices(c)
        if len(idx) < ipc:
            raise UserError(f"--ipc {ipc}: class {name!r} has only {len(idx)} training images")
        feats = torch.cat([expert.features(train_split.get(chunk)) for chunk in idx.split(1024)])
        pick = idx[torch.tensor(SELECTORS[rule](feats, ipc), dtype=torch.long)]
        xs.append(train_split.get(pick))
        ys.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


class _Coreset(Method):
    """A coreset of real images; nothing is optimized."""

    uses_trajectories = False
    optimizes = False
    rule: ClassVar[str]

    def make_param(self, gen: torch.Generator):
        lp = self.loop
        x, y = select_coreset(lp.bundle.split("train"), lp.cfg.ipc, lp.expert_network(), self.rule)
        return PixelParam(x, 0.0), y


class Herding(_Coreset):
    """Herding in the labelling expert's feature space (Welling 2009)."""

    name = "herding"
    rule = "herding"


class KCenter(_Coreset):
    """Greedy k-center in the labelling expert's feature space (Sener & Savarese 2018)."""

    name = "kcenter"
    rule = "kcenter"
