"""kill -9 at random points of buffer / distill (mtt, adjoint) / gan train / eval, then rerun the
same command: the result equals an uninterrupted run bit for bit.

Each case is one seeded chain: a kill very early (while the command loads its data, takes the
lock, writes config.yaml), then kills at random points of its progress (an expert shard, a
metrics line or checkpoint of a given iteration/step, plus a random few ms), each in the rerun of
the last, then a rerun to the end. Kill points are found by polling the files the command writes,
not by sleeping, so they land mid-run however slow the machine is.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.faults._harness import (
    assert_clean,
    assert_no_duplicates,
    assert_same_run,
    buffer_args,
    distill_args,
    eval_args,
    gan_args,
    iterations,
    jsonl,
    wait_until,
    written_since,
)


def _distill_progress(out, t0):
    m = out / "metrics.jsonl"
    return max((r["iteration"] for r in jsonl(m) if "loss" in r), default=-1) + 1 if written_since(m, t0) else 0


def _buffer_progress(out, t0):
    return len(list(out.glob("expert_*.safetensors")))  # a shard is never rewritten


def _eval_progress(out, t0):
    return len(list(out.glob("networks/*.json")))  # a trained network's file is never rewritten


def _gan_progress(out, t0):
    m = out / "metrics.jsonl"
    return max((r["step"] for r in jsonl(m)), default=0) if written_since(m, t0) else 0


#: name -> (command, progress(out, launch time ns): units done, the units after which a kill may come,
#: the most seconds to wait after that unit: about one unit's time, so that kills land inside units too).
#: gan: kills up to step 10 (the generator is now written before each checkpoint, so the last
#: step's window is safe too; test_write_faults.py's gan-tensors--1 case covers it).
COMMANDS = {
    "distill": (lambda f, out: distill_args(f["store"], out), _distill_progress, range(12), 0.05),
    "buffer": (lambda f, out: buffer_args(f["crc_root"], f["fault_cache"], out), _buffer_progress, range(3), 0.3),
    "gan": (lambda f, out: gan_args(f["crc_root"], f["fault_cache"], out), _gan_progress, range(10), 0.05),
    "eval": (lambda f, out: eval_args(f["fault_synset"], out), _eval_progress, range(7), 0.1),
}
CASES = [("distill", 0), ("distill", 1), ("buffer", 0), ("buffer", 1), ("gan", 0), ("gan", 1), ("eval", 0),
         ("eval", 1)]


@pytest.mark.parametrize(("name", "seed"), CASES, ids=[f"{n}-seed{s}" for n, s in CASES])
def test_kill_then_resume_equals_an_uninterrupted_run(name, seed, procs, request, tmp_path):
    args_of, progress, targets, jitter = COMMANDS[name]
    ref = request.getfixturevalue(f"{name}_ref")
    fixtures = {k: request.getfixturevalue(k) for k in ("store", "crc_root", "fault_cache")}
    if name == "eval":
        fixtures["fault_synset"] = request.getfixturevalue("fault_synset")
    out = tmp_path / name
    args = args_of(fixtures, out)
    rng = random.Random(f"{name}-{seed}")
    plan = [("early", rng.uniform(0.0, 0.4))]
    for target in sorted(rng.sample(targets, 2)):
        plan.append(("progress", target, rng.uniform(0.0, jitter)))
    log = []
    for step in plan:
        t0 = time.time_ns()
        p = procs.start(*args)
        if step[0] == "early":
            time.sleep(step[1])
        else:
            _, target, delay = step
            done = lambda t0=t0, target=target: progress(out, t0) > target
            wait_until(done, p, what=f"{name} progress {target}")
            time.sleep(delay)
        p.kill()
        log.append(f"{step} -> rc {p.poll()}, progress {progress(out, t0)}")
    final = procs.start(*args)
    rc = final.wait()
    assert rc == 0, f"the rerun after {log} failed:\n{final.output()}"
    try:
        assert_clean(out)
        assert_same_run(out, ref)
    except AssertionError as e:
        raise AssertionError(f"after the kills {log}: {e}") from None
    if name == "distill":
        m = out / "metrics.jsonl"
        assert_no_duplicates([r["iteration"] for r in jsonl(m) if "loss" in r], "step lines")
        assert_no_duplicates([r["iteration"] for r in jsonl(m) if "val" in r], "evaluation lines")
        assert [r["iteration"] for r in jsonl(m) if "loss" in r] == list(range(12))
        assert [r["iteration"] for r in jsonl(m) if "val" in r] == [0, 4, 8, 12]
    if name == "gan":
        assert_no_duplicates(iterations(out / "metrics.jsonl", "step"), "steps")
        assert [r["step"] for r in jsonl(out / "metrics.jsonl")] == list(range(1, 13))
