"""The other distillation methods through the CLI: DD, and GLaD with a generator."""

from __future__ import annotations

import json

import torch

from mtt_fast.experts import TrajectoryStore
from mtt_fast.synth import Synset

from tests.cli.conftest import run


def test_dd_through_the_cli(store, tmp_path):
    out = tmp_path / "dd"
    run("distill", "--buffer", store, "--method", "dd", "--ipc", "1", "--syn-steps", "2", "--iterations", "4",
        "--eval-it", "2", "--eval-epochs", "2", "--dd-models", "2", "--batch-real", "8", "--checkpoint-it", "2",
        "--no-progress", "--out", out)
    s = Synset.load(out)
    assert s.meta["method"] == "dd" and s.images.shape[0] == 2
    cfg = s.meta["distill"]
    assert cfg["lr_img"] == 0.01 and cfg["lr_lr"] == 1e-4  # the DD defaults, not MTT's
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [0, 1, 2, 3]
    last = Synset.load(out / "synset_last")
    assert last.syn_lr != TrajectoryStore.open(store).expert_lr  # the step size is learned
    assert not torch.equal(last.images, Synset.load(out / "synset").images) or s.meta["iteration"] == 4
    r = run("distill", "--buffer", store, "--method", "dd", "--ipc", "1", "--syn-steps", "2", "--iterations", "4",
            "--eval-it", "2", "--eval-epochs", "2", "--dd-models", "2", "--batch-real", "8", "--checkpoint-it", "2",
            "--no-progress", "--out", out)
    assert "nothing to do" in r.output
    run("eval", "--synset", out, "--repeats", "1", "--epochs", "2", "--no-progress", "--out", tmp_path / "ev")
    assert (tmp_path / "ev" / "results.json").is_file()
