"""The report's tables step: from a :class:`~mtt_fast.report.collect.Collection` to plain data.

:func:`make_tables` returns a :class:`Tables`: lists of plain dicts (numbers, names, paths as
strings), one list per section of the report. The figures step draws from it, the render step
writes ``report.md`` / ``report.html`` / ``report.json`` from it; nothing here writes a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mtt_fast.evaluate.selection import max_test_over_evals
from mtt_fast.report.collect import (
    Collection,
    DistillRun,
    EvalRun,
    finite,
    ipc_key,
    labels_rank,
    method_label,
    method_rank,
)
from mtt_fast.report.counts import ClassCounts, class_count_entries, synsets_of
from mtt_fast.report.tables import sweep_rows

UNSEEN_ORDER = ["alexnet", "vgg11", "resnet18"]


@dataclass
class Tables:
    """What the report says, section by section (see the ``*_entries`` functions for each shape)."""

    sources: list[str]
    found: dict[str, int]  # {"distills", "evals", "sweeps"}: how many of each were found
    table1: list[dict]
    max_test: list[dict]
    cross_arch: list[dict]
    sweeps: list[dict]
    distill_runs: list[dict]
    recall: list[dict]
    class_counts: list[dict]
    synsets: list[dict]
    evaluations: list[dict]
    notes: list[str] = field(default_factory=list)


def table1_entries(evals: list[EvalRun]) -> list[dict]:
    """One entry per (dataset, split, ipc, method, labels): the backbone architecture's result.

    ``labels`` is ``"soft"`` or ``"hard"`` (:attr:`EvalRun.labels`): a synset evaluated with its
    soft labels and the same synset evaluated with ``--hard-labels`` are two entries, never one.
    When several evaluations qualify (``eval/`` and ``eval_cross/`` both train ConvNets), the
    one with the most trained networks wins, then the first found.
    """
    best: dict[tuple, dict] = {}
    for e in evals:
        arch = e.backbone
        if arch is None:
            continue
        r = e.results["results"][arch]
        entry = {
            "dataset": e.dataset, "split": e.results.get("split", "test"), "metric": e.metric, "ipc": e.ipc,
            "ratio_percent": finite(e.results.get("ratio_percent")), "method": e.method.lower(), "arch": arch,
            "labels": e.labels, "runs": len(r.get("runs", [])) or e.results.get("repeats"), "mean": r["mean"],
            "std": r["std"], "source": e.name,
        }
        key = (entry["dataset"], entry["split"], entry["ipc"], entry["method"], entry["labels"])
        if key not in best or (entry["runs"] or 0) > (best[key]["runs"] or 0):
            best[key] = entry
    return sorted(best.values(), key=lambda x: (x["dataset"], x["split"], ipc_key(x["ipc"]), method_rank(x["method"]),
                                                labels_rank(x["labels"])))


def _run_metric(d: DistillRun) -> str:
    """The run's headline metric: its evaluations', else AUC for two classes, else accuracy."""
    metric = next((e.metric for e in d.evals), None)
    if metric is None:
        metric = "auc" if len(d.synset.classes if d.synset else []) == 2 else "accuracy"
    return metric


def max_test_entries(col: Collection) -> list[dict]:
    """Per distill run, the labelled max over its in-loop evaluations of the TEST split."""
    tops = []
    for d in col.distills:
        top = max_test_over_evals(d.metrics, _run_metric(d))
        if top is not None:
            tops.append({"run": d.name, "method": d.method, "ipc": d.ipc, "dataset": d.dataset, **top})
    tops.sort(key=lambda t: (str(t["dataset"]), ipc_key(t["ipc"]), method_rank(t["method"])))
    return tops


def cross_arch_groups(evals: list[EvalRun]) -> list[dict]:
    """Per (dataset, split, ipc): methods x unseen architectures (Tables 2-3).

    A method's soft-label and hard-label evaluations are separate rows (labelled ``(soft)``).

    Returns:
        ``{"dataset", "split", "ipc", "archs", "rows"}`` per group; each row is ``{"label",
        "source", "results"}`` where ``results`` is a ``results.json`` content holding the
        unseen architectures of that method (merged over its evaluations).
    """
    groups: dict[tuple, dict[str, EvalRun]] = {}
    for e in evals:
        backbone = e.backbone or "convnet"
        unseen = [a for a in e.results["results"] if a != backbone]
        if not unseen:
            continue
        key = (e.dataset, e.results.get("split", "test"), e.ipc)
        g = groups.setdefault(key, {})
        m = (e.method.lower(), e.labels)
        if m not in g:
            g[m] = EvalRun(e.path, e.name, {**e.results, "results": {}}, e.synset)
        # evaluations of one method split by architecture (eval_cross/<arch>/) merge into one
        # row; per architecture the one with the most trained networks wins
        merged = g[m].results["results"]
        for a in unseen:
            r = e.results["results"][a]
            if a not in merged or len(r.get("runs", [])) > len(merged[a].get("runs", [])):
                merged[a] = r
    out = []
    for (dataset, split, ipc), by_method in sorted(groups.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][1], ipc_key(kv[0][2]))):
        found = [a for e in by_method.values() for a in e.results["results"] if a != (e.backbone or "convnet")]
        archs = [a for a in UNSEEN_ORDER if a in found] + sorted({a for a in found if a not in UNSEEN_ORDER})
        rows = [{"label": method_label(*m), "labels": m[1], "source": by_method[m].name,
                 "results": by_method[m].results}
                for m in sorted(by_method, key=lambda ml: (method_rank(ml[0]), labels_rank(ml[1])))]
        out.append({"dataset": dataset, "split": split, "ipc": ipc, "archs": archs, "rows": rows})
    return out


def sweep_entries(col: Collection) -> list[dict]:
    """Per sweep: ``{"name", "path", "metric", "keys", "rows" (best first), "summary"}``."""
    return [{"name": s.name, "path": str(s.path), "metric": s.summary.get("metric", "accuracy"),
             "keys": s.summary.get("keys"), "rows": sweep_rows(s.summary), "summary": s.summary}
            for s in col.sweeps]


def distill_run_entry(d: DistillRun) -> dict:
    """One distill run's facts: settings, progress, best validation value, speed, curve."""
    metric = _run_metric(d)
    vals = [r for r in d.metrics if isinstance(r.get("val"), dict)]
    best = max(vals, key=lambda r: finite(r["val"].get(metric)) or -math.inf) if vals else None
    steps = [r for r in d.metrics if "loss" in r]
    return {"name": d.name, "path": str(d.path), "method": d.method, "ipc": d.ipc, "dataset": d.dataset,
            "engine": d.config.get("engine"), "iterations": d.config.get("iterations"), "metric": metric,
            "steps_done": (steps[-1]["iteration"] + 1) if steps else 0,
            "best_iteration": best["iteration"] if best else None,
            "best_val": finite(best["val"].get(metric)) if best else None,
            "final_syn_lr": steps[-1].get("syn_lr") if steps else None,
            "seconds_per_iteration": (sum(r.get("seconds", 0.0) for r in steps) / len(steps)) if steps else None,
            "complete": (d.path / "COMPLETE").exists(),
            "val_curve": [[r["iteration"], finite(r["val"].get(metric))] for r in vals],
            "max_test_over_evals": max_test_over_evals(d.metrics, metric)}


