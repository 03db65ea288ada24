"""The distill guards: syn_lr kept positive (or a warning when it may cross zero), and a run that
selected no synset is an error, never COMPLETE."""

from __future__ import annotations

import math

import pytest

from mtt_fast.distill.loop import Distiller
from mtt_fast.io import load_tensors
from tests.cli.conftest import run
from tests.faults._harness import distill_args, jsonl


def test_syn_lr_is_held_at_syn_lr_min(store, tmp_path):
    out = tmp_path / "mtt"
    r = run(*distill_args(store, out, "--lr-lr", "1e-2"))  # drives syn_lr to -2.1 at the first step
    warnings = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: syn_lr fell"), r.output
    assert "--syn-lr-min" in warnings[0]
    steps = [x for x in jsonl(out / "metrics.jsonl") if "loss" in x]
    clamped = [x for x in steps if "syn_lr_clamped" in x]
    assert clamped and all(x["syn_lr_clamped"] < 0 and x["syn_lr"] == 1e-6 for x in clamped)
    assert all(x["syn_lr"] > 0 for x in steps)
    assert (out / "COMPLETE").is_file()
    assert float(load_tensors(out / "synset_last" / "synset.safetensors")["syn_lr"]) == pytest.approx(1e-6)



@pytest.mark.parametrize("lr_lr", ["1e-2", "1e-4"])
def test_syn_lr_crossing_zero_with_syn_lr_min_0_is_a_warning(store, tmp_path, lr_lr):
    """1e-2: syn_lr -2.1 at step 0, then the loss blows up (one error line); 1e-4: syn_lr -0.011 at
    step 0 and still negative at the evaluation of iteration 4."""
    out = tmp_path / "mtt"
    r = run(*distill_args(store, out, "--lr-lr", lr_lr, "--syn-lr-min", "0"), ok=False)
    lines = r.output.strip().splitlines()
    warnings = [x for x in lines if x.startswith("warning:")]
    assert len(warnings) == 1 and "syn_lr is -" in warnings[0] and "trains backwards" in warnings[0], r.output
    assert r.exit_code in (0, 2) and "Traceback" not in r.output, r.output
    if r.exit_code == 2:
        assert [x for x in lines if x.startswith("error:")] == lines[-1:], r.output
        assert not (out / "COMPLETE").exists()


def test_no_synset_selected_is_an_error_not_complete(store, tmp_path, monkeypatch):
    nan = {"auc": math.nan, "accuracy": math.nan}

    def evaluate_val(self):
        return {"mean": dict(nan), "std": dict(nan), "extra": {"test": {"mean": dict(nan), "std": dict(nan)}}}

    monkeypatch.setattr(Distiller, "evaluate_val", evaluate_val)
    out = tmp_path / "mtt"
    r = run(*distill_args(store, out), ok=False)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert [x for x in lines if x.startswith("error:")] == lines[-1:] and "Traceback" not in r.output, r.output
    assert "no synset was selected" in lines[-1], lines[-1]
    assert not (out / "COMPLETE").exists()
    assert not (out / "synset").exists()
