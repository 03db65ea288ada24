"""apply(..., impl="fused") against the reference DSA: mode S per group, mode M semantics."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import replace

import pytest
import torch

import mtt_fast.ops.dsa as dsa_op
from mtt_fast.augment import DSAConfig, FusedDSAUnavailable, apply, sample_params
from mtt_fast.augment.dsa import apply_reference
from mtt_fast.ops import _load, extension_loaded

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "") == "1"
needs_fused = pytest.mark.skipif(
    not extension_loaded() and not REQUIRE_EXT,
    reason=f"mtt_fast._C is not built or did not load ({_load.LOAD_ERROR})",
)

GROUPS = ["color", "crop", "cutout", "flip", "scale", "rotate", "noise"]
SHAPES = [(3, 2, 6, 5), (4, 3, 8, 8), (5, 1, 7, 1), (16, 3, 32, 32)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def images(shape, dtype=torch.float64, seed=0):
    """Random images, no zeros."""
    g = torch.Generator().manual_seed(7000 + seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.where(x.abs() < 1e-3, torch.full_like(x, 0.5), x)
    return x.to(dtype)


def params(strategy, shape, seed=0, dtype=torch.float64, mode="M"):
    cfg = DSAConfig(strategy=strategy, mode=mode)
    return sample_params(cfg, shape, torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- mode S: each group
@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", GROUPS)
def test_each_group_equals_reference(group, shape, dtype):
    x = images(shape, dtype, seed=1).requires_grad_(True)
    p = params(group, shape, seed=2, dtype=dtype, mode="S")
    got = apply(x, p, impl="fused")
    want = apply(x, p, impl="reference")
    tol = TOL[dtype]
    if dtype == torch.float32 and group in ("scale", "rotate") and shape[-1] > 8:
        # Both round the sampling coordinates in float32 (~1e-6 pixel on a 32-pixel axis),
        # which on random images (steep pixel-to-pixel jumps) moves values by ~1e-5 each:
        # require the fused op to be as close to the float64 truth as the reference is.
        p64 = p.to(dtype=torch.float64)
        truth = apply_reference(x.detach().double(), p64)
        err_ref = (want.detach().double() - truth).abs().max().item()
        err_fused = (got.detach().double() - truth).abs().max().item()
        assert err_fused <= max(tol, 1.5 * err_ref), (err_fused, err_ref)
        tol = 3e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    g = images(shape, dtype, seed=3)
    (gg,) = torch.autograd.grad(got, x, g)
    (gw,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(gg, gw, rtol=tol, atol=tol)


@needs_fused
def test_mode_s_draws_through_the_strategy_and_matches():
    shape = (4, 3, 8, 8)
    x = images(shape, torch.float32)
    seen = set()
    for seed in range(40):
        p = params("color_crop_cutout_flip_scale_rotate_noise", shape, seed, torch.float32, "S")
        seen.add(p.ops)
        torch.testing.assert_close(apply(x, p, impl="fused"), apply_reference(x, p),
                                   rtol=1e-5, atol=1e-5)
    assert len(seen) == 7


@needs_fused
def test_siamese_reuse_and_replay():
    shape = (4, 3, 8, 8)
    p = params("color_crop_cutout_flip_scale_rotate", shape, seed=4, mode="M")
    x1, x2 = images(shape, seed=5), images(shape, seed=6)
    y1, y2 = apply(x1, p, impl="fused"), apply(x2, p, impl="fused")
    assert torch.equal(y1, apply(x1, p, impl="fused"))  # replay: bit for bit
    torch.testing.assert_close(y2, apply(x2, p, impl="fused"), rtol=0, atol=0)
    # the same parameters transform each batch as the reference does with them
    for op in ("flip", "crop", "scale"):
        ps = params(op, shape, seed=8, mode="S")
        torch.testing.assert_close(apply(x1, ps, impl="fused"), apply_reference(x1, ps))
        torch.testing.assert_close(apply(x2, ps, impl="fused"), apply_reference(x2, ps))
    assert not torch.equal(y1, y2)


# ---------------------------------------------------------------- mode M: exact cases
@needs_fused
@pytest.mark.parametrize("order", list(itertools.permutations(["flip", "crop", "cutout"])))
def test_flips_crops_cutout_compose_exactly(order):
    shape = (6, 3, 9, 7)
    x = images(shape, seed=9)
    for seed in range(3):
        p = params("_".join(order), shape, seed, mode="M")
        assert torch.equal(apply(x, p, impl="fused"), apply_reference(x, p))
        for extra in (("color",) + order, order + ("noise",), ("color",) + order + ("noise",)):
            q = params("_".join(extra), shape, seed, mode="M")
            torch.testing.assert_close(apply(x, q, impl="fused"), apply_reference(x, q),
                                       rtol=1e-12, atol=1e-12)


@needs_fused
def test_documented_reorderings():
    """Cutout before color, noise before other ops, color between geometric ops: the fused
    op computes the chain with color moved before cutout, noise moved last, color moved
    after the geometry (mtt_fast/augment/fused.py, points 2-4)."""
    shape = (5, 3, 8, 8)
    x = images(shape, seed=10)
    cases = [
        ("cutout_color", ("color", "cutout")),
        ("noise_flip_crop", ("flip", "crop", "noise")),
        ("flip_color_crop", ("flip", "crop", "color")),
        ("noise_cutout_color_crop", ("color", "cutout", "crop", "noise")),
    ]
    for strategy, moved in cases:
        p = params(strategy, shape, seed=11, mode="M")
        want = apply_reference(x, replace(p, ops=moved))
        torch.testing.assert_close(apply(x, p, impl="fused"), want, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(apply_reference(x, p), want)  # it IS a difference


# ---------------------------------------------------------------- mode M: interpolation
def smooth_images(shape, kmax):
    """f(i, j) = sin(kx j + ky i + phase) per (sample, channel), |k|^2 <= 2 kmax^2."""
    b, c, h, w = shape
    g = torch.Generator().manual_seed(12)
    kx = (torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64) * 2 - 1) * kmax
    ky = (torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64) * 2 - 1) * kmax
    ph = torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    i = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    j = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    return torch.sin(kx * j + ky * i + ph), (kx**2 + ky**2).amax().item()


def zoom_out(p):
    """Scale factors >= 1 (as drawn, inverted where < 1): scale's Lipschitz factor <= 1.2."""
    t = p.theta_scale.clone()
    for k in (0, 1):
        s = t[:, k, k]
        t[:, k, k] = torch.where(s < 1, 1 / s, s)
    return replace(p, theta_scale=t)


