"""Issue 18's distill options through the command line on the tiny store: soft labels (learned and
as controls), the coreset methods, the start-epoch schedule, loss skipping, EMA images, the layer
mask, the memory budget, and kill/resume equality of the state they add."""

from __future__ import annotations

import json

import pytest
import torch

from mtt_fast.distill.soft import ExpertNetwork
from mtt_fast.experts import TrajectoryStore
from mtt_fast.io import load_tensors
from mtt_fast.synth import Synset
from tests.cli.conftest import run

BASE = ["--ipc", "1", "--syn-steps", "2", "--iterations", "4", "--eval-it", "2", "--eval-epochs", "2",
        "--max-start-epoch", "2", "--expert-epochs", "1", "--checkpoint-it", "1", "--lr-img", "100", "--no-progress"]


def _lines(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_soft_labels_are_initialised_from_the_expert_and_learned(store, tmp_path):
    out = tmp_path / "soft"
    run("distill", "--buffer", store, *BASE, "--soft-labels", "--lr-y", "5", "--out", out)
    last = Synset.load(out / "synset_last")
    k = len(last.meta["classes"])
    assert last.soft_labels is not None and last.soft_labels.shape == (len(last.labels), k)
    assert last.meta["distill"]["soft_labels"] is True and last.meta["distill"]["lr_y"] == 5.0
    assert last.meta["soft_label_source"] == {"expert": "expert 0 at epoch 3", "learned": True}
    ckpt = load_tensors(out / "checkpoint.safetensors")
    assert torch.equal(ckpt["soft_labels"], last.soft_labels) and "momentum_y" in ckpt
    # the same run with a vanishing lr_y keeps (about) the initial logits: lr_y 5 moved them
    still = tmp_path / "still"
    run("distill", "--buffer", store, *BASE, "--soft-labels", "--lr-y", "1e-12", "--out", still)
    init = Synset.load(still / "synset_last").soft_labels
    assert (last.soft_labels - init).abs().max() > 1e-3


def test_soft_label_init_uses_correctly_classified_images(store, tmp_path):
    out = tmp_path / "soft0"
    run("distill", "--buffer", store, *BASE[:6], "--iterations", "1", "--eval-it", "1", "--eval-epochs", "1",
        "--max-start-epoch", "2", "--expert-epochs", "1", "--soft-labels", "--lr-y", "1e-12", "--lr-img", "1e-12",
        "--lr-lr", "1e-12", "--no-progress", "--out", out)
    s = Synset.load(out / "synset_last")
    pred = s.soft_labels.argmax(1)
    # the tiny expert is right on most of its training images: every class found one it gets right
    assert torch.equal(pred, s.labels), (pred, s.labels)
    expert = ExpertNetwork(TrajectoryStore.open(store))
    assert torch.allclose(s.soft_labels, expert.logits(s.images), atol=1e-4)


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_real_image_baselines_with_and_without_soft_labels(store, tmp_path, method):
    hard, soft = tmp_path / f"{method}-hard", tmp_path / f"{method}-soft"
    run("distill", "--buffer", store, "--method", method, "--ipc", "2", "--no-progress", "--out", hard)
    r = run("distill", "--buffer", store, "--method", method, "--ipc", "2", "--soft-labels", "--no-progress",
            "--out", soft)
    assert "baseline" in r.output
    h, s = Synset.load(hard), Synset.load(soft)
    assert h.soft_labels is None and h.syn_lr is None and len(h.labels) == 2 * len(h.meta["classes"])
    assert torch.equal(h.images, s.images) and torch.equal(h.labels, s.labels)  # same choice, only labels differ
    expert = ExpertNetwork(TrajectoryStore.open(store))
    assert torch.allclose(s.soft_labels, expert.logits(s.images), atol=1e-5)
    assert s.meta["soft_label_source"]["learned"] is False
    if method != "random":  # deterministic: the same images from another seed
        again = tmp_path / f"{method}-seed"
        run("distill", "--buffer", store, "--method", method, "--ipc", "2", "--seed", "9", "--no-progress", "--out", again)
        assert torch.equal(Synset.load(again).images, h.images)


def test_start_epoch_schedule_drives_the_draws_and_is_validated(store, tmp_path):
    out = tmp_path / "sched"
    run("distill", "--buffer", store, *BASE, "--start-epoch-schedule", "1:3:2", "--out", out)
    steps = [r for r in _lines(out) if "loss" in r]
    assert [r["upper_start_epoch"] for r in steps] == [1, 2, 3, 3]
    assert all(r["start_epoch"] < r["upper_start_epoch"] for r in steps) and steps[0]["start_epoch"] == 0
    assert json.loads((out / "synset" / "meta.json").read_text())["distill"]["start_epoch_schedule"] == "1:3:2"
    r = run("distill", "--buffer", store, *BASE, "--start-epoch-schedule", "1:4:2", "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 2 and "--start-epoch-schedule 1:4:2" in r.output and "has 3" in r.output
    r = run("distill", "--buffer", store, *BASE, "--start-epoch-schedule", "3:1:2", "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 2 and "LO <= HI" in r.output
    assert not (tmp_path / "x").exists()


def test_skip_loss_above_updates_nothing_but_draws_the_same(store, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "skip"
    run("distill", "--buffer", store, *BASE, "--out", ref)
    run("distill", "--buffer", store, *BASE, "--skip-loss-above", "1e-9", "--out", out)
    steps = [r for r in _lines(out) if "loss" in r]
    assert all(r["skipped"] is True for r in steps)
    ref_steps = [r for r in _lines(ref) if "loss" in r]
    assert [r["start_epoch"] for r in steps] == [r["start_epoch"] for r in ref_steps]  # same draws
    assert steps[0]["loss"] == ref_steps[0]["loss"]
    last = Synset.load(out / "synset_last")
    assert last.syn_lr == float(torch.tensor(TrajectoryStore.open(store).expert_lr))  # nothing was updated
    run("distill", "--buffer", store, "--method", "random", "--ipc", "1", "--no-progress", "--out", tmp_path / "init")
    assert torch.equal(last.images, Synset.load(tmp_path / "init").images)  # the same draw, never changed
    assert json.loads((out / "summary.json").read_text())["skipped_iterations"] == 4
    # a threshold above every loss changes nothing
    run("distill", "--buffer", store, *BASE, "--skip-loss-above", "1e9", "--out", tmp_path / "noskip")
    assert torch.equal(Synset.load(tmp_path / "noskip" / "synset_last").images, Synset.load(ref / "synset_last").images)
    r = run("distill", "--buffer", store, *BASE, "--skip-loss-above", "-1", "--out", tmp_path / "y", ok=False)
    assert r.exit_code == 2 and "--skip-loss-above" in r.output


def test_ema_images_are_evaluated_selected_and_saved(store, tmp_path):
    out = tmp_path / "ema"
    run("distill", "--buffer", store, *BASE, "--ema-images", "0.5", "--out", out)
    evals = [r for r in _lines(out) if "val" in r]
    assert [r["iteration"] for r in evals] == [0, 2, 4] and all("ema" in r and "val" in r["ema"] for r in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"] in ("raw", "ema")
    chosen = Synset.load(out)
    assert chosen.meta["ema"] is (summary["selected"] == "ema")
    last, last_ema = Synset.load(out / "synset_last"), Synset.load(out / "synset_last_ema")
    assert last_ema.meta["ema"] is True and not torch.equal(last.images, last_ema.images)
    # after 4 updates with decay 0.5 the EMA is between the start and the end
    start = Synset.load(out).images if chosen.meta["iteration"] == 0 and not chosen.meta["ema"] else None
    if start is not None:
        assert (last_ema.images - start).abs().sum() < (last.images - start).abs().sum()
    for bad in ("1", "0", "1.5"):
        r = run("distill", "--buffer", store, *BASE, "--ema-images", bad, "--out", tmp_path / "z", ok=False)
        assert r.exit_code == 2 and "--ema-images" in r.output


def test_match_layers_changes_the_loss_and_bad_specs_fail(store, tmp_path):
    full, deep = tmp_path / "all", tmp_path / "deep"
    run("distill", "--buffer", store, *BASE, "--out", full)
    run("distill", "--buffer", store, *BASE, "--match-layers", "deep:0.5", "--out", deep)
    a = [r["loss"] for r in _lines(full) if "loss" in r]
    b = [r["loss"] for r in _lines(deep) if "loss" in r]
    assert a[0] != b[0]
    assert Synset.load(deep).meta["distill"]["match_layers"] == "deep:0.5"
    r = run("distill", "--buffer", store, *BASE, "--match-layers", "7:3", "--out", tmp_path / "w", ok=False)
    assert r.exit_code == 2 and "--match-layers 7:3" in r.output and not (tmp_path / "w").exists()


def test_memory_budget_and_dd_soft_labels_are_one_line_errors(store, tmp_path):
    r = run("distill", "--buffer", store, *BASE, "--engine", "full", "--memory-budget", "8GiB", "--out", tmp_path / "m",
            ok=False)
    assert r.exit_code == 2 and "--memory-budget is for --engine auto" in r.output
    r = run("distill", "--buffer", store, *BASE, "--engine", "adjoint", "--memory-budget", "lots", "--out",
            tmp_path / "m", ok=False)
    assert r.exit_code == 2 and "--memory-budget lots" in r.output
    r = run("distill", "--buffer", store, "--method", "dd", "--soft-labels", "--out", tmp_path / "d", ok=False)
    assert r.exit_code == 2 and "--soft-labels is not supported by --method dd" in r.output
    r = run("distill", "--buffer", store, "--soft-labels", "--pix-init", "noise", "--out", tmp_path / "d", ok=False)
    assert r.exit_code == 2 and "--pix-init real" in r.output


def _dying(monkeypatch, at: int):
    from mtt_fast.distill.loop import Distiller

    real_step = Distiller.step

    def dying_step(self):
        if self.iteration == at:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Distiller, "step", dying_step)


def test_kill_and_resume_with_soft_labels_ema_and_skips_equals_an_uninterrupted_run(store, tmp_path, monkeypatch):
    # a threshold between the losses of this run: some iterations are skipped, some not
    args = [*BASE, "--iterations", "6", "--eval-it", "3", "--checkpoint-it", "1", "--soft-labels", "--lr-y", "3",
            "--ema-images", "0.7", "--start-epoch-schedule", "1:2:3", "--skip-loss-above", "0.9995", "--lr-img", "1"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    run("distill", "--buffer", store, *args, "--out", ref)
    _dying(monkeypatch, 4)
    assert run("distill", "--buffer", store, *args, "--out", out, ok=False).exit_code == 2
    monkeypatch.undo()
    assert not (out / "synset_last").exists()
    run("distill", "--buffer", store, *args, "--out", out)
    for sub in ("synset_last", "synset_last_ema", "synset"):
        a, b = Synset.load(ref / sub), Synset.load(out / sub)
        assert torch.equal(a.images, b.images) and torch.equal(a.soft_labels, b.soft_labels), sub
        assert a.syn_lr == b.syn_lr
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds",) and not k.startswith("peak")}
                          for r in rows]
    assert strip(_lines(ref)) == strip(_lines(out))
    skipped = [bool(r.get("skipped")) for r in _lines(ref) if "loss" in r]
    assert any(skipped) and not all(skipped[4:]), skipped  # the resumed part updates, and some steps were skipped
    ta, tb = load_tensors(ref / "checkpoint.safetensors"), load_tensors(out / "checkpoint.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sweep_preset_datm_runs_its_ipc_point_scaled_to_the_store(store, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base:\n  buffer: {store}\n  ipc: 1\n  syn_steps: 2\n  iterations: 2\n  eval_it: 2\n"
                    f"  eval_epochs: 1\n  expert_epochs: 1\n  lr_img: 10\n")
    out = tmp_path / "sweep"
    run("sweep", grid, "--preset", "datm", "--out", out, "--no-progress")
    (row,) = json.loads((out / "summary.json").read_text())["rows"]
    # DATM's ipc 1 point: lr_y 5, skip above 1.1, T+ 4 scaled to the 3-epoch store (round(4 * 3 / 50) -> 1)
    assert row["point"] == {"lr_y": 5.0, "skip_loss_above": 1.1, "max_start_epoch": 1, "lr_lr": 1e-7}
    s = Synset.load(row["run"])
    d = s.meta["distill"]
    assert d["soft_labels"] is True and d["syn_steps"] == 2 and d["lr_img"] == 10 and s.soft_labels is not None
    r = run("sweep", grid, "--preset", "nope", "--out", out, ok=False)
    assert r.exit_code == 2


def test_engine_auto_takes_the_memory_budget_and_logs_its_split(store, tmp_path):
    from mtt_fast.match import ENGINES

    if "auto" not in ENGINES:
        pytest.skip("this build has no --engine auto")
    out = tmp_path / "auto"
    run("distill", "--buffer", store, *BASE, "--engine", "auto", "--memory-budget", "1MiB", "--out", out)
    assert json.loads((out / "synset" / "meta.json").read_text())["distill"]["memory_budget"] == 2**20
    steps = [r for r in _lines(out) if "loss" in r]
    assert all(r["engine_info"]["memory_budget"] == 2**20 and r["engine_info"]["steps"] == 2 for r in steps)
    # the same run under adjoint gives the same losses (auto is exact too)
    ref = tmp_path / "adjoint"
    run("distill", "--buffer", store, *BASE, "--out", ref)
    a = [r["loss"] for r in _lines(ref) if "loss" in r]
    assert [r["loss"] for r in steps] == pytest.approx(a, rel=1e-4)
