"""A resume on another runtime (thread count, torch, CPU kernels) says so in one warning line."""

from __future__ import annotations

import json

from safetensors import safe_open

from mtt_fast.io import load_tensors, save_tensors
from tests.cli.conftest import run

ARGS = ["--ipc", "1", "--syn-steps", "2", "--iterations", "4", "--eval-it", "4", "--eval-epochs", "2",
        "--max-start-epoch", "2", "--expert-epochs", "1", "--checkpoint-it", "1", "--no-progress"]


def test_resume_on_another_thread_count_warns(store, tmp_path, monkeypatch):
    from mtt_fast.distill.loop import Distiller

    out = tmp_path / "mtt"
    real_step = Distiller.step

    def dying_step(self):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Distiller, "step", dying_step)
    assert run("distill", "--buffer", store, *ARGS, "--out", out, ok=False).exit_code == 2
    monkeypatch.undo()
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["checkpoint"])
    assert info["runtime"]["threads"] >= 1 and info["iteration"] == 2
    info["runtime"]["threads"] += 7
    save_tensors(path, load_tensors(path), metadata={"checkpoint": json.dumps(info)})
    r = run("distill", "--buffer", store, *ARGS, "--out", out)
    warn = [x for x in r.output.splitlines() if x.startswith("warning: resuming")]
    assert len(warn) == 1 and f"threads {info['runtime']['threads']} then" in warn[0], r.output
    meta = json.loads((out / "synset" / "meta.json").read_text())
    assert meta["runtime"]["threads"] == info["runtime"]["threads"] - 7
