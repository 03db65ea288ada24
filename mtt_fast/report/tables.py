"""Markdown tables shaped like the paper's Tables 1-5.

Tables 2-3 and every evaluation are :func:`mtt_fast.evaluate.tables.results_markdown` (the
evaluation layer writes the same table into each ``results.md``); it is re-exported here.
"""

from __future__ import annotations

import math

from mtt_fast.evaluate.tables import METRIC_NAMES, pm, results_markdown
from mtt_fast.report.collect import label_kind, method_label, method_rank

__all__ = ["METRIC_NAMES", "format_value", "max_test_markdown", "pm", "results_markdown", "sweep_markdown",
           "sweep_rows", "table1_markdown"]


METHOD_COLUMNS = [("random", "Random real"), ("dd", "DD"), ("mtt", "MTT"), ("glad", "GLaD")]


def _cell(entry: dict | None, metric: str) -> str:
    """``headline ± std (bal. b ± s)`` for one Table 1 entry, ``-`` when missing."""
    if entry is None:
        return "-"
    m, s = entry["mean"], entry["std"]
    head = pm(_num(m.get(metric)), _num(s.get(metric)) or 0.0)
    if metric == "balanced_accuracy" or m.get("balanced_accuracy") is None:
        return head
    return f"{head} (bal. {pm(_num(m['balanced_accuracy']), _num(s.get('balanced_accuracy')) or 0.0)})"


def _kind(entry: dict) -> str:
    """An entry's label kind (:func:`label_kind`)."""
    return label_kind(entry.get("labels"))


def _num(x):
    return float("nan") if x is None else float(x)


def table1_markdown(entries: list[dict]) -> str:
    """The paper's Table 1: dataset x images per class x method, on the backbone architecture.

    Args:
        entries: one dict per (dataset, split, ipc, method, labels): ``dataset``, ``split``,
            ``metric`` (the headline metric), ``ipc``, ``ratio_percent``, ``method``, ``labels``
            (``soft`` or ``hard``; missing: hard), ``arch``, ``runs``, ``mean`` and ``std``
            (``{metric: value}``, percent).

    Returns:
        A Markdown table: the headline metric (accuracy, or AUC for a binary task) as
        mean ± std over the trained networks, balanced accuracy in brackets beside it. A method
        evaluated with soft labels has its own column, ``<method> (soft)``, right of its hard one.
    """
    if not entries:
        return ""
    methods = [m for m, _ in METHOD_COLUMNS]
    extra = sorted({e["method"] for e in entries} - set(methods), key=method_rank)  # variants after their method
    soft = {e["method"] for e in entries if _kind(e) == "soft"}
    hard = {e["method"] for e in entries if _kind(e) == "hard"}
    cols = []
    for m in methods + extra:
        if m in methods or m in hard:
            cols.append(((m, "hard"), method_label(m)))
        if m in soft:
            cols.append(((m, "soft"), method_label(m, "soft")))
    archs = sorted({e["arch"] for e in entries})
    if len(cols) > TABLE1_MAX_COLUMNS:
        ran = {(e["method"], _kind(e)) for e in entries}
        return _table1_long(entries, [c for c in cols if c[0] in ran], archs)
    out = [(f"Headline metric, mean ± std over the networks trained from scratch on each synset "
            f"({', '.join(archs)}, the distillation backbone); balanced accuracy in brackets. "
            f"`-`: not run.\n"),
           "| Dataset | Metric | Img/Cls | Ratio % | " + " | ".join(label for _, label in cols) + " |",
           "|---" * (4 + len(cols)) + "|"]
    groups: dict[tuple, dict] = {}
    for e in entries:
        kind = _kind(e)
        groups.setdefault((e["dataset"], e["split"], e["metric"]), {}).setdefault(e["ipc"], {})[(e["method"], kind)] = e
    for (dataset, split, metric), by_ipc in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        first = True
        for ipc in sorted(by_ipc, key=lambda i: (i is None, i if isinstance(i, (int, float)) else 0)):
            row = by_ipc[ipc]
            ratio = next((e.get("ratio_percent") for e in row.values() if e.get("ratio_percent") is not None), None)
            name = dataset + ("" if split == "test" else f" ({split} split)")
            out.append(f"| {name if first else ''} | {METRIC_NAMES.get(metric, metric) if first else ''} | "
                       f"{ipc if ipc is not None else '-'} | {'-' if ratio is None else f'{ratio:.4f}'} | "
                       + " | ".join(_cell(row.get(m), metric) for m, _ in cols) + " |")
            first = False
    out.append("")
    return "\n".join(out)


