"""Importable factories for the ``package.module:factory`` generator spec (tests only)."""

from __future__ import annotations

import torch
from torch import nn

from mtt_fast.generative.networks import Generator


def make() -> nn.Module:
    """A tiny generator (16 px, grey, 3 classes) with seeded weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Generator(3, 1, 16, z_dim=8, w_dim=16, channel_base=128, channel_max=16)


class _NoRender(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_classes, self.img_channels, self.img_resolution = 8, 16, 3, 3, 1, 16
        self.lin = nn.Linear(8, 16)

    def mapping(self, z, labels):
        return self.lin(z)

    def features(self, ws, layer):
        return ws


def make_no_render() -> nn.Module:
    """A module lacking ``render``: must be refused."""
    return _NoRender()


def make_raises() -> nn.Module:
    raise RuntimeError("factory exploded")


def make_not_module():
    return 42
