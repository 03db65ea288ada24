"""The report says which labels each evaluation trained on, and never merges a soft-label row with its
hard-label twin (Table 1, Tables 2-3, every-evaluation list)."""

from __future__ import annotations

import json

from mtt_fast.report.collect import collect, method_label
from mtt_fast.report.entries import make_tables
from mtt_fast.report.tables import table1_markdown

CLASSES = ["a", "b", "c"]


def _arch(acc: float) -> dict:
    mean = {"accuracy": acc, "balanced_accuracy": acc - 1, "auc": acc + 5, "per_class_recall": [acc] * 3}
    return {"runs": [dict(mean)] * 3, "mean": mean, "std": {"accuracy": 1.0, "balanced_accuracy": 0.5, "auc": 1.0}}


def _eval(path, method: str, labels: str | None, accs: dict) -> None:
    res = {"dataset": "toy", "classes": CLASSES, "split": "test", "metric": "accuracy", "method": method, "ipc": 10,
           "ratio_percent": 1.0, "lr": 0.01, "repeats": 3, "protocol": {},
           "results": {a: _arch(v) for a, v in accs.items()}}
    if labels is not None:
        res["labels"] = labels
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))


def test_soft_and_hard_rows_stay_apart_and_are_labelled(tmp_path):
    _eval(tmp_path / "mtt_hard", "mtt", "hard", {"convnet": 60.0, "alexnet": 30.0})
    _eval(tmp_path / "mtt_soft", "mtt", "soft", {"convnet": 70.0, "alexnet": 40.0})
    _eval(tmp_path / "random_old", "random", None, {"convnet": 50.0, "alexnet": 20.0})  # written before labels existed
    t = make_tables(collect([tmp_path]), load_data=False)
    got = {(e["method"], e["labels"]): e["mean"]["accuracy"] for e in t.table1}
    assert got == {("mtt", "hard"): 60.0, ("mtt", "soft"): 70.0, ("random", "hard"): 50.0}
    md = table1_markdown(t.table1)
    assert "| Random real | DD | MTT | MTT (soft) | GLaD |" in md
    row = next(line for line in md.splitlines() if line.startswith("| toy"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[5].startswith("50.0") and cells[6] == "-" and cells[7].startswith("60.0") \
        and cells[8].startswith("70.0") and cells[9] == "-", row
    (group,) = t.cross_arch
    rows = {r["label"]: r["results"]["results"]["alexnet"]["mean"]["accuracy"] for r in group["rows"]}
    assert rows == {"Random real": 20.0, "MTT": 30.0, "MTT (soft)": 40.0}
    assert [r["label"] for r in group["rows"]] == ["Random real", "MTT", "MTT (soft)"]
    assert sorted((e["method"], e["labels"]) for e in t.evaluations) == [("mtt", "hard"), ("mtt", "soft"),
                                                                          ("random", "hard")]
    assert t.recall and {s[0] for s in t.recall[0]["series"]} == {"Random real", "MTT", "MTT (soft)"}


def test_a_report_without_soft_labels_keeps_its_columns():
    entries = [{"dataset": "toy", "split": "test", "metric": "accuracy", "ipc": 1, "ratio_percent": 1.0,
                "method": "mtt", "arch": "convnet", "runs": 3, "mean": {"accuracy": 60.0}, "std": {"accuracy": 1.0}}]
    assert "| Random real | DD | MTT | GLaD |" in table1_markdown(entries)
    assert method_label("mtt") == "MTT" and method_label("mtt", "soft") == "MTT (soft)"
    assert method_label("herding", "soft") == "Herding (soft)" and method_label("kcenter") == "k-center"
