"""The fused ConvNet block op (torch.ops.mtt_fast.convblock_*): values, derivatives, opcheck."""

from __future__ import annotations

import os

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mtt_fast.ops import _load, extension_info, reference
from mtt_fast.ops import block as block_op

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "") == "1"

needs_ext = pytest.mark.skipif(
    not block_op.REGISTERED and not REQUIRE_EXT,
    reason=f"mtt_fast._C is not built, did not load, or lacks convblock ({_load.LOAD_ERROR})",
)
needs_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and "cuda" in block_op.COMPILED_DEVICES),
    reason="needs a GPU and a CUDA build of mtt_fast._C",
)

# even, odd (the pool drops the last row/column as nn.AvgPool2d does), and the smallest
SHAPES = [(2, 3, 6, 4), (2, 2, 5, 7), (1, 2, 2, 3)]
EPS = 1e-5


def inputs(shape, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    """Random (x, weight, bias) whose normalized-affine map z stays away from ReLU's kink."""
    for attempt in range(100):
        g = torch.Generator().manual_seed(1000 * seed + attempt)
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3
        w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
        w[::2] = -w[::2]  # negative scales too
        b = 0.3 * torch.randn(shape[1], generator=g, dtype=torch.float64)
        z = torch.nn.functional.group_norm(x, shape[1], w, b, EPS)
        if z.abs().min() > 2e-3:
            break
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (x, w, b))


def fused_y(x, w, b):
    return torch.ops.mtt_fast.convblock_forward(x, w, b, EPS)[0]


def test_extension_lists_the_block_ops():
    if REQUIRE_EXT:
        assert block_op.REGISTERED, f"mtt_fast._C lacks convblock: {_load.LOAD_ERROR}"
    if not block_op.REGISTERED:
        pytest.skip("no compiled convblock")
    info = extension_info()
    for name in ("convblock_forward", "convblock_backward", "convblock_double_backward"):
        assert f"mtt_fast::{name}" in info["ops"]
        assert "cpu" in info["kernels"][f"mtt_fast::{name}"]


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_reference(shape, dtype):
    x, w, b = inputs(shape, dtype)
    y, stats = torch.ops.mtt_fast.convblock_forward(x, w, b, EPS)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert y.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2) and y.dtype == dtype
    torch.testing.assert_close(y, reference.convblock(x, w, b, EPS), **tol)
    torch.testing.assert_close(stats, reference.convblock_stats(x, EPS), **tol)
    torch.testing.assert_close(block_op.convblock(x, w, b, EPS), y, rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_and_gradgradcheck_float64(shape):
    x, w, b = inputs(shape, requires_grad=True)
    assert gradcheck(fused_y, (x, w, b), eps=1e-6, atol=1e-7)
    assert gradgradcheck(fused_y, (x, w, b), eps=1e-6, atol=1e-6)


@needs_ext
def test_backward_op_gradcheck_with_consistent_stats():
    # convblock_backward(gy, x, w, b, stats(x)) as a function of (gy, x, w): its derivatives
    # are the double backward op (the stats are recomputed for each perturbed x)
    x, w, b = inputs((2, 2, 4, 6), requires_grad=True)
    gy = torch.randn(2, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                     requires_grad=True)

    def bwd(gy, x, w):
        stats = torch.ops.mtt_fast.convblock_forward(x.detach(), w.detach(), b.detach(), EPS)[1]
        return torch.ops.mtt_fast.convblock_backward(gy, x, w, b.detach(), stats)

    assert gradcheck(bwd, (gy, x, w), eps=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_double_backward_matches_reference(dtype):
    """Gradient with a graph, then its partial VJPs, against the native composite."""
    shape = (3, 4, 7, 6)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    gen = torch.Generator().manual_seed(7)
    gy = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    rx = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    rw = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype)
    rb = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype)
    results = []
    for fn in (fused_y, lambda x, w, b: reference.convblock(x, w, b, EPS)):
        x, w, b = inputs(shape, dtype, requires_grad=True)
        g = gy.clone().requires_grad_(True)
        gx, gw, gb = torch.autograd.grad(fn(x, w, b), (x, w, b), g, create_graph=True)
        out = [gx, gw, gb]
        # every subset of cotangents, so the op's None handling is exercised
        for sel in ((rx, rw, rb), (rx, None, None), (None, rw, None), (None, None, rb)):
            s = sum((t * r).sum() for t, r in zip((gx, gw, gb), sel) if r is not None)
            out += list(torch.autograd.grad(s, (g, x, w), retain_graph=True, allow_unused=True))
        results.append(out)
    for a, r in zip(*results):
        if a is None or r is None:
            assert a is None or float(a.abs().max()) == 0.0
            continue
        torch.testing.assert_close(a, r, **tol)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(dtype):
    x, w, b = inputs((2, 3, 6, 5), dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.mtt_fast.convblock_forward.default, (x, w, b, EPS))
    with torch.no_grad():
        stats = torch.ops.mtt_fast.convblock_forward(x, w, b, EPS)[1]
    gy = torch.randn(2, 3, 3, 2, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.mtt_fast.convblock_backward.default, (gy, x, w, b, stats))
    rx, rw, rb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    dd = torch.ops.mtt_fast.convblock_double_backward.default
    args = tuple(t.detach() for t in (gy, x, w, b, stats))
    torch.library.opcheck(dd, (*args, rx, rw, rb))
    torch.library.opcheck(dd, (*args, None, rw, None))


