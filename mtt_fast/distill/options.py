"""Parsing and arithmetic of the trajectory options of issue 18 (DATM / PAD / memory budget).

* :class:`StartSchedule` (``--start-epoch-schedule LO:HI:ITERS``): DATM's widening matching
  range. At iteration ``it`` the upper start epoch is ``min(HI, LO + floor((HI - LO) * it / ITERS))``
  and the start epoch is drawn uniformly from ``[0, upper)``. DATM also has a lower bound
  (``min_start_epoch``); its published CIFAR/TinyImageNet settings use 0, which is what we
  implement (the lower bound is always 0, as without a schedule).
* :func:`parse_bytes` (``--memory-budget``): ``8GiB``, ``512MiB``, ``1.5GB``, or plain bytes.
* :func:`layer_mask` (``--match-layers``): which entries of the flat parameter vector enter the
  matching loss (PAD drops the shallow layers' parameters).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from mtt_fast.errors import UserError
from mtt_fast.models import FlatParams


@dataclass(frozen=True)
class StartSchedule:
    """The upper start epoch as a function of the iteration (see the module docstring)."""

    lo: int
    hi: int
    iters: int

    @classmethod
    def parse(cls, spec: str) -> StartSchedule:
        """``"LO:HI:ITERS"`` -> schedule; a :class:`UserError` naming the option otherwise."""
        parts = str(spec).split(":")
        try:
            lo, hi, iters = (int(p) for p in parts)
        except ValueError:
            raise UserError(f"--start-epoch-schedule {spec}: expected LO:HI:ITERS, three whole numbers "
                            f"(e.g. 10:20:1000)") from None
        if lo < 1 or hi < lo or iters < 1:
            raise UserError(f"--start-epoch-schedule {spec}: need 1 <= LO <= HI and ITERS >= 1")
        return cls(lo, hi, iters)

    def upper(self, iteration: int) -> int:
        """The exclusive upper bound of the start epoch at ``iteration`` (0-based)."""
        return min(self.hi, self.lo + (self.hi - self.lo) * iteration // self.iters)

    def __str__(self) -> str:
        return f"{self.lo}:{self.hi}:{self.iters}"


def parse_bytes(text: str | int | None) -> int | None:
    """``"8GiB"`` / ``"512MiB"`` / ``"1.5GB"`` / ``"1000000"`` -> bytes (``match.parse_memory_size``);
    None stays None; anything else, or less than 1 byte, is a :class:`UserError` naming the option."""
    if text is None:
        return None
    from mtt_fast.match import parse_memory_size

    try:
        value = parse_memory_size(text)
    except ValueError:
        raise UserError(f"--memory-budget {text}: expected a size such as 8GiB, 512MiB, 2GB or a number of bytes") from None
    if value < 1:
        raise UserError(f"--memory-budget {text}: must be at least 1 byte")
    return value


def layer_groups(layout: FlatParams) -> list[list[int]]:
    """Parameter tensors grouped by the module that owns them (``conv.weight`` + ``conv.bias``),
    in order: one group per layer."""
    groups: list[list[int]] = []
    owners: list[str] = []
    for i, name in enumerate(layout.names):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owners and owners[-1] == owner:
            groups[-1].append(i)
        else:
            owners.append(owner)
            groups.append([i])
    return groups


def selected_tensors(layout: FlatParams, spec: str) -> list[int]:
    """Indices of the parameter tensors that ``spec`` selects (see :func:`layer_mask`)."""
    n = len(layout.names)
    spec = str(spec).strip()
    if spec == "all":
        return list(range(n))
    if spec.startswith("deep:"):
        try:
            frac = float(spec[5:])
        except ValueError:
            frac = math.nan
        if not 0 < frac <= 1:
            raise UserError(f"--match-layers {spec}: deep:F needs a fraction 0 < F <= 1")
        groups = layer_groups(layout)
        keep = max(1, math.ceil(frac * len(groups)))
        return [i for g in groups[len(groups) - keep:] for i in g]
    m = re.fullmatch(r"(-?\d*):(-?\d*)", spec)
    if not m:
        raise UserError(f"--match-layers {spec}: expected all, deep:F (the deepest fraction F of the layers) "
                        f"or an index range A:B over the {n} parameter tensors")
    a = int(m.group(1)) if m.group(1) else None
    b = int(m.group(2)) if m.group(2) else None
    picked = list(range(n))[a:b]
    if not picked:
        raise UserError(f"--match-layers {spec}: selects none of the {n} parameter tensors")
    return picked


def layer_mask(layout: FlatParams, spec: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The ``[P]`` bool mask of the entries that enter the matching loss; None for ``all`` (no mask).

    Args:
        layout: the student's flat parameter layout (tensors in ``named_parameters`` order).
        spec: ``all``; ``deep:F``: the deepest ``ceil(F * L)`` of the L layers (a layer is the
            parameter tensors of one module, e.g. a conv's weight and bias); ``A:B``: the
            parameter tensors ``A`` to ``B - 1`` (Python slice rules, either end may be left out).
    """
    picked = selected_tensors(layout, spec)
    if str(spec).strip() == "all" or len(picked) == len(layout.names):
        return None
    mask = torch.zeros(layout.size, dtype=torch.bool)
    offsets = [0]
    for k in layout.numels:
        offsets.append(offsets[-1] + k)
    for i in picked:
        mask[offsets[i]:offsets[i + 1]] = True
    return mask.to(device)
