"""The fused DSA op (torch.ops.mtt_fast.dsa_forward / dsa_backward): autograd, opcheck."""

from __future__ import annotations

import os

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mtt_fast.augment import DSAConfig, sample_params
from mtt_fast.augment.fused import OP_CODES, pack, pack_reference
from mtt_fast.ops import _load, extension_info, extension_loaded, reference
from mtt_fast.ops import dsa as dsa_op

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "") == "1"

needs_ext = pytest.mark.skipif(
    not extension_loaded() and not REQUIRE_EXT,
    reason=f"mtt_fast._C is not built or did not load ({_load.LOAD_ERROR})",
)
needs_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and "cuda" in dsa_op.COMPILED_DEVICES),
    reason="needs a GPU and a CUDA build of mtt_fast._C",
)

STRATEGIES = [
    "color",
    "crop",
    "cutout",
    "flip",
    "scale",
    "rotate",
    "noise",
    "color_crop_cutout_flip_scale_rotate",
    "color_crop_cutout_flip_scale_rotate_noise",
    "crop_scale_color",
    "cutout_rotate",
    "flip_crop_cutout",
]
SHAPE = (3, 2, 6, 5)


def images(shape, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(500 + seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) + 0.1
    return x.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def packed(strategy, shape=SHAPE, dtype=torch.float64, device="cpu", seed=0):
    cfg = DSAConfig(strategy=strategy, mode="M")
    p = sample_params(cfg, shape, torch.Generator().manual_seed(seed), dtype=dtype)
    return pack(p, dtype, device)


def test_extension_required_when_ci_says_so():
    if REQUIRE_EXT:
        assert extension_loaded(), f"mtt_fast._C did not load: {_load.LOAD_ERROR}"
        assert "cpu" in dsa_op.COMPILED_DEVICES, "mtt_fast._C has no CPU kernel for dsa_forward"
    elif not extension_loaded():
        pytest.skip(f"mtt_fast._C not loaded ({_load.LOAD_ERROR}); MTT_FAST_REQUIRE_EXT unset")


@needs_ext
def test_info_lists_the_dsa_ops():
    info = extension_info()
    for name in ("mtt_fast::dsa_forward", "mtt_fast::dsa_backward"):
        assert name in info["ops"]
        assert "cpu" in info["kernels"][name]
        assert ("cuda" in info["kernels"][name]) == info["built_with_cuda"]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_op_matches_its_pure_torch_spec(strategy, dtype):
    """Forward and backward against mtt_fast.ops.reference.dsa (same packed parameters)."""
    shape = (4, 3, 8, 8)
    params, noise, flags = packed(strategy, shape, dtype, seed=7)
    x = images(shape, dtype, requires_grad=True)
    got = dsa_op.dsa_fused(x, params, noise, flags)
    want = reference.dsa(x, params, noise, flags)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    g = images(shape, dtype, seed=1)
    (gx,) = torch.autograd.grad(got, x, g)
    (wx,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(gx, wx, rtol=tol, atol=tol)


@needs_ext
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradcheck_and_gradgradcheck(strategy):
    params, noise, flags = packed(strategy, seed=3)
    x = images(SHAPE, requires_grad=True)

    def fn(x):
        return dsa_op.dsa_fused(x, params, noise, flags)

    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6)


@needs_ext
def test_backward_op_gradcheck_and_gradient_wrt_noise():
    params, noise, flags = packed("color_crop_cutout_flip_scale_rotate_noise", seed=4)
    g = images(SHAPE, requires_grad=True, seed=2)
    op = torch.ops.mtt_fast.dsa_backward.default
    assert gradcheck(lambda g: op(g, params, flags), (g,))
    assert gradgradcheck(lambda g: op(g, params, flags), (g,))
    n = noise.clone().requires_grad_(True)
    x = images(SHAPE, requires_grad=True)
    assert gradcheck(lambda x, n: dsa_op.dsa_fused(x, params, n, flags), (x, n))


@needs_ext
@pytest.mark.parametrize("strategy", ["color", "cutout", "rotate", "color_crop_cutout_flip_scale_rotate_noise"])
def test_opcheck_cpu(strategy):
    for dtype in (torch.float32, torch.float64):
        for rg in (False, True):
            params, noise, flags = packed(strategy, dtype=dtype, seed=5)
            x = images(SHAPE, dtype, requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.dsa_forward.default, (x, params, noise, flags))
            g = images(SHAPE, dtype, seed=9, requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.dsa_backward.default, (g, params, flags))


PACK_STRATEGIES = STRATEGIES + [
    "rotate_scale_flip_crop",
    "scale_cutout_color",
    "flip_cutout_crop_rotate_noise",
    "noise_color",
]


@needs_ext
@pytest.mark.parametrize("shape", [(5, 3, 9, 7), (4, 1, 1, 6), (3, 2, 5, 1), (1, 1, 28, 28)])
@pytest.mark.parametrize("strategy", PACK_STRATEGIES)
def test_pack_op_matches_pack_reference(strategy, shape):
    """torch.ops.mtt_fast.dsa_pack (what pack uses) against the float64 torch spec."""
    for seed in range(3):
        cfg = DSAConfig(strategy=strategy, mode="M")
        p = sample_params(cfg, shape, torch.Generator().manual_seed(40 + seed))
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
            got, got_noise, got_flags = pack(p, dtype, "cpu")
            want, want_noise, want_flags = pack_reference(p, dtype, "cpu")
            assert got.dtype == dtype and got.shape == (shape[0], dsa_op.NUM_PARAMS)
            assert got_flags == want_flags
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
            if want_noise is None:
                assert got_noise is None
            else:
                assert torch.equal(got_noise, want_noise)


@needs_ext
@pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "noise", "flip_crop"])
def test_pack_opcheck(strategy):
    p = sample_params(DSAConfig(strategy=strategy, mode="M"), (3, 2, 6, 5), torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.float64):
        args = ([OP_CODES[o] for o in p.ops], list(p.shape), p.theta_scale, p.theta_rot, p.flip,
                p.brightness, p.saturation, p.contrast, p.crop_shift, p.cutout_center, p.cutout_size, dtype)
        torch.library.opcheck(torch.ops.mtt_fast.dsa_pack.default, args)


