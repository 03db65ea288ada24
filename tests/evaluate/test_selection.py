"""The labelled max-over-evaluations test number (mtt_fast.evaluate.selection)."""

from __future__ import annotations

import math

from mtt_fast.evaluate.selection import MAX_TEST_LABEL, max_test_over_evals


def test_max_over_evaluations_picks_the_test_peak_and_labels_it():
    records = [
        {"iteration": 0, "val": {"accuracy": 50.0}, "test": {"accuracy": 40.0}, "test_std": {"accuracy": 1.0}},
        {"iteration": 0, "loss": 1.0},
        {"iteration": 5, "val": {"accuracy": 70.0}, "test": {"accuracy": 55.0}},
        {"iteration": 10, "val": {"accuracy": 60.0}, "test": {"accuracy": 58.5}, "test_std": {"accuracy": 2.5}},
        {"iteration": 15, "val": {"accuracy": 65.0}, "test": {"accuracy": math.nan}},
    ]
    top = max_test_over_evals(records, "accuracy")
    # the test peak (iteration 10), not the validation-selected point (iteration 5)
    assert top == {"metric": "accuracy", "value": 58.5, "std": 2.5, "iteration": 10, "label": MAX_TEST_LABEL}
    assert "selection on the test set" in MAX_TEST_LABEL


def test_runs_without_test_scores_have_none():
    old = [{"iteration": 0, "val": {"accuracy": 50.0}}, {"iteration": 0, "loss": 1.0}]
    assert max_test_over_evals(old, "accuracy") is None
    assert max_test_over_evals([{"iteration": 0, "test": {"auc": 70.0}}], "accuracy") is None