def recall_entries(table1: list[dict], evals: list[EvalRun]) -> list[dict]:
    """Per (dataset, split, ipc) of Table 1: each method's per-class recall on the backbone.

    Returns:
        ``{"dataset", "split", "ipc", "classes", "arch", "note", "series"}``, where ``series`` is
        a list of ``(method label, recall per class, balanced accuracy or None)``.
    """
    groups: dict[tuple, list[dict]] = {}
    for e in table1:
        groups.setdefault((e["dataset"], e["split"], e["ipc"]), []).append(e)
    ev_by_name = {e.name: e for e in evals}
    out = []
    for (dataset, split, ipc), es in groups.items():
        series = []
        for e in es:
            rec = e["mean"].get("per_class_recall")
            if rec:
                series.append((method_label(e["method"], e.get("labels")), [float(v) for v in rec],
                               finite(e["mean"].get("balanced_accuracy"))))
        if not series:
            continue
        classes = list(ev_by_name[es[0]["source"]].results.get("classes")
                       or [str(i) for i in range(len(series[0][1]))])
        if len(series) == 1 and es[0]["method"] != "random":
            note = "no random-real baseline evaluated at this ipc: the distilled set alone"
        elif all(e["method"] == "random" for e in es):
            note = "only the random-real baseline was evaluated at this ipc"
        else:
            note = "distilled sets beside the random-real baseline"
        out.append({"dataset": dataset, "split": split, "ipc": ipc, "classes": classes, "arch": es[0]["arch"],
                    "note": note, "series": series})
    return out


def evaluation_entries(evals: list[EvalRun]) -> list[dict]:
    """Every evaluation: where it is, what it evaluated, mean and std per architecture."""
    return [{"name": e.name, "path": str(e.path), "dataset": e.dataset, "method": e.method, "ipc": e.ipc,
             "labels": e.labels, "split": e.results.get("split"), "metric": e.metric,
             "results": {a: {"mean": r["mean"], "std": r["std"], "runs": len(r.get("runs", []))}
                         for a, r in e.results["results"].items()}}
            for e in evals]


def synset_entries(col: Collection) -> list[dict]:
    """Every synset once, by run name: ``{"name", "path", "classes", "method", "ipc", "grid"}``."""
    out = [{"name": name, "path": str(syn.path), "classes": syn.classes, "method": syn.meta.get("method"),
            "ipc": syn.meta.get("ipc"), "grid": None if syn.grid is None else str(syn.grid)}
           for name, syn, _ in synsets_of(col).values()]
    return sorted(out, key=lambda s: s["name"])


def make_tables(col: Collection, *, load_data: bool = True, class_counts: ClassCounts | None = None) -> Tables:
    """The tables step: every number and name the report shows, as plain data.

    Args:
        col: what :func:`~mtt_fast.report.collect.collect` found.
        load_data: False: never ask ``class_counts`` (``--no-load-data``).
        class_counts: counts a real training split's classes from its dataset meta when no
            trajectory store records them (see :mod:`mtt_fast.report.counts`); None: not counted.
    """
    evals = col.all_evals()
    table1 = table1_entries(evals)
    return Tables(
        sources=list(col.sources),
        found={"distills": len(col.distills), "evals": len(evals), "sweeps": len(col.sweeps)},
        table1=table1,
        max_test=max_test_entries(col),
        cross_arch=cross_arch_groups(evals),
        sweeps=sweep_entries(col),
        distill_runs=[distill_run_entry(d) for d in col.distills if d.metrics],
        recall=recall_entries(table1, evals),
        class_counts=class_count_entries(col, load_data=load_data, class_counts=class_counts),
        synsets=synset_entries(col),
        evaluations=evaluation_entries(evals),
        notes=list(col.notes),
    )