@needs_ext
def test_pack_op_rejects_missing_and_misshapen_parameters():
    shape = (3, 1, 6, 6)
    p = sample_params(DSAConfig(strategy="color_crop_rotate", mode="M"), shape,
                      torch.Generator().manual_seed(0))
    op = torch.ops.mtt_fast.dsa_pack.default
    codes = [OP_CODES[o] for o in p.ops]
    base = {"theta_scale": None, "theta_rot": p.theta_rot, "flip": None, "brightness": p.brightness,
            "saturation": p.saturation, "contrast": p.contrast, "crop_shift": p.crop_shift,
            "cutout_center": None, "cutout_size": None}

    def call(codes=codes, **change):
        kw = {**base, **change}
        return op(codes, list(shape), *kw.values(), torch.float32)

    assert call().shape == (3, dsa_op.NUM_PARAMS)
    with pytest.raises(RuntimeError, match="ops include rotate but theta_rot is missing"):
        call(theta_rot=None)
    with pytest.raises(RuntimeError, match="crop_shift must have 6 elements"):
        call(crop_shift=p.crop_shift[:2])
    with pytest.raises(RuntimeError, match="unknown op code 9"):
        call(codes=[9])
    with pytest.raises(RuntimeError, match=r"shape must be \[B, C, H, W\]"):
        op(codes, [3, 6, 6], *base.values(), torch.float32)
    with pytest.raises(RuntimeError, match="dtype must be float32 or float64"):
        op(codes, list(shape), *base.values(), torch.int64)


@needs_ext
@pytest.mark.parametrize(
    "strategy",
    ["scale", "rotate", "cutout", "cutout_rotate", "cutout_scale_flip", "crop_scale_color",
     "color_crop_cutout_flip_scale_rotate", "cutout_flip_scale_rotate_color"],
)
@pytest.mark.parametrize("shape", [(6, 3, 41, 37), (2, 2, 3, 1030)], ids=["41x37", "3x1030"])
def test_op_matches_spec_on_larger_images(strategy, shape):
    """Bigger frames than the other tests, several draws: the CPU twin's separable and
    general bilinear rows, and its cutout intervals (cut pixels found by interval, only the
    ends evaluated pixel by pixel), against the spec. The CPU works on blocks of about 1024
    pixels of whole rows: 41x37 is two blocks (27 rows, then 14), 3x1030 one row a block."""
    for seed in range(4):
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            params, noise, flags = packed(strategy, shape, dtype, seed=20 + seed)
            x = images(shape, dtype, seed=seed, requires_grad=True)
            got = dsa_op.dsa_fused(x, params, noise, flags)
            want = reference.dsa(x, params, noise, flags)
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
            g = images(shape, dtype, seed=10 + seed)
            (gx,) = torch.autograd.grad(got, x, g)
            (wx,) = torch.autograd.grad(want, x, g)
            torch.testing.assert_close(gx, wx, rtol=tol, atol=tol)


