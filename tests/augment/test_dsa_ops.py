"""Each DSA op against an independent re-statement of the MTT reference formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtt_fast.augment import (
    DSAConfig,
    apply,
    apply_color,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_noise,
    apply_rotate,
    apply_scale,
    rotate_theta,
    sample_params,
    scale_theta,
)

SHAPES = [(5, 3, 9, 7), (4, 1, 8, 8), (3, 2, 16, 13)]


def images(shape, seed=0, dtype=torch.float32):
    """Random images with no zeros (so a zeroed pixel always means a masked one)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return torch.where(x.abs() < 1e-3, torch.full_like(x, 0.5), x)


def params_for(op, shape, seed=0, dtype=torch.float32, **cfg_kw):
    cfg = DSAConfig(strategy=op, mode="M", **cfg_kw)
    return sample_params(cfg, shape, torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- color


@pytest.mark.parametrize("shape", SHAPES)
def test_color_matches_reference_formulas(shape):
    x = images(shape)
    p = params_for("color", shape, seed=3)
    # re-statement: rand_brightness, rand_saturation, rand_contrast in that order
    b, s, c = p.brightness, p.saturation, p.contrast
    e = x + b
    m = e.mean(dim=1, keepdim=True)
    e = (e - m) * s + m
    m = e.mean(dim=[1, 2, 3], keepdim=True)
    e = (e - m) * c + m
    assert torch.equal(apply(x, p), e)
    assert torch.equal(apply_color(x, b, s, c), e)


def test_color_parameters_follow_the_reference_draws():
    g = torch.Generator().manual_seed(11)
    cfg = DSAConfig(strategy="color", mode="M", brightness=1.0, saturation=2.0, contrast=0.5)
    p = sample_params(cfg, (6, 3, 4, 4), g)
    g2 = torch.Generator().manual_seed(11)
    u_b, u_s, u_c = (torch.rand(6, generator=g2) for _ in range(3))
    assert torch.equal(p.brightness.view(6), (u_b - 0.5) * 1.0)
    assert torch.equal(p.saturation.view(6), u_s * 2.0)
    assert torch.equal(p.contrast.view(6), u_c + 0.5)
    assert p.brightness.shape == (6, 1, 1, 1)


# ---------------------------------------------------------------- crop


def shift_loop(x, shift):
    """Integer shift with zero fill, written pixel by pixel."""
    out = torch.zeros_like(x)
    b, _, h, w = x.shape
    for n in range(b):
        dy, dx = int(shift[n, 0]), int(shift[n, 1])
        for i in range(h):
            for j in range(w):
                si, sj = i + dy, j + dx
                if 0 <= si < h and 0 <= sj < w:
                    out[n, :, i, j] = x[n, :, si, sj]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_is_integer_shift_with_zero_fill(shape, seed):
    x = images(shape, seed)
    p = params_for("crop", shape, seed=seed)
    _, _, h, w = shape
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    assert p.crop_shift.dtype == torch.long and p.crop_shift.shape == (shape[0], 2)
    assert p.crop_shift[:, 0].abs().max() <= sh and p.crop_shift[:, 1].abs().max() <= sw
    assert torch.equal(apply(x, p), shift_loop(x, p.crop_shift))


def test_crop_extreme_shifts_including_out_of_image():
    x = images((4, 2, 6, 5))
    shift = torch.tensor([[0, 0], [-2, 3], [6, 0], [-9, -9]])
    y = apply_crop(x, shift)
    assert torch.equal(y, shift_loop(x, shift))
    assert torch.equal(y[0], x[0])
    assert (y[2] == 0).all() and (y[3] == 0).all()


def test_crop_shift_range_covers_both_ends():
    p = params_for("crop", (4000, 1, 32, 24), seed=5)
    assert p.crop_shift[:, 0].min() == -4 and p.crop_shift[:, 0].max() == 4  # int(32*.125+.5)
    assert p.crop_shift[:, 1].min() == -3 and p.crop_shift[:, 1].max() == 3  # int(24*.125+.5)


# ---------------------------------------------------------------- cutout


def cutout_reference_mask(center, size, h, w):
    """The reference's index arithmetic: meshgrid over the box, clamp, scatter zeros."""
    b = center.shape[0]
    kh, kw = int(size[0]), int(size[1])
    gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(kh), torch.arange(kw), indexing="ij")
    gx = torch.clamp(gx + center[:, 0].view(b, 1, 1) - kh // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + center[:, 1].view(b, 1, 1) - kw // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w)
    mask[gb, gx, gy] = 0
    return mask


@pytest.mark.parametrize("shape", SHAPES + [(3, 3, 7, 6), (2, 1, 1, 1), (3, 2, 2, 3)])
@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_cutout_zeroes_exactly_the_reference_box(shape, ratio, seed):
    x = images(shape, seed)
    p = params_for("cutout", shape, seed=seed, ratio_cutout=ratio)
    _, _, h, w = shape
    kh, kw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    assert p.cutout_size.tolist() == [kh, kw]
    assert (p.cutout_center[:, 0] < h + 1 - kh % 2).all() and (p.cutout_center >= 0).all()
    assert (p.cutout_center[:, 1] < w + 1 - kw % 2).all()
    mask = cutout_reference_mask(p.cutout_center, p.cutout_size, h, w)
    y = apply(x, p)
    assert torch.equal(y, x * mask.unsqueeze(1))
    # zero exactly inside the box, untouched outside
    inside = mask.unsqueeze(1).expand_as(x) == 0
    assert (y[inside] == 0).all()
    assert torch.equal(y[~inside], x[~inside])


def test_cutout_every_center_in_range_matches_reference():
    h, w = 9, 8
    for kh, kw in [(4, 4), (5, 3), (1, 1), (0, 2), (9, 8)]:
        centers = torch.cartesian_prod(torch.arange(h + 1 - kh % 2), torch.arange(w + 1 - kw % 2))
        x = images((centers.shape[0], 1, h, w))
        y = apply_cutout(x, centers, (kh, kw))
        mask = cutout_reference_mask(centers, (kh, kw), h, w)
        assert torch.equal(y, x * mask.unsqueeze(1)), (kh, kw)


# ---------------------------------------------------------------- flip


@pytest.mark.parametrize("shape", SHAPES)
def test_flip_is_horizontal_where_drawn(shape):
    shape = (64,) + shape[1:]
    x = images(shape)
    p = params_for("flip", shape, seed=4)
    assert p.flip.dtype == torch.bool and p.flip.shape == (64,)
    assert 0 < int(p.flip.sum()) < 64  # both cases occur
    y = apply(x, p)
    for n in range(64):
        expected = x[n].flip(2) if p.flip[n] else x[n]
        assert torch.equal(y[n], expected)
    # float flags are accepted too
    assert torch.equal(apply_flip(x, p.flip.float()), y)


def test_flip_probability_is_respected():
    assert not params_for("flip", (200, 1, 2, 2), prob_flip=0.0).flip.any()
    assert params_for("flip", (200, 1, 2, 2), prob_flip=1.0).flip.all()
    frac = params_for("flip", (4000, 1, 2, 2), seed=9).flip.float().mean().item()
    assert abs(frac - 0.5) < 0.05


# ---------------------------------------------------------------- scale and rotate


def test_scale_parameters_follow_reference_formula():
    shape = (500, 1, 4, 4)
    p = params_for("scale", shape, seed=6)
    g = torch.Generator().manual_seed(6)
    r = 1.2
    sx = torch.rand(500, generator=g) * (r - 1.0 / r) + 1.0 / r
    sy = torch.rand(500, generator=g) * (r - 1.0 / r) + 1.0 / r
    expected = torch.zeros(500, 2, 3)
    expected[:, 0, 0], expected[:, 1, 1] = sx, sy
    assert torch.equal(p.theta_scale, expected)
    assert sx.min() >= 1 / r and sx.max() <= r


def test_rotate_parameters_follow_reference_formula():
    p = params_for("rotate", (500, 1, 4, 4), seed=7)
    g = torch.Generator().manual_seed(7)
    a = (torch.rand(500, generator=g) - 0.5) * 2 * 15.0 / 180 * float(math.pi)
    th = p.theta_rot
    assert torch.allclose(th[:, 0, 0], torch.cos(a)) and torch.allclose(th[:, 1, 1], torch.cos(a))
    assert torch.allclose(th[:, 1, 0], torch.sin(a)) and torch.allclose(th[:, 0, 1], -torch.sin(a))
    assert (th[:, :, 2] == 0).all()
    deg = torch.rad2deg(torch.atan2(th[:, 1, 0], th[:, 0, 0]))
    assert deg.abs().max() <= 15.0 + 1e-4 and deg.abs().max() > 14.0


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_scale_and_rotation_leave_x_unchanged(shape):
    x = images(shape, dtype=torch.float64)
    b = shape[0]
    ident = scale_theta(torch.ones(b, dtype=torch.float64), torch.ones(b, dtype=torch.float64))
    assert torch.allclose(apply_scale(x, ident), x, atol=1e-12)
    zero = rotate_theta(torch.zeros(b, dtype=torch.float64))
    assert torch.allclose(apply_rotate(x, zero), x, atol=1e-12)


def test_rotation_direction_90_degrees_is_rot90():
    x = images((3, 2, 7, 7), dtype=torch.float64)
    th = rotate_theta(torch.full((3,), math.pi / 2, dtype=torch.float64))
    assert torch.allclose(apply_rotate(x, th), torch.rot90(x, 1, dims=(2, 3)), atol=1e-12)


def test_scale_axes_sx_on_width_sy_on_height():
    # A ramp along W: sampling with sx = 0.5 reads column position u * 0.5 (zoom in, x2).
    h, w = 5, 9
    ramp_w = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w).expand(1, 1, h, w).clone()
    th = scale_theta(
        torch.tensor([0.5], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    )
    y = apply_scale(ramp_w, th)
    u = torch.linspace(-1, 1, w, dtype=torch.float64)
    expected = ((0.5 * u + 1) / 2 * (w - 1)).view(1, 1, 1, w).expand(1, 1, h, w)
    assert torch.allclose(y, expected, atol=1e-12)
    # sy acts on rows only: the W ramp is left alone
    th = scale_theta(
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    )
    assert torch.allclose(apply_scale(ramp_w, th), ramp_w, atol=1e-12)


@pytest.mark.parametrize("op,field", [("scale", "theta_scale"), ("rotate", "theta_rot")])
def test_affine_ops_equal_reference_affine_grid_grid_sample(op, field):
    shape = (6, 3, 11, 9)
    x = images(shape)
    p = params_for(op, shape, seed=8)
    grid = F.affine_grid(getattr(p, field), list(shape), align_corners=True)
    expected = F.grid_sample(x, grid, align_corners=True)  # defaults: bilinear, zeros
    assert torch.equal(apply(x, p), expected)


# ---------------------------------------------------------------- noise


def test_noise_is_additive_gaussian_times_ratio():
    shape = (8, 3, 32, 32)
    x = images(shape)
    p = params_for("noise", shape, seed=10, ratio_noise=0.05)
    g = torch.Generator().manual_seed(10)
    n = torch.randn(shape, generator=g)
    assert torch.equal(p.noise, n * 0.05)
    assert torch.equal(apply(x, p), x + p.noise)
    assert torch.equal(apply_noise(x, p.noise), x + p.noise)
    assert abs(p.noise.std().item() - 0.05) < 0.002
