"""``gan train`` under torchrun (gloo, CPU processes): DistributedDataParallel on G and D, one writer.

* one DDP step equals one process's step on the whole batch (D's and G's gradients with R1 due,
  w_avg, ADA's statistic, G_ema) up to float32 rounding, with a batch that does not split evenly;
  a checkpoint read by rank 0 restores the same state on every rank;
* two ranks: every file written once by rank 0, ADA's p logged, the same seed twice gives the same bits;
* a run killed after a checkpoint (every rank and torchrun) is finished by one process;
* one rank under torchrun is one process, bit for bit.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from mtt_fast.io import read_jsonl
from tests.cli.conftest import run
from tests.distributed.test_torchrun import (
    TIMEOUT,
    _env,
    _torchrun_cmd,
    _wait,
    _wait_dead,
    _workers,
    torchrun,
)

GRADS = Path(__file__).with_name("_gan_grads.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process runs pass --num-threads 1 (torch's global setting): restored after the module."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One decoded copy of the dataset for the module's runs."""
    return tmp_path_factory.mktemp("cache")


def _gan(crc_root, cache, out, *extra, steps: int = 6) -> list:
    return ["gan", "train", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", cache, "--res", "16",
            "--steps", str(steps), "--batch-size", "5", "--z-dim", "8", "--w-dim", "16", "--channel-base", "64",
            "--channel-max", "8", "--r1-interval", "2", "--checkpoint-every", "2", "--quality-every", "4",
            "--sample-every", "4", "--quality-samples", "2", "--classifier-epochs", "1", "--log-every", "2",
            "--ada-kimg", "0.02", "--ada-interval", "2", "--ada-target", "0.55", "--seed", "3", "--num-threads", "1", "--no-progress",
            *extra, "--out", out]


def test_one_ddp_step_equals_one_process(tmp_path, crc_root, cache):
    p = subprocess.run(_torchrun_cmd(2, crc_root, cache, tmp_path, script=GRADS), env=_env(),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("max-rel ") == 7, p.stdout  # D, G, G_ema, w_avg, w_count, ada_signs, r1
    assert "resumed-equal [True, True]" in p.stdout, p.stdout


def test_two_ranks_write_once_and_repeat_bits(tmp_path, crc_root, cache):
    a, b = tmp_path / "a", tmp_path / "b"
    p = torchrun(2, *_gan(crc_root, cache, a))
    out = p.stdout + p.stderr
    assert out.count("class-consistency classifier (trained)") == 1, out[-3000:]
    assert out.count(f"generator {a / 'generator.json'} (step 6)") == 1, out[-3000:]
    names = {f.name for f in a.iterdir()}
    assert names == {"COMPLETE", "config.yaml", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json",
                     "classifier.safetensors", "classifier.json", "samples_000004.png", "samples_000006.png",
                     *(f"{g}{ext}" for g in ("generator", "generator_best")
                       for ext in (".safetensors", ".json", ".w_avg.safetensors"))}, names
    recs = read_jsonl(a / "metrics.jsonl")
    assert [r["step"] for r in recs] == [2, 4, 6]  # one writer: each record once
    assert [r["step"] for r in recs if "class_consistency" in r] == [4, 6]
    # ADA adjusted p after every record's two steps (5 * 2 / (0.02 * 1000) = 0.5 at a time) from
    # the sign statistic of both ranks' real logits (that it is summed over ranks: the step test)
    p = 0.0
    for r in recs:
        assert math.isfinite(r["ada_rt"]) and r["ada_rt"] != 0.55, r
        p = min(max(p + math.copysign(0.5, r["ada_rt"] - 0.55), 0.0), 1.0)
        assert r["augment_p"] == p, (r, p)
    torchrun(2, *_gan(crc_root, cache, b))
    for name in ("generator.safetensors", "generator.w_avg.safetensors", "checkpoint.safetensors", "metrics.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_killed_two_rank_run_is_finished_by_one_process(tmp_path, crc_root, cache):
    out = tmp_path / "run"
    # a checkpoint every 2 steps; quality and samples only at the end (the 2-rank run lasts a few seconds)
    args = _gan(crc_root, cache, out, "--quality-every", "40", "--sample-every", "40", steps=40)
    proc = subprocess.Popen(_torchrun_cmd(2, *args), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait(lambda: (out / "checkpoint.json").is_file() and len(_workers(proc.pid)) == 2, proc, "a checkpoint")
    finally:
        ranks = list(_workers(proc.pid).values())
        for pid in [*ranks, proc.pid]:  # both ranks and torchrun, at once
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    for pid in ranks:
        _wait_dead(pid)
    assert not (out / "COMPLETE").exists()
    res = run(*args)  # one process picks it up
    assert "resuming from" in res.output, res.output
    assert (out / "COMPLETE").is_file()
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(2, 41, 2)), steps


def test_one_rank_under_torchrun_is_one_process(tmp_path, crc_root, cache):
    run(*_gan(crc_root, cache, tmp_path / "solo", steps=4))
    torchrun(1, *_gan(crc_root, cache, tmp_path / "tr1", steps=4))
    for name in ("generator.safetensors", "generator.w_avg.safetensors", "checkpoint.safetensors", "metrics.jsonl"):
        assert (tmp_path / "solo" / name).read_bytes() == (tmp_path / "tr1" / name).read_bytes(), name