#: more method columns than this (many variants of one method, say): Table 1 is drawn with one row
#: per method instead, a column per dataset and images per class
TABLE1_MAX_COLUMNS = 10


def _table1_long(entries: list[dict], cols: list[tuple], archs: list[str]) -> str:
    """Table 1 turned on its side: a row per method that was run (``cols``: ``((method, labels),
    label)``), a column per (dataset, split, metric, images per class)."""
    def group(e: dict) -> tuple:
        return e["dataset"], e["split"], e["metric"], e["ipc"]

    groups = sorted({group(e) for e in entries},
                    key=lambda g: (*map(str, g[:3]), g[3] is None, g[3] if isinstance(g[3], (int, float)) else 0))
    by = {(*group(e), e["method"], _kind(e)): e for e in entries}
    heads = []
    for g in groups:
        dataset, split, metric, ipc = g
        ratio = next((e["ratio_percent"] for e in entries if group(e) == g and e.get("ratio_percent") is not None),
                     None)
        name = dataset + ("" if split == "test" else f" ({split} split)")
        heads.append(f"{name}, {METRIC_NAMES.get(metric, metric)}, {ipc if ipc is not None else '-'} img/cls"
                     + ("" if ratio is None else f" ({ratio:.4f} %)"))
    out = [(f"Headline metric, mean ± std over the networks trained from scratch on each synset "
            f"({', '.join(archs)}, the distillation backbone); balanced accuracy in brackets. A row per "
            f"method run (too many for a column each); `-`: not run at that size.\n"),
           "| Method | " + " | ".join(heads) + " |", "|---" * (1 + len(heads)) + "|"]
    for (m, kind), label in cols:
        out.append(f"| {label} | " + " | ".join(_cell(by.get((*g, m, kind)), g[2]) for g in groups) + " |")
    out.append("")
    return "\n".join(out)


def format_value(v) -> str:
    """A swept option's value as a short cell (``1e+04``, ``0.5``, ``True``, ``a,b``)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(format_value(x) for x in v)
    return str(v).replace("|", "\\|")


def sweep_rows(summary: dict) -> list[dict]:
    """The sweep's rows, best validation value first (unfinished / unscored rows last)."""
    def key(r):
        v = r.get("best_val")
        ok = isinstance(v, (int, float)) and not math.isnan(v)
        return (not ok, -(v if ok else 0.0))
    return sorted(summary.get("rows", []), key=key)


def sweep_markdown(summary: dict) -> str:
    """The paper's Tables 4-5: one row per sweep point, the swept options as columns.

    Args:
        summary: a sweep's ``summary.json``: ``metric``, ``keys`` (the swept option names) and
            ``rows`` (``point``, ``run``, ``best_val``, ``best_iteration``, ``status``).
    """
    keys = list(summary.get("keys") or [])
    for r in summary.get("rows", []):
        keys += [k for k in (r.get("point") or {}) if k not in keys]
    metric = summary.get("metric", "accuracy")
    head = ["#", *keys, f"best val {METRIC_NAMES.get(metric, metric)}", "at iteration", "status", "run"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, r in enumerate(sweep_rows(summary), 1):
        v = r.get("best_val")
        val = "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"
        it = r.get("best_iteration")
        point = r.get("point") or {}
        cells = [str(i), *(format_value(point[k]) if k in point else "-" for k in keys), val,
                 "-" if it is None else str(it), str(r.get("status", "-")), f"`{r.get('run', '-')}`"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def max_test_markdown(tops: list[dict]) -> str:
    """The labelled max-over-evaluations TEST numbers of the distill runs, one row per run.

    Args:
        tops: ``{"run", "method", "ipc", "dataset", "metric", "value", "std", "iteration"}`` each
            (see :func:`mtt_fast.evaluate.selection.max_test_over_evals`), in display order.
    """
    out = ["| Dataset | Img/Cls | Method | Metric | Max test over evaluations | At iteration | Run |",
           "|---|---|---|---|---|---|---|"]
    for t in tops:
        std = f" ± {t['std']:.1f}" if isinstance(t.get("std"), (int, float)) and t["std"] else ""
        out.append(f"| {t['dataset']} | {t['ipc']} | {method_label(t['method'])} | "
                   f"{METRIC_NAMES.get(t['metric'], t['metric'])} | {t['value']:.1f}{std} | {t['iteration']} | "
                   f"`{t['run']}` |")
    return "\n".join(out)
