"""Calling a network with one flat parameter vector (no module mutation).

MTT differentiates through the student's own SGD updates, so the student's parameters are a
single 1-D tensor ``theta`` of length P that autograd tracks; the module only supplies the
computation. ``FlatParams`` records the names and shapes once and turns ``theta`` into views
for :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class FlatParams:
    """The layout of a module's parameters inside a flat vector.

    Attributes:
        names: parameter names in ``module.named_parameters()`` order.
        shapes: their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> FlatParams:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numels(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def size(self) -> int:
        """P, the length of the flat vector."""
        return sum(self.numels)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """Concatenate the module's current parameters into a new ``[P]`` tensor (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (``[P]``) shaped like each parameter, keyed by name."""
        if flat.dim() != 1 or flat.numel() != self.size:
            raise ValueError(f"flat parameters have shape {tuple(flat.shape)}, expected ({self.size},)")
        parts = torch.split(flat, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load_into(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy ``flat`` into the module's parameters in place (for ordinary training)."""
        with torch.no_grad():
            for p, v in zip(module.parameters(), self.unflatten(flat.to(next(module.parameters()).device)).values()):
                p.copy_(v)

    def to_json(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, d: dict) -> FlatParams:
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))


def forward_flat(module: nn.Module, layout: FlatParams, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x`` with its parameters taken from ``flat`` (``[P]``)."""
    return functional_call(module, layout.unflatten(flat), (x,))
