"""The compiled trajectory loss (torch.ops.mtt_fast.traj_loss*) against its reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mtt_fast.ops import _load, extension_info, extension_loaded, reference, trajectory_loss
from mtt_fast.ops import traj_loss as tl

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "") == "1"

needs_ext = pytest.mark.skipif(
    not extension_loaded(),
    reason=f"mtt_fast._C is not built or did not load ({_load.LOAD_ERROR}); "
    "build it with `pip install --no-build-isolation -e .`",
)
needs_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and "cuda" in tl.COMPILED_DEVICES),
    reason="needs a GPU and a CUDA build of mtt_fast._C",
)

SIZES = [1, 2, 7, 1000, 32769, 100_003, (1 << 20) + 3]  # odd sizes, chunk edge, > 1e6
DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def make_inputs(n, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    """student, target, start: random, start != target (nonzero denominator)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=g, dtype=torch.float64)
    target = start + 0.1 * torch.randn(n, generator=g, dtype=torch.float64) + 0.01
    student = (
        start + 0.5 * (target - start) + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    )
    return [
        t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        for t in (student, target, start)
    ]


# ---------------------------------------------------------------- loading, always run
def test_extension_required_when_ci_says_so():
    """CI sets MTT_FAST_REQUIRE_EXT=1: a broken build must fail here, not hide in skips."""
    if REQUIRE_EXT:
        assert extension_loaded(), f"mtt_fast._C did not load: {_load.LOAD_ERROR}"
    elif not extension_loaded():
        pytest.skip(f"mtt_fast._C not loaded ({_load.LOAD_ERROR}); MTT_FAST_REQUIRE_EXT unset")


def test_extension_info_describes_the_build():
    info = extension_info()
    for key in (
        "loaded",
        "error",
        "path",
        "built_with_cuda",
        "ops",
        "kernels",
        "torch_version",
        "torch_cuda",
        "cuda_available",
    ):
        assert key in info
    assert info["loaded"] == extension_loaded()
    if info["loaded"]:
        assert info["error"] is None and os.path.exists(info["path"])
        assert {"mtt_fast::traj_loss", "mtt_fast::traj_loss_backward"} <= set(info["ops"])
        assert "cpu" in info["kernels"]["mtt_fast::traj_loss"]
        assert ("cuda" in info["kernels"]["mtt_fast::traj_loss"]) == info["built_with_cuda"]
    else:
        assert info["error"] and info["ops"] == []


def test_disabled_extension_runs_on_reference():
    code = (
        "import torch, mtt_fast.ops as o\n"
        "assert not o.extension_loaded(), 'loaded'\n"
        "assert 'MTT_FAST_DISABLE_EXT' in o.extension_info()['error']\n"
        "a, b, c = torch.randn(3, 10, dtype=torch.float64)\n"
        "torch.testing.assert_close(o.trajectory_loss(a, b, c), o.reference.traj_loss(a, b, c))\n"
    )
    env = dict(os.environ, MTT_FAST_DISABLE_EXT="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- reference, always run
def test_reference_matches_formula_and_its_backward():
    a, b, c = make_inputs(50, requires_grad=True)
    loss = reference.traj_loss(a, b, c)
    expected = ((a - b) ** 2).sum() / ((c - b) ** 2).sum()
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss * 1.7, (a, b, c))
    manual = reference.traj_loss_backward(torch.tensor(1.7, dtype=a.dtype), a, b, c)
    for got, want in zip(manual, grads):
        torch.testing.assert_close(got, want)


def test_impl_reference_and_bad_impl():
    a, b, c = make_inputs(9)
    torch.testing.assert_close(
        trajectory_loss(a, b, c, impl="reference"), reference.traj_loss(a, b, c)
    )
    with pytest.raises(ValueError, match="impl"):
        trajectory_loss(a, b, c, impl="fast")


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_python_checks_reject_bad_inputs(impl):
    a, b, c = make_inputs(8)
    with pytest.raises(ValueError, match="1-D"):
        trajectory_loss(a.view(2, 4), b.view(2, 4), c.view(2, 4), impl=impl)
    with pytest.raises(ValueError, match="same length"):
        trajectory_loss(a, b[:7], c, impl=impl)
    with pytest.raises(ValueError, match="same dtype"):
        trajectory_loss(a, b.float(), c, impl=impl)
    with pytest.raises(ValueError, match="floating point"):
        trajectory_loss(a.long(), b.long(), c.long(), impl=impl)


