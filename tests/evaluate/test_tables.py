"""results_markdown: the table of one or more evaluations (results.md, the report's Tables 2-3)."""

from __future__ import annotations

import math

from mtt_fast.evaluate.tables import pm, results_markdown


def _arch(acc: float, bal: float, sd: float = 1.0) -> dict:
    mean = {"accuracy": acc, "balanced_accuracy": bal, "auc": acc + 5}
    return {"runs": [dict(mean)] * 3, "mean": mean, "std": {"accuracy": sd, "balanced_accuracy": sd / 2, "auc": sd}}


def _results(archs: dict, metric: str = "accuracy", ipc=1) -> dict:
    return {"dataset": "toy", "split": "test", "metric": metric, "method": "mtt", "ipc": ipc, "results": archs}


def test_results_markdown_archs_keyword():
    r = _results({"convnet": _arch(60, 50), "alexnet": _arch(40, 30)})
    default = results_markdown([("x", r)])
    assert "| Synset | Img/Cls | convnet | alexnet | Average |" in default
    assert "| x | 1 | 60.0 ± 1.0 | 40.0 ± 1.0 | 50.0 ± 1.0 |" in default
    only = results_markdown([("x", r)], archs=["alexnet"])
    assert "| Synset | Img/Cls | alexnet |" in only and "Average" not in only


def test_headline_metric_then_balanced_accuracy():
    rows = [("a", _results({"convnet": _arch(70, 60)}, metric="auc", ipc=2)),
            ("b", _results({"alexnet": _arch(50, 45)}, metric="auc", ipc=2))]
    md = results_markdown(rows)
    auc, bal = md.split("### Balanced acc. (%)")
    assert auc.startswith("### AUC (%) on the test split (toy, mean ± std over repeats)")
    assert "| a | 2 | 75.0 ± 1.0 | - | - |" in auc and "| b | 2 | - | 55.0 ± 1.0 | - |" in auc
    assert "| a | 2 | 60.0 ± 0.5 | - | - |" in bal
    assert results_markdown([]) == ""


def test_pm():
    assert pm(61.25, 0.5) == "61.2 ± 0.5" and pm(float("nan"), 1.0) == "-" and pm(None, 0.0) == "-"
    assert not math.isnan(float(pm(3.0, 0.0).split(" ")[0]))
