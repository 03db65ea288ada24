"""Data parallelism inside each unrolled student step (``distill`` under torchrun).

The synthetic set is split into contiguous slices, one per rank (images are stored class by
class, so a slice is whole classes where the counts divide). Every rank draws the same plan;
in step i it computes the student's loss only on the rows of the step's batch it owns,
summed and divided by the WHOLE batch size, so the sum over ranks of the ranks' gradients is
the one-process gradient ``g_i``.

Two autograd functions make every engine exact without knowing about ranks (the pair
Megatron-LM uses for tensor parallelism):

* :class:`_Replicated` wraps theta where it enters a rank's share: identity forward, and in
  the backward the SUM over ranks of the gradient (theta is one value shared by all ranks, so
  its gradient is every rank's contribution added up);
* :class:`_SumOverRanks` turns the rank's gradient share into ``g_i``: all-reduce forward,
  identity backward (everything downstream of ``g_i`` is computed identically on every rank).

So the forward unroll holds the same theta on every rank; the adjoint's reverse pass gets
``s_i = lambda . g_i``, ``ds_i/dtheta`` summed over ranks and ``ds_i/dx`` for the rank's own
images; the ``full`` engine's one backward does the same step by step. The gradient of the
images (and soft labels) a rank returns is nonzero only on its own rows: the distill loop sums
it over ranks so that every rank applies the same update to the same synthetic set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist

from mtt_fast import distributed
from mtt_fast.augment import AugParams


class _Replicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta: torch.Tensor) -> torch.Tensor:
        return theta.view_as(theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part: torch.Tensor) -> torch.Tensor:
        total = part.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def aug_rows(aug: AugParams, rows: torch.Tensor) -> AugParams:
    """The augmentation parameters of some rows (``rows``: indices into the batch)."""
    b = aug.shape[0]
    changes = {}
    for f in fields(aug):
        v = getattr(aug, f.name)
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b and f.name != "cutout_size":
            changes[f.name] = v[rows.to(v.device)]
    return replace(aug, shape=(len(rows), *aug.shape[1:]), **changes)


@dataclass(frozen=True)
class RankShare:
    """This rank's slice of the synthetic set in a data-parallel unroll."""

    rank: int
    world: int

    @classmethod
    def current(cls) -> RankShare | None:
        """The share under an active process group, else None (one process: nothing changes)."""
        return cls(distributed.rank(), distributed.world_size()) if distributed.active() else None

    def bounds(self, n: int) -> tuple[int, int]:
        """``[lo, hi)``: the rows of an ``n``-image synthetic set this rank owns."""
        return distributed.split_bounds(n, self.world, self.rank)

    def rows(self, indices: torch.Tensor, n: int) -> torch.Tensor:
        """Positions in a step's batch ``indices`` whose images this rank owns."""
        lo, hi = self.bounds(n)
        return ((indices >= lo) & (indices < hi)).nonzero().flatten()

    @staticmethod
    def sum(t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (in place): gradients w.r.t. owned rows become the whole set's."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def agree_max(value: float) -> float:
        """The largest of the ranks' ``value`` (so that every rank makes the same choice)."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


def replicated(theta: torch.Tensor) -> torch.Tensor:
    return _Replicated.apply(theta)


def sum_over_ranks(part: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(part)