@needs_fused
@pytest.mark.parametrize(
    "strategy",
    ["flip_scale_rotate", "crop_flip_scale_rotate", "color_crop_flip_scale_rotate",
     "color_crop_cutout_flip_scale_rotate"],
)
def test_composed_sampling_equals_chain_to_interpolation_error(strategy):
    """One bilinear sample (fused) vs one per scale/rotate op (reference).

    For f(i, j) = sin(k . (j, i) + phase) bilinear interpolation errs by at most
    E0 = |k|^2 / 8. The fused op interpolates once (error <= E0); the reference interpolates
    f(S .) (error <= smax^2 E0) and then re-interpolates that (error <= E0 plus the first
    error, carried by the convex weights), so |fused - reference| <= (2 + smax^2 + 1) E0 on
    every pixel where both read only real image content (coverage exactly 1 in both, no
    cutout edge); color multiplies differences by at most |c s| + |c (1 - s)|.
    """
    shape = (6, 3, 24, 24)
    x, k2 = smooth_images(shape, kmax=2 * math.pi * 1.5 / 24)
    p = zoom_out(params(strategy, shape, seed=13, mode="M"))
    smax = p.theta_scale.abs().amax().item()
    e0 = k2 / 8
    bound = torch.full((shape[0], 1, 1, 1), (3 + smax**2) * e0, dtype=torch.float64)
    if p.contrast is not None:
        c, s = p.contrast.view(-1, 1, 1, 1), p.saturation.view(-1, 1, 1, 1)
        bound = bound * ((c * s).abs() + (c * (1 - s)).abs())
    got, want = apply(x, p, impl="fused"), apply_reference(x, p)
    # pixels where both read only real content: coverage (ones through the geometry and
    # cutout, no color) is exactly 0 or exactly 1 in both
    geo = replace(p, ops=tuple(op for op in p.ops if op != "color"))
    ones = torch.ones(shape, dtype=torch.float64)
    cov_f, cov_r = apply(ones, geo, impl="fused"), apply_reference(ones, geo)
    exact01 = ((cov_r - 1).abs() < 1e-12) | (cov_r.abs() < 1e-12)
    region = exact01 & ((cov_f - cov_r).abs() < 1e-12)
    assert region.double().mean() > 0.3  # the comparison covers much of the image
    diff = (got - want).abs()
    assert (diff <= bound + 1e-12)[region].all(), (diff - bound)[region].max()
    # and the bound is not vacuous: the differences are real but below it
    assert diff[region].max() > 0


