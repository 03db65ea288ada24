"""Each bad input of issue 15 through the command line: exit status 2, ONE line naming the file or the
option, found before anything is written (``--out`` is not created) and before any real work."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from tests.cli.conftest import run
from tests.faults._harness import distill_args


def _truncate(store):
    f = store / "expert_001.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f.name


def _pickle(store):
    from safetensors.torch import load_file

    f = store / "expert_001.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(f)).items()}  # (copied out of the file's mmap first)
    torch.save(tensors, f)  # the same tensors, pickled
    return f.name


def _unlist(store):
    (store / "expert_001.safetensors").unlink()
    return "expert_001.safetensors"


#: id -> (damage to a copy of the store -> what the line must name, or extra options, what the line must name)
CASES = {
    "truncated-shard": (_truncate, [], None),
    "pickled-shard": (_pickle, [], None),
    "meta-lists-a-missing-shard": (_unlist, [], None),
    "lr-img-negative": (None, ["--lr-img", "-1000"], "--lr-img"),
    "lr-lr-negative": (None, ["--lr-lr", "-1"], "--lr-lr"),
    "lr-img-nan": (None, ["--lr-img", "nan"], "--lr-img"),
    "lr-teacher-nan": (None, ["--lr-teacher", "nan"], "--lr-teacher"),
    "batch-syn-negative": (None, ["--batch-syn", "-5"], "--batch-syn"),
    "config-value-of-wrong-type": (None, ["--config", "CONFIG"], "CONFIG"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_anything_is_written(case, store, tmp_path):
    damage, extra, needle = CASES[case]
    buffer = store
    if damage is not None:
        buffer = tmp_path / "store"
        shutil.copytree(store, buffer)
        needle = damage(buffer)
    if "CONFIG" in extra:
        cfg = tmp_path / "settings.yaml"
        cfg.write_text("ipc: two\n")
        extra = [str(cfg) if a == "CONFIG" else a for a in extra]
        needle = str(cfg)
    out = tmp_path / "out"
    t = time.monotonic()
    r = run(*distill_args(buffer, out, *extra), ok=False)
    took = time.monotonic() - t
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert line.count("\n") == 0 and line.startswith("error:") and "Traceback" not in line, r.output
    assert needle in line, line
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.iterdir())}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "a lock or a moved run beside --out"
    if case == "lr-teacher-nan":
        assert took < 1.0, f"--lr-teacher nan was refused only after {took:.2f} s"

