"""Verify-on-first-use (mtt_fast.ops.verify): ``auto`` runs a compiled op family on a device
only after it matched its spec there; the verdict is cached on disk per build/torch/device."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from mtt_fast.augment import DSAConfig, apply, apply_reference, sample_params, uses_fused
from mtt_fast.models import ConvNet
from mtt_fast.ops import _load, extension_loaded, reference, trajectory_loss, verify
from mtt_fast.ops import block as block_op
from mtt_fast.ops import dsa as dsa_op
from mtt_fast.ops import traj_loss as traj_op
from mtt_fast.ops.impl import fused_selected

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "") == "1"
needs_ext = pytest.mark.skipif(
    not (extension_loaded() and block_op.REGISTERED and dsa_op.REGISTERED) and not REQUIRE_EXT,
    reason=f"mtt_fast._C is not built or did not load ({_load.LOAD_ERROR})",
)
needs_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and all("cuda" in m.COMPILED_DEVICES for m in (traj_op, block_op, dsa_op))),
    reason="needs a GPU and a CUDA build of mtt_fast._C",
)
DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache dir, no forced failures, no verdicts in this process."""
    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(verify.FORCE_FAIL_ENV, raising=False)
    verify.reset()
    yield tmp_path / "cache" / verify.CACHE_SUBDIR
    verify.reset()


@pytest.fixture
def count_checks(monkeypatch):
    """Counts the parity checks that really run."""
    calls = []
    real = verify.run_check

    def spy(family, device, dtype):
        calls.append((family, str(device), dtype))
        return real(family, device, dtype)

    monkeypatch.setattr(verify, "run_check", spy)
    return calls


def verification_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, verify.VerificationWarning)]


def cached_files(folder, family):
    return sorted(folder.glob(f"{family}-*.json"))


# --------------------------------------------------------------------------------------
# the check itself
# --------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", verify.FAMILIES)
def test_parity_check_passes_on_cpu(family, dtype, fresh):
    v = verify.run_check(family, "cpu", dtype)
    assert v.passed, v.line()
    assert v.error is None and not v.forced
    assert 0 <= v.max_rel_err <= verify.TOLERANCE[dtype]
    assert v.family == family and v.device == "cpu" and v.dtype == str(dtype)[6:]
    assert v.build_hash == verify.build_hash() and len(v.build_hash) == 64
    # values, first derivatives, and for the block its double backward
    names = set(v.details)
    if family == "block":
        assert {"y", "d/dx", "d/dweight", "d/dbias", "dd/dgrad_y", "dd/dx", "dd/dweight"} <= names
    elif family == "traj_loss":
        assert {"loss", "d/dstudent", "d/dtarget", "d/dstart"} <= names
    else:
        assert any(n.endswith("d/dx") for n in names) and any(n.endswith("dsa_pack") for n in names)


@needs_ext
def test_the_comparison_fails_a_kernel_that_is_off_by_more_than_the_tolerance(fresh, monkeypatch):
    real = verify._CHECKS["block"]

    def off_by(eps):
        def check(device, dtype, gen):
            triples = real(device, dtype, gen)
            name, got, want = triples[1]
            triples[1] = (name, got + eps * want.abs().max(), want)  # d/dx off by eps (relative)
            return triples
        return check

    monkeypatch.setitem(verify._CHECKS, "block", off_by(1e-3))
    v = verify.run_check("block", "cpu", torch.float32)
    assert not v.passed and v.worst == "d/dx" and 1e-3 * 0.99 < v.max_rel_err < 1e-3 * 1.01
    assert "block" in v.line() and "cpu" in v.line() and "d/dx" in v.line()
    monkeypatch.setitem(verify._CHECKS, "block", off_by(1e-6))
    assert verify.run_check("block", "cpu", torch.float32).passed
    assert not verify.run_check("block", "cpu", torch.float64).passed  # 1e-6 > float64's 1e-10

    def raises(device, dtype, gen):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setitem(verify._CHECKS, "block", raises)
    v = verify.run_check("block", "cpu", torch.float32)
    assert not v.passed and "no kernel image" in v.error and v.max_abs_err == float("inf")
    json.dumps(v.to_json())  # inf is stored as a string, so the verdict stays valid JSON


@needs_ext
def test_the_check_leaves_the_global_rng_alone(fresh):
    state = torch.get_rng_state()
    for family in verify.FAMILIES:
        verify.run_check(family, "cpu", torch.float32)
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown op family 'conv'"):
        verify.run_check("conv", "cpu", torch.float32)


# --------------------------------------------------------------------------------------
# the gate through the real callers
# --------------------------------------------------------------------------------------
@needs_ext
def test_auto_verifies_once_per_process_and_uses_the_fused_ops(fresh, count_checks):
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert uses_fused(x, "auto") and uses_fused(x, "auto")
        net = ConvNet(3, 2, 8, width=4, depth=2, block_impl="auto")
        assert net.use_fused(x)
        net(x)
        a, b, c = torch.randn(5), torch.randn(5), torch.randn(5)
        loss = trajectory_loss(a.requires_grad_(), b, c)
        assert type(loss.grad_fn).__name__ != type(reference.traj_loss(a, b, c).grad_fn).__name__
    assert verification_warnings(record) == []
    assert sorted(f for f, _, _ in count_checks) == ["block", "dsa", "traj_loss"]  # once each
    assert {f.name.split("-")[0] for f in fresh.glob("*.json")} == {"block", "dsa", "traj_loss"}