@needs_ext
def test_deterministic_across_thread_counts():
    x, w, b = inputs((4, 3, 9, 8), torch.float32)
    gy = torch.randn(4, 3, 4, 4)
    rx, rw = torch.randn_like(x), torch.randn_like(w)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, max(2, before)):
            torch.set_num_threads(n)
            y, st = torch.ops.mtt_fast.convblock_forward(x, w, b, EPS)
            outs.append((y, *torch.ops.mtt_fast.convblock_backward(gy, x, w, b, st),
                         *torch.ops.mtt_fast.convblock_double_backward(gy, x, w, b, st, rx, rw, None)))
    finally:
        torch.set_num_threads(before)
    for a, r in zip(*outs):
        assert torch.equal(a, r)


@needs_ext
def test_bad_arguments_raise():
    x, w, b = inputs((2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="weight and bias must be"):
        torch.ops.mtt_fast.convblock_forward(x, w[:2], b, EPS)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.mtt_fast.convblock_forward(x.half(), w.half(), b.half(), EPS)
    with pytest.raises(RuntimeError, match="at least 2x2"):
        torch.ops.mtt_fast.convblock_forward(x[:, :, :1].contiguous(), w, b, EPS)
    _, st = torch.ops.mtt_fast.convblock_forward(x, w, b, EPS)
    with pytest.raises(RuntimeError, match="grad_y must be"):
        torch.ops.mtt_fast.convblock_backward(torch.zeros(2, 3, 4, 4, dtype=x.dtype), x, w, b, st)
    with pytest.raises(ValueError, match="impl must be"):
        block_op.convblock(x, w, b, impl="nope")
    with pytest.raises(RuntimeError, match="float32 and float64"):
        block_op.convblock(x.half(), w.half(), b.half(), impl="fused")


def test_reference_impl_and_auto_fallback():
    x, w, b = inputs((2, 3, 5, 4), torch.float64, requires_grad=True)
    y = block_op.convblock(x, w, b, impl="reference")
    torch.testing.assert_close(y, reference.convblock(x, w, b))
    # a dtype without a kernel falls back on the reference under "auto"
    xb, wb, bb = (t.detach().bfloat16() for t in (x, w, b))
    assert block_op.convblock(xb, wb, bb).dtype == torch.bfloat16


@needs_ext
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_twin_matches_cpu(dtype):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    x, w, b = inputs((3, 4, 9, 10), dtype)
    gen = torch.Generator().manual_seed(5)
    gy = torch.randn(3, 4, 4, 5, generator=gen, dtype=torch.float64).to(dtype)
    rx = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    rw = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype)
    rb = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype)
    outs = []
    for dev in ("cpu", "cuda"):
        a = [t.to(dev) for t in (gy, x, w, b, rx, rw, rb)]
        y, st = torch.ops.mtt_fast.convblock_forward(a[1], a[2], a[3], EPS)
        bw = torch.ops.mtt_fast.convblock_backward(a[0], a[1], a[2], a[3], st)
        dd = torch.ops.mtt_fast.convblock_double_backward(a[0], a[1], a[2], a[3], st, a[4], a[5], a[6])
        outs.append([t.cpu() for t in (y, st, *bw, *dd)])
    for c, g in zip(*outs):
        torch.testing.assert_close(g, c, **tol)
    xc, wc, bc = (t.cuda().requires_grad_(True) for t in inputs((2, 3, 6, 5)))
    assert gradgradcheck(fused_y, (xc, wc, bc), eps=1e-6, atol=1e-6)


@needs_ext
def test_third_order_raises_clearly():
    x, w, b = inputs((1, 2, 4, 4), requires_grad=True)
    (gx,) = torch.autograd.grad(fused_y(x, w, b).pow(2).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third order"):
        torch.autograd.grad(h.sum(), x)