@needs_ext
@pytest.mark.parametrize("strategy", ["cutout_rotate", "cutout_flip_scale_rotate", "cutout_scale_rotate_crop"])
def test_cutout_behind_rotations_matches_spec_over_many_draws(strategy):
    """The CPU twin finds each row's cut pixels from a per-sample prediction (rows the box
    reaches, interval ends) and confirms them pixel by pixel; many draws of the box and of
    the rotation, both dtypes, against the spec's per-pixel test (forward: the mask is 0/1,
    so a wrong pixel is a large error)."""
    shape = (16, 1, 23, 29)
    for seed in range(12):
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            params, noise, flags = packed(strategy, shape, dtype, seed=100 + seed)
            x = images(shape, dtype, seed=seed) + 3.0  # no value near 0: a cut pixel shows
            got = dsa_op.dsa_fused(x, params, noise, flags)
            want = reference.dsa(x, params, noise, flags)
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
            g = images(shape, dtype, seed=50 + seed)
            torch.testing.assert_close(torch.ops.mtt_fast.dsa_backward(g, params, flags),
                                       torch.autograd.grad(reference.dsa(x.requires_grad_(True), params, noise,
                                                                         flags), x, g)[0], rtol=tol, atol=tol)
            x.requires_grad_(False)


@needs_ext
def test_cpu_is_deterministic_across_thread_counts():
    shape = (8, 3, 16, 16)
    params, noise, flags = packed("color_crop_cutout_flip_scale_rotate_noise", shape, torch.float32)
    x = images(shape, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = torch.ops.mtt_fast.dsa_forward(x, params, noise, flags)
        g1 = torch.ops.mtt_fast.dsa_backward(x, params, flags)
        torch.set_num_threads(max(2, threads))
        y2 = torch.ops.mtt_fast.dsa_forward(x, params, noise, flags)
        g2 = torch.ops.mtt_fast.dsa_backward(x, params, flags)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


@needs_ext
def test_op_rejects_bad_inputs():
    params, noise, flags = packed("noise")
    x = images(SHAPE)
    fwd = torch.ops.mtt_fast.dsa_forward
    with pytest.raises(RuntimeError, match="images"):
        fwd(x[0], params, noise, flags)
    with pytest.raises(RuntimeError, match="params must be"):
        fwd(x, params[:, :5].contiguous(), noise, flags)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        fwd(x.half(), params.half(), noise.half(), flags)
    with pytest.raises(RuntimeError, match="no noise tensor"):
        fwd(x, params, None, flags)
    with pytest.raises(RuntimeError, match="invalid flags"):
        fwd(x, params, noise, 1000)


@needs_ext
def test_torch_compile_traces_through():
    params, noise, flags = packed("color_crop_cutout_flip_scale_rotate_noise", seed=6)
    x = images(SHAPE, requires_grad=True)

    def f(x):
        return dsa_op.dsa_fused(x, params, noise, flags) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    torch.testing.assert_close(got, f(x))
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(f(x).sum(), x)[0]
    )


# ---------------------------------------------------------------- CUDA
@needs_ext
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_matches_cpu_and_spec(strategy, dtype):
    shape = (5, 3, 17, 13)
    params, noise, flags = packed(strategy, shape, dtype, seed=8)
    x = images(shape, dtype)
    g = images(shape, dtype, seed=3)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    y_cpu = torch.ops.mtt_fast.dsa_forward(x, params, noise, flags)
    gx_cpu = torch.ops.mtt_fast.dsa_backward(g, params, flags)
    nc = None if noise is None else noise.cuda()
    y = torch.ops.mtt_fast.dsa_forward(x.cuda(), params.cuda(), nc, flags)
    gx = torch.ops.mtt_fast.dsa_backward(g.cuda(), params.cuda(), flags)
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.cpu(), gx_cpu, rtol=tol, atol=tol)
    torch.testing.assert_close(y, reference.dsa(x.cuda(), params.cuda(), nc, flags), rtol=tol, atol=tol)


@needs_ext
@needs_cuda_kernel
def test_cuda_gradcheck_gradgradcheck_opcheck():
    params, noise, flags = packed("color_crop_cutout_flip_scale_rotate_noise", seed=2)
    params, noise = params.cuda(), noise.cuda()
    x = images(SHAPE, device="cuda", requires_grad=True)

    def fn(x):
        return dsa_op.dsa_fused(x, params, noise, flags)

    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    for rg in (False, True):
        xr = images(SHAPE, device="cuda", requires_grad=rg)
        torch.library.opcheck(torch.ops.mtt_fast.dsa_forward.default, (xr, params, noise, flags))
        torch.library.opcheck(torch.ops.mtt_fast.dsa_backward.default, (xr, params, flags))