@needs_ext
def test_forced_failure_auto_takes_the_reference_and_warns_once(fresh, monkeypatch, count_checks):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "dsa,block,traj_loss")
    x = torch.randn(2, 3, 8, 8)
    p = sample_params(DSAConfig(), x.shape, torch.Generator().manual_seed(0))
    net = ConvNet(3, 2, 8, width=4, depth=2, block_impl="auto")
    a, b, c = (torch.randn(6, generator=torch.Generator().manual_seed(k)) for k in range(3))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # DSA: mtt_fast.augment's auto resolution
        assert not uses_fused(x, "auto") and not uses_fused(x, "auto")
        assert torch.equal(apply(x, p, impl="auto"), apply_reference(x, p))
        # the block: the ConvNet's block_impl and convblock's own auto
        assert not net.use_fused(x)
        net(x)
        w, bias = torch.ones(3), torch.zeros(3)
        assert torch.equal(block_op.convblock(x, w, bias, impl="auto"), reference.convblock(x, w, bias))
        # the trajectory loss: the reference's graph
        loss = trajectory_loss(a.requires_grad_(), b, c)
        assert type(loss.grad_fn).__name__ == type(reference.traj_loss(a, b, c).grad_fn).__name__
    msgs = verification_warnings(record)
    assert len(msgs) == 3, msgs  # exactly one per family
    for family, msg in zip(("dsa", "block", "traj_loss"), msgs):
        assert f"compiled {family} op failed its parity check" in msg and "on cpu" in msg
        assert "max rel err" in msg and "float32" in msg and "\n" not in msg
    assert sorted(f for f, _, _ in count_checks) == ["block", "dsa", "traj_loss"]
    for family in ("dsa", "block", "traj_loss"):
        (f,) = cached_files(fresh, family)
        d = json.loads(f.read_text())
        assert d["verdict"]["passed"] is False and d["verdict"]["forced"] is True
        assert d["key"]["build_hash"] == verify.build_hash() and d["key"]["torch_version"] == torch.__version__


@needs_ext
def test_forcing_one_family_leaves_the_others_fused(fresh, monkeypatch):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "block")
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(verify.VerificationWarning, match="block"):
        assert not ConvNet(3, 2, 8, width=4, depth=2).use_fused(x)
    assert uses_fused(x, "auto")


@needs_ext
def test_explicit_fused_still_runs_and_warns_with_a_cached_failing_verdict(fresh, monkeypatch, count_checks):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "dsa")
    x = torch.randn(2, 3, 8, 8)
    p = sample_params(DSAConfig(), x.shape, torch.Generator().manual_seed(0))
    # no verdict yet: fused runs, no check, no warning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        apply(x, p, impl="fused")
    assert verification_warnings(record) == [] and count_checks == []
    with pytest.warns(verify.VerificationWarning):
        assert not uses_fused(x, "auto")
    verify.reset()  # a new process: the failing verdict is on disk only
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert uses_fused(x, "fused")
        y = apply(x, p, impl="fused")
        apply(x, p, impl="fused")
    msgs = verification_warnings(record)
    assert len(msgs) == 1 and "compiled dsa op failed" in msgs[0]
    assert len(count_checks) == 1  # the explicit fused runs never ran a check
    from mtt_fast.augment.fused import apply_fused

    assert torch.equal(y, apply_fused(x, p))  # the fused op ran, as asked


@needs_ext
def test_fused_selected_is_the_one_gate(fresh, monkeypatch):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "traj_loss")
    assert fused_selected("reference", "traj_loss", "cpu", torch.float32, True) is False
    assert fused_selected("auto", "traj_loss", "cpu", torch.float32, False) is False  # unavailable: no check
    with pytest.warns(verify.VerificationWarning):
        assert fused_selected("auto", "traj_loss", "cpu", torch.float32, True) is False
    assert fused_selected("fused", "traj_loss", "cpu", torch.float32, True) is True
    with pytest.warns(verify.VerificationWarning, match="float64"):  # per dtype
        assert fused_selected("auto", "traj_loss", "cpu", torch.float64, True) is False


