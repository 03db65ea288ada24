"""Same command, same seed, same thread count, same machine: the same bits, across processes.

``tests/test_pinned_outputs.py`` pins the hashes of one small run of every stage, in ONE process
with ONE thread. Users run each command in its own process with torch's default thread count,
so this test runs a tiny pipeline (buffer -> distill mtt -> eval, on the tiny CRC fixture)
twice, each command in a fresh ``python -m mtt_fast.cli.main`` subprocess with 2 CPU threads
(what a user gets on a 2-core machine) and Python's hash seed left random, and compares every
artifact: the expert shards, both synsets and the checkpoint (tensor hashes), the per-iteration
losses of ``metrics.jsonl`` and the evaluation's ``results.json`` (volatile fields -- seconds,
memory -- left out). The first run decodes the images into a fresh cache; the second reads
that cache back, so the test also covers "decoded now" against "read from the cache". The second
starts with ONE thread (``OMP_NUM_THREADS=1``) and gets its 2 from each command's ``--num-threads 2``,
so the test also covers that option.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.fixtures.datasets import make_crc
from tests.fixtures.hashing import tensors_hash

THREADS = 2
ROOT = Path(__file__).resolve().parents[1]
SEED = ["--seed", "3", "--no-progress"]


def _stable(obj):
    """``obj`` without the fields that measure the run rather than compute it (time, memory)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items()
                if not any(w in k for w in ("second", "time", "peak", "memory", "mib", "wall"))}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _json_hash(obj) -> str:
    return hashlib.sha256(json.dumps(_stable(obj), sort_keys=True).encode()).hexdigest()


# One process per pipeline run: the three commands through the CLI, as a user types them (the
# process's cost is mostly importing torch, so one per command would triple the test's time).
DRIVER = """
import json, sys, torch
from mtt_fast.cli.main import main
assert torch.get_num_threads() == int(sys.argv[2]), torch.get_num_threads()
for args in json.loads(sys.argv[1]):
    main(args, standalone_mode=False)
    assert torch.get_num_threads() == THREADS, (args[0], torch.get_num_threads())
""".replace("THREADS", str(THREADS))


def _run_process(commands: list[list], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("PYTHONHASHSEED", None)  # as users run it: a random hash seed per process
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmds = json.dumps([[str(a) for a in c] for c in commands])
    r = subprocess.run([sys.executable, "-c", DRIVER, cmds, str(threads)], check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"pipeline failed:\n{r.stdout}\n{r.stderr}"


def _pipeline(data: Path, cache: Path, out: Path, option: bool = False) -> dict[str, str]:
    """buffer -> distill mtt -> eval into ``out`` in one fresh process; the hash of every artifact, in
    stage order. ``option``: the process starts on one thread and each command says ``--num-threads``."""
    buf, mtt, ev = out / "buffer", out / "mtt", out / "eval"
    opt = ["--num-threads", str(THREADS)] if option else []
    _run_process([[*c, *opt] for c in [
        ["buffer", "--dataset", "crc", "--data-root", data, "--cache-dir", cache, "--res", "16", *SEED,
         "--arch", "convnet", "--width", "8", "--depth", "2", "--batch-size", "8", "--num-experts", "2",
         "--epochs", "3", "--out", buf],
        ["distill", "--buffer", buf, "--method", "mtt", "--ipc", "2", "--lr-img", "100", "--syn-steps", "3",
         "--iterations", "4", "--eval-it", "2", "--eval-epochs", "3", "--max-start-epoch", "2",
         "--expert-epochs", "1", "--checkpoint-it", "2", "--lr-lr", "1e-7", *SEED, "--out", mtt],
        ["eval", "--synset", mtt, "--repeats", "2", "--epochs", "3", "--no-progress", "--out", ev],
    ]], 1 if option else THREADS)
    got = {f"buffer/{p.name}": tensors_hash(p) for p in sorted(buf.glob("expert_*.safetensors"))}
    for f in ("synset/synset.safetensors", "synset_last/synset.safetensors", "checkpoint.safetensors"):
        if (mtt / f).is_file():
            got[f"mtt/{f}"] = tensors_hash(mtt / f)
    lines = [json.loads(s) for s in (mtt / "metrics.jsonl").read_text().splitlines() if s.strip()]
    got["mtt/metrics.jsonl"] = _json_hash(lines)
    got["eval/results.json"] = _json_hash(json.loads((ev / "results.json").read_text())["results"])
    return got


def test_two_processes_give_the_same_bits(tmp_path):
    data = make_crc(tmp_path / "crc", patients_per_class=4, tiles_per_patient=3, size=64, test_patients_per_class=2)
    cache = tmp_path / "cache"  # the first run builds it, the second reads it
    first = _pipeline(data, cache, tmp_path / "run1")
    second = _pipeline(data, cache, tmp_path / "run2", option=True)
    assert list(first) == list(second)
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, f"artifacts differ between two identical runs (first in stage order: {differ[0]}): {differ}"


def test_runtime_is_recorded_and_a_changed_one_is_named():
    from mtt_fast.runtime import differences, runtime

    now = runtime()
    assert now["threads"] == torch.get_num_threads() and now["torch"] == torch.__version__
    assert differences(now) is None and differences(None) is None
    assert differences({**now, "threads": now["threads"] + 1}) == (
        f"threads {now['threads'] + 1} then, {now['threads']} now (`--num-threads {now['threads'] + 1}` restores it)")
