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


def test_sweep_runs_every_point_resumes_and_ranks_by_validation(store, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base:\n  buffer: {store}\n  ipc: 1\n  syn-steps: 2\n  iterations: 2\n  eval_it: 2\n"
                    f"  eval_epochs: 2\n  max_start_epoch: 1\n  expert_epochs: 1\n"
                    f"grid:\n  lr_img: [10, 100]\npoints:\n  - {{lr_img: 10, lr_lr: 1.0e+30}}\n")
    out = tmp_path / "sweep"
    r = run("sweep", grid, "--out", out, "--no-progress", ok=False)
    assert r.exit_code == 2 and "1 of 3 points did not finish" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][-1]["point"].get("lr_lr") == 1e30  # the failed point sorts last
    assert summary["rows"][-1]["status"].startswith("failed")
    vals = [row["best_val"] for row in summary["rows"][:2]]
    assert vals == sorted(vals, reverse=True) and all(v is not None for v in vals)
    assert (out / "lr_img-10" / "COMPLETE").is_file() and (out / "lr_img-100" / "synset" / "grid.png").is_file()
    mtime = (out / "lr_img-10" / "summary.json").stat().st_mtime
    r = run("sweep", grid, "--out", out, "--no-progress", ok=False)  # finished points are skipped
    assert (out / "lr_img-10" / "summary.json").stat().st_mtime == mtime
    assert "nothing to do" in r.output


def test_sweep_bad_grid_is_one_clear_error(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\n  buffer: x\ngrid:\n  lr_imgg: [1, 2]\n")
    r = run("sweep", grid, "--out", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "unknown distill option 'lr_imgg'" in r.output
    grid.write_text("grid:\n  lr_img: 5\n")
    r = run("sweep", grid, "--out", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "must be a non-empty list" in r.output