# ---------------------------------------------------------------- compiled, CPU
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_forward_matches_reference(n, dtype):
    a, b, c = make_inputs(n, dtype, seed=n)
    got = torch.ops.mtt_fast.traj_loss(a, b, c)
    want = reference.traj_loss(a, b, c)
    assert got.shape == () and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=0)
    # the float32 op sums in double: compare with the float64 reference too
    want64 = reference.traj_loss(a.double(), b.double(), c.double())
    torch.testing.assert_close(got.double(), want64, rtol=RTOL[dtype], atol=0)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 32769, (1 << 20) + 3])
def test_backward_op_matches_reference(n, dtype):
    a, b, c = make_inputs(n, dtype, seed=n + 1)
    grad = torch.tensor(0.37, dtype=dtype)
    got = torch.ops.mtt_fast.traj_loss_backward(grad, a, b, c)
    want = reference.traj_loss_backward(grad.double(), a.double(), b.double(), c.double())
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == (n,)
        torch.testing.assert_close(
            g.double(), w, rtol=RTOL[dtype], atol=RTOL[dtype] * w.abs().max().item()
        )


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_matches_reference(dtype):
    a, b, c = make_inputs(1001, dtype, requires_grad=True)
    got = torch.autograd.grad(trajectory_loss(a, b, c, impl="fused"), (a, b, c))
    want = torch.autograd.grad(trajectory_loss(a, b, c, impl="reference"), (a, b, c))
    for g, w in zip(got, want):
        torch.testing.assert_close(
            g, w, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * w.abs().max().item()
        )


@needs_ext
def test_only_requested_gradients():
    a, b, c = make_inputs(10, requires_grad=False)
    a.requires_grad_(True)
    (ga,) = torch.autograd.grad(trajectory_loss(a, b, c, impl="fused"), (a,))
    (wa,) = torch.autograd.grad(trajectory_loss(a, b, c, impl="reference"), (a,))
    torch.testing.assert_close(ga, wa)


@needs_ext
def test_gradcheck_and_gradgradcheck():
    args = make_inputs(13, torch.float64, requires_grad=True)

    def fn(a, b, c):
        return trajectory_loss(a, b, c, impl="fused")

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@needs_ext
def test_backward_op_gradcheck_and_gradgradcheck():
    """The backward op's own autograd (double backward) and its derivative (third order)."""
    a, b, c = make_inputs(11, torch.float64, requires_grad=True)
    grad = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    op = torch.ops.mtt_fast.traj_loss_backward
    assert torch.autograd.gradcheck(op, (grad, a, b, c))
    assert torch.autograd.gradgradcheck(op, (grad, a, b, c))


@needs_ext
def test_opcheck_cpu():
    for rg in (False, True):
        for dtype in DTYPES:
            a, b, c = make_inputs(37, dtype, requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.traj_loss.default, (a, b, c))
            grad = torch.tensor(1.3, dtype=dtype, requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.traj_loss_backward.default, (grad, a, b, c))


@needs_ext
def test_torch_compile_traces_through():
    a, b, c = make_inputs(64, requires_grad=True)

    def f(a, b, c):
        return trajectory_loss(a, b, c) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(a, b, c)
    torch.testing.assert_close(got, f(a, b, c))
    torch.testing.assert_close(
        torch.autograd.grad(got, a)[0], torch.autograd.grad(f(a, b, c), a)[0]
    )


