"""One word for the implementation switch: "auto" | "fused" | "reference" in every op family,
with the old "compiled" (trajectory_loss's word before) accepted as an alias of "fused"."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.augment import DSAConfig, apply, sample_params, uses_fused
from mtt_fast.errors import UserError
from mtt_fast.ops import block, dsa, reference, traj_loss
from mtt_fast.ops.impl import IMPLS, resolve_impl


def test_resolve_impl():
    assert IMPLS == ("auto", "fused", "reference")
    for impl in IMPLS:
        assert resolve_impl(impl, "x") == impl
    assert resolve_impl("compiled", "x") == "fused"
    with pytest.raises(ValueError, match="x: impl must be one of auto, fused, reference, got 'fast'"):
        resolve_impl("fast", "x")
    with pytest.raises(UserError):
        resolve_impl("fast", "x", error=UserError)


def test_every_family_takes_the_same_words():
    assert traj_loss.IMPLS == block.IMPLS == IMPLS


def test_compiled_is_fused_for_trajectory_loss(monkeypatch):
    a, b, c = (torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(3))
    torch.testing.assert_close(traj_loss.trajectory_loss(a, b, c, impl="compiled"), reference.traj_loss(a, b, c))
    monkeypatch.setattr(traj_loss, "COMPILED_DEVICES", frozenset())  # the fused op unavailable
    for impl in ("fused", "compiled"):
        with pytest.raises(RuntimeError, match="impl='fused'"):
            traj_loss.trajectory_loss(a, b, c, impl=impl)


def test_compiled_is_fused_for_convblock(monkeypatch):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w, bias = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    monkeypatch.setattr(block, "COMPILED_DEVICES", frozenset())
    for impl in ("fused", "compiled"):
        with pytest.raises(RuntimeError, match="impl='fused'"):
            block.convblock(x, w, bias, impl=impl)
    with pytest.raises(ValueError, match="convblock: impl must be one of"):
        block.convblock(x, w, bias, impl="fast")


def test_compiled_is_fused_for_dsa(monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    p = sample_params(DSAConfig(strategy="flip", mode="S"), x.shape, torch.Generator().manual_seed(0))
    monkeypatch.setattr(dsa, "COMPILED_DEVICES", frozenset())
    for impl in ("fused", "compiled"):
        assert uses_fused(x, impl)
        with pytest.raises(UserError, match="DSA impl 'fused' is not available"):
            apply(x, p, impl=impl)
    with pytest.raises(UserError, match="DSA: impl must be one of"):
        apply(x, p, impl="fast")
