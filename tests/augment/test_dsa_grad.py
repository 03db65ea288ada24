"""Gradients: gradcheck / gradgradcheck of apply() per group, and the MTT use (grad of grad)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mtt_fast.augment import DSAConfig, apply, sample_params

SHAPE = (3, 2, 6, 5)
GROUPS = ["color", "crop", "cutout", "flip", "scale", "rotate", "noise"]


def _grid_sample_has_double_backward() -> bool:
    """grid_sampler_2d_backward got its own derivative only in newer torch (2.11 lacks it)."""
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    grid = torch.zeros(1, 3, 3, 2, dtype=torch.float64)
    (g,) = torch.autograd.grad(F.grid_sample(x, grid, align_corners=True).sum(), x, create_graph=True)
    try:
        torch.autograd.grad(g.sum(), x, allow_unused=True)
    except RuntimeError:
        return False
    return True


needs_grid_double_backward = pytest.mark.skipif(
    not _grid_sample_has_double_backward(),
    reason=f"torch {torch.__version__} has no derivative for grid_sampler_2d_backward (scale/rotate gradgradcheck)",
)


def x64(seed=0):
    g = torch.Generator().manual_seed(3000 + seed)
    return (torch.randn(SHAPE, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)


def params64(strategy, seed=0):
    cfg = DSAConfig(strategy=strategy, mode="M", prob_flip=0.5)
    return sample_params(cfg, SHAPE, torch.Generator().manual_seed(seed), dtype=torch.float64)


def nontrivial(op):
    """A seed whose parameters are not the identity (flip drawn for some sample, etc.)."""
    for seed in range(100):
        p = params64(op, seed)
        if op == "flip" and not (p.flip.any() and not p.flip.all()):
            continue
        if op == "crop" and not p.crop_shift.any():
            continue
        return p
    raise AssertionError(op)


@pytest.mark.parametrize("op", GROUPS)
def test_gradcheck_each_group(op):
    p = nontrivial(op)
    assert gradcheck(lambda x: apply(x, p), (x64(),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("op", GROUPS)
def test_gradgradcheck_each_group(op):
    if op in ("scale", "rotate") and not _grid_sample_has_double_backward():
        pytest.skip(f"torch {torch.__version__} has no derivative for grid_sampler_2d_backward")
    p = nontrivial(op)
    assert gradgradcheck(lambda x: apply(x, p), (x64(),), eps=1e-6, atol=1e-5)


def test_gradcheck_all_groups_composed():
    p = params64("color_crop_cutout_flip_scale_rotate_noise", seed=1)
    assert gradcheck(lambda x: apply(x, p), (x64(),), eps=1e-6, atol=1e-5)


@needs_grid_double_backward
def test_gradgradcheck_all_groups_composed():
    p = params64("color_crop_cutout_flip_scale_rotate_noise", seed=1)
    assert gradgradcheck(lambda x: apply(x, p), (x64(),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("op", ["color", "scale", "rotate", "crop", "cutout", "flip"])
def test_mtt_use_gradient_of_student_gradient(op):
    """MTT differentiates the student's parameter gradient w.r.t. the (augmented) images."""
    p = nontrivial(op)
    g = torch.Generator().manual_seed(7)
    w = (0.3 * torch.randn(4, SHAPE[1], 3, 3, generator=g, dtype=torch.float64)).requires_grad_(
        True
    )

    def student_grad(x):
        y = apply(x, p)
        out = torch.tanh(F.conv2d(y, w, padding=1))
        loss = (out**2).mean()
        (gw,) = torch.autograd.grad(loss, w, create_graph=True)
        return gw

    assert gradcheck(student_grad, (x64(),), eps=1e-6, atol=1e-5)