@needs_ext
def test_cpu_reduction_is_deterministic_across_thread_counts():
    a, b, c = make_inputs((1 << 20) + 3, torch.float32, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.mtt_fast.traj_loss(a, b, c)
        torch.set_num_threads(max(2, threads))
        many = torch.ops.mtt_fast.traj_loss(a, b, c)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@needs_ext
def test_op_rejects_bad_inputs():
    op = torch.ops.mtt_fast.traj_loss
    a, b, c = make_inputs(8)
    with pytest.raises(RuntimeError, match="1-D"):
        op(a.view(2, 4), b.view(2, 4), c.view(2, 4))
    with pytest.raises(RuntimeError, match="same length"):
        op(a, b[:7], c)
    with pytest.raises(RuntimeError, match="same dtype"):
        op(a, b.float(), c)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(a.half(), b.half(), c.half())
    with pytest.raises(RuntimeError, match="contiguous"):
        op(a[::2], b[::2], c[::2])
    with pytest.raises(RuntimeError, match="grad must hold one element"):
        torch.ops.mtt_fast.traj_loss_backward(torch.ones(2, dtype=a.dtype), a, b, c)


@needs_ext
def test_auto_falls_back_and_compiled_refuses_unsupported_dtype():
    a, b, c = (t.half() for t in make_inputs(16))
    torch.testing.assert_close(trajectory_loss(a, b, c), reference.traj_loss(a, b, c))
    with pytest.raises(RuntimeError, match="float32 and float64"):
        trajectory_loss(a, b, c, impl="fused")


@needs_ext
def test_auto_handles_non_contiguous_inputs():
    a, b, c = make_inputs(20)
    got = trajectory_loss(a[::2], b[::2], c[::2])
    torch.testing.assert_close(got, reference.traj_loss(a[::2], b[::2], c[::2]))


def test_fused_without_extension_says_why(monkeypatch):
    monkeypatch.setattr(tl, "COMPILED_DEVICES", frozenset())
    a, b, c = make_inputs(4)
    with pytest.raises(RuntimeError, match="trajectory_loss\\(impl='fused'\\)"):
        trajectory_loss(a, b, c, impl="fused")
    torch.testing.assert_close(trajectory_loss(a, b, c), reference.traj_loss(a, b, c))


# ---------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_auto_works_with_any_build():
    """A CPU-only build has no CUDA kernel: auto must take the reference path there."""
    a, b, c = make_inputs(1000, torch.float32, device="cuda")
    got = trajectory_loss(a, b, c)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got, reference.traj_loss(a, b, c), rtol=1e-5, atol=0)


@needs_ext
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_cuda_forward_and_backward_match_reference(n, dtype):
    a, b, c = make_inputs(n, dtype, device="cuda", seed=n)
    got = torch.ops.mtt_fast.traj_loss(a, b, c)
    want = reference.traj_loss(a.double(), b.double(), c.double())
    assert got.device.type == "cuda" and got.shape == ()
    torch.testing.assert_close(got.double(), want, rtol=RTOL[dtype], atol=0)
    grad = torch.tensor(0.37, dtype=dtype, device="cuda")
    got_g = torch.ops.mtt_fast.traj_loss_backward(grad, a, b, c)
    want_g = reference.traj_loss_backward(grad.double(), a.double(), b.double(), c.double())
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(
            g.double(), w, rtol=RTOL[dtype], atol=RTOL[dtype] * w.abs().max().item()
        )
    # CPU and CUDA twins agree, and the CUDA reduction is deterministic
    torch.testing.assert_close(
        got.cpu(),
        torch.ops.mtt_fast.traj_loss(a.cpu(), b.cpu(), c.cpu()),
        rtol=RTOL[dtype],
        atol=0,
    )
    assert torch.equal(got, torch.ops.mtt_fast.traj_loss(a, b, c))


@needs_ext
@needs_cuda_kernel
def test_cuda_gradcheck_and_opcheck():
    args = make_inputs(13, torch.float64, device="cuda", requires_grad=True)

    def fn(a, b, c):
        return trajectory_loss(a, b, c, impl="fused")

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    for rg in (False, True):
        for dtype in DTYPES:
            a, b, c = make_inputs(37, dtype, device="cuda", requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.traj_loss.default, (a, b, c))
            grad = torch.tensor(1.3, dtype=dtype, device="cuda", requires_grad=rg)
            torch.library.opcheck(torch.ops.mtt_fast.traj_loss_backward.default, (grad, a, b, c))


@needs_ext
@needs_cuda_kernel
def test_cuda_rejects_mixed_devices():
    a, b, c = make_inputs(8, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.mtt_fast.traj_loss(a, b.cpu(), c)