# --------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------
@needs_ext
def test_a_cached_verdict_is_reused_until_build_torch_or_device_change(fresh, monkeypatch, count_checks):
    assert verify.verified("block", "cpu", torch.float32)
    assert len(count_checks) == 1 and len(cached_files(fresh, "block")) == 1
    verify.reset()  # a new process: read from disk, no check
    assert verify.verified("block", "cpu", torch.float32)
    assert len(count_checks) == 1
    verify.reset()
    monkeypatch.setattr(torch, "__version__", "9.9.9+other")
    assert verify.verified("block", "cpu", torch.float32)
    assert len(count_checks) == 2 and len(cached_files(fresh, "block")) == 2
    verify.reset()
    monkeypatch.setattr(verify, "build_hash", lambda: "0" * 64)
    assert verify.verified("block", "cpu", torch.float32)
    assert len(count_checks) == 3
    verify.reset()
    monkeypatch.setattr(verify, "device_name", lambda device: "cpu another-model")
    assert verify.verified("block", "cpu", torch.float32)
    assert len(count_checks) == 4
    verify.reset()
    assert verify.verified("block", "cpu", torch.float64)  # dtype is part of the key too
    assert len(count_checks) == 5 and len(cached_files(fresh, "block")) == 5


@needs_ext
def test_a_tampered_key_is_not_trusted(fresh, count_checks):
    verify.verified("traj_loss", "cpu", torch.float32)
    (f,) = cached_files(fresh, "traj_loss")
    d = json.loads(f.read_text())
    d["key"]["build_hash"] = "f" * 64
    f.write_text(json.dumps(d))
    verify.reset()
    verify.verified("traj_loss", "cpu", torch.float32)
    assert len(count_checks) == 2


@needs_ext
def test_a_forced_verdict_is_trusted_only_while_forcing(fresh, monkeypatch, count_checks):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "all")
    with pytest.warns(verify.VerificationWarning):
        assert not verify.verified("dsa", "cpu", torch.float32)
    monkeypatch.delenv(verify.FORCE_FAIL_ENV)
    verify.reset()
    assert verify.verified("dsa", "cpu", torch.float32)  # checked again, passes, replaces it
    assert len(count_checks) == 2
    (f,) = cached_files(fresh, "dsa")
    assert json.loads(f.read_text())["verdict"]["passed"] is True


@needs_ext
def test_an_unwritable_cache_dir_verifies_once_per_process(monkeypatch, tmp_path, count_checks):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MTT_FAST_CACHE", str(blocker / "cache"))  # mkdir fails (NotADirectoryError)
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "dsa")
    verify.reset()
    try:
        x = torch.randn(2, 3, 8, 8)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert uses_fused(x, "auto") is False
            assert uses_fused(x, "auto") is False
            assert verify.verified("traj_loss", "cpu", torch.float32)
            assert verify.verified("traj_loss", "cpu", torch.float32)
        assert len(verification_warnings(record)) == 1
        assert sorted(f for f, _, _ in count_checks) == ["dsa", "traj_loss"]
        assert verify.cached_verdicts() == []
    finally:
        verify.reset()


@needs_ext
def test_info_lines_list_the_cached_verdicts(fresh, monkeypatch):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "dsa")
    verify.verified("traj_loss", "cpu", torch.float64)
    with pytest.warns(verify.VerificationWarning):
        verify.verified("dsa", "cpu", torch.float32)
    rows = verify.cached_verdicts()
    assert [(r["family"], r["dtype"], r["passed"], r["current"]) for r in rows] == [
        ("traj_loss", "float64", True, True), ("dsa", "float32", False, True)]
    lines = verify.format_cached(rows)
    assert len(lines) == 2
    assert "traj_loss" in lines[0] and "float64" in lines[0] and "pass" in lines[0]
    assert "dsa" in lines[1] and "FAIL" in lines[1] and "(forced)" in lines[1]
    assert rows[0]["when"][:4].isdigit() and rows[0]["when"] in lines[0]
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert "(other build or torch)" in verify.format_cached()[0]


# --------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", verify.FAMILIES)
def test_parity_check_passes_on_cuda(family, dtype, fresh):
    v = verify.run_check(family, "cuda", dtype)
    assert v.passed, v.line()
    assert v.device.startswith("cuda:") and v.device_name == torch.cuda.get_device_name(v.device)


@needs_cuda_kernel
def test_auto_on_cuda_verifies_and_caches(fresh, count_checks):
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert uses_fused(x, "auto")
    assert ConvNet(3, 2, 8, width=4, depth=2).cuda().use_fused(x)
    assert sorted(f for f, _, _ in count_checks) == ["block", "dsa"]
    assert all(r["device_name"] == torch.cuda.get_device_name() for r in verify.cached_verdicts())


@needs_ext
@pytest.mark.parametrize("forced", [False, True])
def test_torch_compile_traces_through_the_gate(fresh, monkeypatch, count_checks, forced):
    """The first auto call inside a compiled function: the check runs at trace time, once."""
    if forced:
        monkeypatch.setenv(verify.FORCE_FAIL_ENV, "traj_loss")
    a, b, c = (torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(3))
    a.requires_grad_(True)

    def f(a, b, c):
        return trajectory_loss(a, b, c) * 2

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = torch.compile(f, backend="aot_eager", fullgraph=True)(a, b, c)
    torch.testing.assert_close(got, 2 * reference.traj_loss(a, b, c))
    assert count_checks == [("traj_loss", "cpu", torch.float64)]
    assert len(verification_warnings(record)) == (1 if forced else 0)
    assert verify.verified("traj_loss", "cpu", torch.float64) is (not forced)
