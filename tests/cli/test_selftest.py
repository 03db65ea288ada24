"""``mtt-fast selftest``: the parity checks as a table, --json, exit status 2 on a failure."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from mtt_fast.cli.main import main

from mtt_fast.ops import _load, extension_loaded, verify

needs_ext = pytest.mark.skipif(not extension_loaded(), reason=f"mtt_fast._C did not load ({_load.LOAD_ERROR})")


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(verify.FORCE_FAIL_ENV, raising=False)
    verify.reset()
    yield
    verify.reset()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def table_rows(output: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in verify.FAMILIES and len(cells) >= 7 and cells[1].startswith("float"):
            rows[(cells[0], cells[1])] = cells
    return rows


@needs_ext
def test_selftest_prints_a_passing_table_and_writes_json(tmp_path):
    out = tmp_path / "selftest.json"
    r = run("selftest", "--device", "cpu", "--json", out)
    assert r.exit_code == 0, r.output
    assert "family" in r.output and "max abs err" in r.output and "max rel err" in r.output
    rows = table_rows(r.output)
    assert set(rows) == {(f, d) for f in verify.FAMILIES for d in ("float32", "float64")}
    for cells in rows.values():
        assert cells[2] == "cpu" and cells[5] == "pass"
        assert float(cells[4]) <= 1e-4
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["failed"] == []
    assert report["torch_version"] == torch.__version__ and report["device"] == "cpu"
    assert report["build_hash"] == verify.build_hash() and report["device_name"] == verify.device_name("cpu")
    assert "git_commit" in report and report["bench"] == []
    assert len(report["results"]) == 6 and all(x["verdict"] == "pass" for x in report["results"])
    # the verdicts are refreshed in the cache, and `info` lists them
    assert len(verify.cached_verdicts()) == 6
    info = run("info")
    assert info.exit_code == 0
    assert sum(1 for line in info.output.splitlines() if line.strip().split(" ")[0] in verify.FAMILIES) == 6


@needs_ext
def test_selftest_ignores_a_cached_verdict(monkeypatch):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "block")
    with pytest.warns(verify.VerificationWarning):
        assert not verify.verified("block", "cpu", torch.float32)  # a failing verdict cached
    monkeypatch.delenv(verify.FORCE_FAIL_ENV)
    verify.reset()
    r = run("selftest", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert table_rows(r.output)[("block", "float32")][5] == "pass"
    assert all(x["passed"] for x in verify.cached_verdicts())  # refreshed


@needs_ext
def test_selftest_exits_2_naming_the_failing_families(tmp_path, monkeypatch):
    monkeypatch.setenv(verify.FORCE_FAIL_ENV, "dsa,block")
    out = tmp_path / "st.json"
    r = run("selftest", "--device", "cpu", "--json", out)
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "block, dsa" in errors[0] and "traj_loss" not in errors[0]
    rows = table_rows(r.output)
    assert rows[("traj_loss", "float32")][5] == "pass"
    assert rows[("dsa", "float64")][5] == "FAIL" and rows[("block", "float32")][5] == "FAIL"
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["failed"] == ["block", "dsa"]
    assert "VerificationWarning" not in r.output


@needs_ext
def test_selftest_bench(monkeypatch):
    # the timings themselves are not asserted (tests never assert on time); a smaller case
    from mtt_fast import selftest

    monkeypatch.setattr(selftest, "_time_ms", lambda fn, device, reps, budget_s=3.0: (fn(), 1.0)[1])
    r = run("selftest", "--device", "cpu", "--bench")
    assert r.exit_code == 0, r.output
    assert "fused ms" in r.output and "reference ms" in r.output
    assert sum(1 for line in r.output.splitlines() if "forward+backward" in line) == 3


def test_selftest_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = run("selftest", "--device", "cuda")
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "no CUDA GPU" in r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_selftest_on_cuda(tmp_path):
    out = tmp_path / "cuda.json"
    r = run("selftest", "--device", "cuda", "--json", out)
    report = json.loads(out.read_text())
    assert report["device"].startswith("cuda") and report["device_name"] == torch.cuda.get_device_name()
    assert r.exit_code == (0 if report["passed"] else 2), r.output
    assert report["passed"], r.output
