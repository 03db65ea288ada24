"""The commands under ``torchrun`` (gloo, CPU processes) against the same command in one process.

* buffer: the expert shards and meta.json are the same bytes;
* distill (adjoint with the fused ops, full with the reference ops; world size 3 with a set that
  does not split evenly): the synset equals one process's to float32 rounding (1e-5);
* eval: the same results table; sweep: the same points, each finished once;
* a killed torchrun run resumes in one process, and ``--max-restarts 1`` survives a kill -9
  of one rank, both to one process's result;
* ENOSPC on one rank's write: every rank exits nonzero within seconds, with the one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.conftest import run

ROOT = Path(__file__).resolve().parents[2]
FAULTY = Path(__file__).with_name("_faulty_main.py")
TIMEOUT = 300


@pytest.fixture(autouse=True)
def one_thread():
    """The in-process one-process runs use one thread, as every rank does (the thread count
    changes the bits of torch's CPU convolutions)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _torchrun_cmd(nproc: int, *args, restarts: int = 0, script: Path | None = None) -> list[str]:
    target = [str(script)] if script else ["-m", "mtt_fast"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--max-restarts", str(restarts), "--monitor-interval", "0.2", *target, *[str(a) for a in args]]


def torchrun(nproc: int, *args, ok: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(_torchrun_cmd(nproc, *args, **kw), env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                       check=False)
    if ok:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _distill(store, out, *extra) -> list:
    return ["distill", "--buffer", store, "--method", "mtt", "--ipc", "2", "--syn-steps", "3", "--iterations", "4",
            "--eval-it", "2", "--eval-epochs", "2", "--max-start-epoch", "2", "--expert-epochs", "1",
            "--checkpoint-it", "2", "--lr-img", "100", "--lr-lr", "1e-7", "--seed", "3", "--no-progress", *extra,
            "--out", out]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_synsets_close(got: Path, want: Path, tol: float = 1e-5) -> None:
    for sub in ("synset_last", "synset"):
        a, b = load_file(got / sub / "synset.safetensors"), load_file(want / sub / "synset.safetensors")
        assert a.keys() == b.keys()
        assert torch.equal(a["labels"], b["labels"])
        for k in a:
            if a[k].is_floating_point():
                assert _rel(a[k], b[k]) <= tol, (sub, k, _rel(a[k], b[k]))


def _scores(results: Path) -> dict:
    r = json.loads(results.read_text())
    return {arch: [run_["accuracy"] for run_ in v["runs"]] for arch, v in r["results"].items()}


def test_buffer_distill_eval_sweep_under_torchrun_equal_one_process(tmp_path, crc_root, store):
    cache = tmp_path / "cache"
    buf = ["buffer", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", cache, "--res", "16", "--arch",
           "convnet", "--width", "8", "--depth", "2", "--batch-size", "8", "--num-experts", "3", "--epochs", "2",
           "--seed", "5", "--no-progress", "--out"]
    run(*buf, tmp_path / "b1")
    torchrun(2, *buf, tmp_path / "b2")
    for f in sorted((tmp_path / "b1").glob("expert_*.safetensors")) + [tmp_path / "b1" / "meta.json"]:
        assert f.read_bytes() == (tmp_path / "b2" / f.name).read_bytes(), f.name

    run(*_distill(store, tmp_path / "d1"))
    torchrun(2, *_distill(store, tmp_path / "d2"))
    assert_synsets_close(tmp_path / "d2", tmp_path / "d1")
    assert (tmp_path / "d2" / "COMPLETE").is_file() and (tmp_path / "d2" / "checkpoint.safetensors").is_file()

    ref = ["--engine", "full", "--dsa-impl", "reference"]
    run(*_distill(store, tmp_path / "f1", *ref))
    torchrun(2, *_distill(store, tmp_path / "f2", *ref))
    assert_synsets_close(tmp_path / "f2", tmp_path / "f1")
    # 2 classes x ipc 2 = 4 images over 3 ranks: 2 + 1 + 1
    torchrun(3, *_distill(store, tmp_path / "d3"))
    assert_synsets_close(tmp_path / "d3", tmp_path / "d1")

    ev = ["eval", "--synset", tmp_path / "d1", "--archs", "convnet,alexnet", "--repeats", "2", "--epochs", "2",
          "--no-progress", "--out"]
    run(*ev, tmp_path / "e1")
    torchrun(2, *ev, tmp_path / "e2")
    assert _scores(tmp_path / "e2" / "results.json") == _scores(tmp_path / "e1" / "results.json")
    assert (tmp_path / "e2" / "results.md").read_text() == (tmp_path / "e1" / "results.md").read_text()
    # rank 0 kept every rank's networks, as one process does
    assert sorted(f.name for f in (tmp_path / "e2" / "networks").iterdir()) == \
        sorted(f.name for f in (tmp_path / "e1" / "networks").iterdir())

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base:\n  buffer: {store}\n  method: mtt\n  ipc: 1\n  syn_steps: 2\n  iterations: 2\n"
                    f"  eval_it: 2\n  eval_epochs: 2\n  max_start_epoch: 2\n  expert_epochs: 1\n"
                    f"grid:\n  lr_img: [10, 100, 1000]\n")
    p = torchrun(2, "sweep", grid, "--out", tmp_path / "sw", "--no-progress")
    summary = json.loads((tmp_path / "sw" / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["complete"] * 3, p.stdout
    assert (tmp_path / "sw" / "COMPLETE").is_file()
    run("distill", *_sweep_point(store), "--lr-img", "1000", "--out", tmp_path / "pt")
    assert_synsets_close(tmp_path / "sw" / "lr_img-1000", tmp_path / "pt", tol=0)


def _sweep_point(store) -> list:
    return ["--buffer", store, "--method", "mtt", "--ipc", "1", "--syn-steps", "2", "--iterations", "2",
            "--eval-it", "2", "--eval-epochs", "2", "--max-start-epoch", "2", "--expert-epochs", "1", "--no-progress"]


def _long(store, out) -> list:
    """A run long enough to kill between its checkpoints (one every 2 of 16 iterations)."""
    return ["distill", "--buffer", store, "--method", "mtt", "--ipc", "2", "--syn-steps", "12", "--iterations", "16",
            "--eval-it", "8", "--eval-epochs", "2", "--max-start-epoch", "2", "--expert-epochs", "1",
            "--checkpoint-it", "2", "--lr-img", "100", "--lr-lr", "1e-7", "--seed", "4", "--no-progress", "--out", out]


def _iterations_done(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except OSError:
        return 0


def _wait(cond, proc: subprocess.Popen, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"ended before {what}: {proc.stdout.read()[-3000:] if proc.stdout else ''}"
        assert time.monotonic() - t0 < TIMEOUT, f"timed out waiting for {what}"
        time.sleep(0.05)


def _workers(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes (children of its agent ``parent``)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(d.name)
    return out


def _wait_dead(pid: int) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)


def _wait_lock_free(lock: Path) -> None:
    """Until the run's lock can be taken (the kernel releases a killed owner's flock once its files
    are closed, which on a loaded machine can lag the kill)."""
    import fcntl

    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except BlockingIOError:
            time.sleep(0.1)
        finally:
            os.close(fd)
    raise AssertionError(f"{lock} is still held a minute after every rank was killed")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(*_long(store, out))
    finally:
        torch.set_num_threads(before)
    return out


def test_killed_run_resumes_on_another_world_size(tmp_path, store, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun_cmd(2, *_long(store, out)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait(lambda: _iterations_done(out) >= 5 and (out / "checkpoint.safetensors").is_file()
              and len(_workers(proc.pid)) == 2, proc, "a checkpoint")
    finally:
        ranks = list(_workers(proc.pid).values())
        for pid in [*ranks, proc.pid]:  # both ranks and torchrun, at once
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    for pid in ranks:  # a killed rank holds the run's lock until it has finished dying
        _wait_dead(pid)
    _wait_lock_free(out.parent / f".{out.name}.lock")
    assert not (out / "COMPLETE").exists()
    res = run(*_long(store, out))  # one process picks it up
    assert "resuming from iteration" in res.output
    assert_synsets_close(out, uninterrupted)


def _long_eval(synset, out) -> list:
    """An evaluation long enough to kill between its networks (8 of them: 4 rounds over 2 ranks)."""
    return ["eval", "--synset", synset, "--archs", "convnet", "--repeats", "8", "--epochs", "60", "--seed", "2",
            "--no-progress", "--out", out]


def test_killed_eval_resumes_from_the_networks_every_rank_trained(tmp_path, store):
    """Under torchrun the main rank keeps each round's networks, whichever rank trained them: a run
    killed after a round resumes (here in one process) without training those again, to the
    numbers of an uninterrupted run."""
    syn = tmp_path / "syn"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress", "--out", syn)
    run(*_long_eval(syn, tmp_path / "e1"))
    out = tmp_path / "e2"
    proc = subprocess.Popen(_torchrun_cmd(2, *_long_eval(syn, out)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    nets = out / "networks"
    try:
        _wait(lambda: nets.is_dir() and len(list(nets.glob("*.json"))) >= 2 and len(_workers(proc.pid)) == 2,
              proc, "a round of networks")
    finally:
        ranks = list(_workers(proc.pid).values())
        for pid in [*ranks, proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    for pid in ranks:
        _wait_dead(pid)
    _wait_lock_free(out.parent / f".{out.name}.lock")
    kept = len(list(nets.glob("*.json")))
    assert not (out / "results.json").exists() and 2 <= kept < 8, kept
    assert {"report-convnet-lr0.01-r0.json", "report-convnet-lr0.01-r1.json"} <= {f.name for f in nets.iterdir()}
    res = run(*_long_eval(syn, out))
    assert f"resuming: {kept} networks already trained" in res.output
    assert _scores(out / "results.json") == _scores(tmp_path / "e1" / "results.json")


def test_kill_one_rank_with_max_restarts(tmp_path, store, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun_cmd(2, *_long(store, out), restarts=1), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait(lambda: _iterations_done(out) >= 5 and len(_workers(proc.pid)) == 2, proc, "a checkpoint")
        os.kill(_workers(proc.pid)[1], signal.SIGKILL)
        rc = proc.wait(timeout=TIMEOUT)
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 0, log[-3000:]
    assert "resuming from iteration" in log
    assert (out / "COMPLETE").is_file()
    assert_synsets_close(out, uninterrupted)


def test_a_user_error_on_one_rank_ends_every_rank(tmp_path, crc_root):
    args = ["buffer", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", tmp_path / "cache", "--res", "16",
            "--arch", "convnet", "--width", "8", "--depth", "2", "--batch-size", "8", "--num-experts", "2",
            "--epochs", "1", "--no-progress", "--out", tmp_path / "b"]
    t0 = time.monotonic()
    p = subprocess.run(_torchrun_cmd(2, *args, script=FAULTY), env=_env(MTT_FAST_TEST_ENOSPC_RANK="1"),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    took = time.monotonic() - t0
    out = p.stdout + p.stderr
    assert p.returncode != 0
    line = f"error: {tmp_path / 'b' / 'expert_001.safetensors'}: No space left on device"
    assert out.count(line) == 1, out[-3000:]
    assert "exitcode  : 2" in out  # the failing rank's status, as torchrun reports it
    assert took < 120, took
    assert not (tmp_path / "b" / "COMPLETE").exists()
    assert not (tmp_path / "b" / "expert_001.safetensors").exists()


def test_dd_and_glad_under_torchrun_equal_one_process(tmp_path, store):
    dd = ["--method", "dd", "--ipc", "1", "--dd-models", "2", "--batch-real", "8", "--lr-lr", "1e-4"]
    glad = ["--method", "glad", "--ipc", "2", "--generator", "tests.fixtures.generators:crc16", "--space", "wp",
            "--layer", "0", "--g-batch", "3"]
    for name, extra in (("dd", dd), ("glad", glad)):
        args = ["distill", "--buffer", store, "--syn-steps", "3", "--iterations", "4", "--eval-it", "2",
                "--eval-epochs", "2", "--max-start-epoch", "2", "--expert-epochs", "1", "--checkpoint-it", "2",
                "--seed", "3", "--no-progress", *extra]
        run(*args, "--out", tmp_path / f"{name}1")
        torchrun(2, *args, "--out", tmp_path / f"{name}2")
        assert_synsets_close(tmp_path / f"{name}2", tmp_path / f"{name}1")
        if name == "glad":
            a, b = (load_file(tmp_path / f"glad{k}" / "synset" / "latents.safetensors") for k in (2, 1))
            for k in b:
                assert _rel(a[k], b[k]) < 1e-5, k
