"""Which number a run reports: selection on validation, and the labelled max-over-evaluations.

A distill run keeps the synset that scores best on the VALIDATION split (``synset/``) and
``mtt-fast eval`` reports its test score once. The MTT reference code instead reports the
best TEST score over all its in-loop evaluations (its issue #23), which is selection on the
test set. We record that number too, for comparison with published tables only, always under
:data:`MAX_TEST_LABEL`. This module has no torch import, so reports can use it.
"""

from __future__ import annotations

import math

__all__ = ["MAX_TEST_LABEL", "max_test_over_evals"]

#: How summaries and reports label the max-over-evaluations test number.
MAX_TEST_LABEL = ("max over in-loop evaluations of the test split: selection on the test set, as the MTT "
                  "reference reports it; for comparability with published tables, not a model-selected result")


def max_test_over_evals(records: list[dict], metric: str) -> dict | None:
    """The best test-split ``metric`` over a run's in-loop evaluations.

    Args:
        records: the run's ``metrics.jsonl`` lines; evaluation lines carry ``"test"`` (and
            ``"test_std"``) dicts of metrics.
        metric: the headline metric name (``"accuracy"`` or ``"auc"``).

    Returns:
        ``{"metric", "value", "std", "iteration", "label"}``, or None when no evaluation line
        has a finite test value (runs made before this was recorded).
    """
    best = None
    for r in records:
        test = r.get("test")
        value = test.get(metric) if isinstance(test, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and (best is None or value > best["value"]):
            std = (r.get("test_std") or {}).get(metric)
            best = {"metric": metric, "value": float(value), "std": std, "iteration": r.get("iteration"),
                    "label": MAX_TEST_LABEL}
    return best