@needs_fused
def test_default_strategy_differs_only_near_edges():
    """MTT's default strategy on random images: outside the band where coverage or the
    cutout mask is fractional (edges), the fused output is within interpolation error."""
    shape = (4, 3, 32, 32)
    x, _ = smooth_images(shape, kmax=0.2)
    p = params("color_crop_cutout_flip_scale_rotate", shape, seed=14, mode="M")
    got, want = apply(x, p, impl="fused"), apply_reference(x, p)
    assert torch.isfinite(got).all()
    geo = replace(p, ops=tuple(op for op in p.ops if op != "color"))
    ones = torch.ones(shape, dtype=torch.float64)
    cov_f, cov_r = apply(ones, geo, impl="fused"), apply_reference(ones, geo)
    region = ((cov_r - 1).abs() < 1e-12) & ((cov_f - 1).abs() < 1e-12)
    assert region.double().mean() > 0.2
    assert (got - want).abs()[region].max() < 0.1


# ---------------------------------------------------------------- wiring
@needs_fused
def test_auto_uses_fused_and_falls_back():
    shape = (3, 2, 6, 5)
    x = images(shape, torch.float32)
    p = params("color_crop_cutout_flip_scale_rotate", shape, seed=15, dtype=torch.float32)
    assert torch.equal(apply(x, p, impl="auto"), apply(x, p, impl="fused"))
    xh = x.to(torch.bfloat16)
    torch.testing.assert_close(apply(xh, p, impl="auto"), apply_reference(xh, p))
    with pytest.raises(FusedDSAUnavailable, match="float32 and float64"):
        apply(xh, p, impl="fused")


def test_fused_unavailable_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(dsa_op, "COMPILED_DEVICES", frozenset())
    shape = (2, 1, 4, 4)
    x = images(shape)
    p = params("flip", shape)
    with pytest.raises(FusedDSAUnavailable) as err:
        apply(x, p, impl="fused")
    assert "\n" not in str(err.value) and "impl 'fused'" in str(err.value)
    torch.testing.assert_close(apply(x, p, impl="auto"), apply_reference(x, p))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_auto_matches_reference_per_group():
    shape = (4, 3, 16, 16)
    for group in GROUPS:
        p = params(group, shape, seed=16, dtype=torch.float32, mode="S").to("cuda")
        x = images(shape, torch.float32).cuda()
        torch.testing.assert_close(apply(x, p, impl="auto"), apply_reference(x, p),
                                   rtol=1e-5, atol=1e-5)


@needs_fused
def test_pack_is_cached_per_params_dtype_and_device():
    from mtt_fast.augment.fused import _PACKED, clear_pack_cache, pack

    p = sample_params(DSAConfig(mode="M"), (4, 3, 8, 8), torch.Generator().manual_seed(5))
    first = pack(p, torch.float32, "cpu")
    assert pack(p, torch.float32, "cpu")[0] is first[0]  # a replay packs nothing
    other = pack(p, torch.float64, "cpu")
    assert other[0].dtype == torch.float64 and other[0] is not first[0]
    torch.testing.assert_close(other[0].float(), first[0])
    # a new draw with equal values is a different object: packed on its own
    q = sample_params(DSAConfig(mode="M"), (4, 3, 8, 8), torch.Generator().manual_seed(5))
    assert pack(q, torch.float32, "cpu")[0] is not first[0]
    clear_pack_cache()
    assert len(_PACKED) == 0 and pack(p, torch.float32, "cpu")[0] is not first[0]


@needs_fused
def test_augment_samples_on_the_host_for_the_fused_op():
    from mtt_fast.augment import augment, uses_fused

    x = torch.randn(4, 3, 8, 8)
    assert uses_fused(x, "auto") and uses_fused(x, "fused") and not uses_fused(x, "reference")
    y, p = augment(x, DSAConfig(), torch.Generator().manual_seed(2), impl="auto")
    assert p.device.type == "cpu"
    torch.testing.assert_close(y, apply_reference(x, p), rtol=1e-4, atol=1e-4)
