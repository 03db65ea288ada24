"""The report's render step: ``report.md``, ``report.html`` and ``report.json`` from the tables
step's data and the figures step's files."""

from __future__ import annotations

import math
from pathlib import Path

import mtt_fast
from mtt_fast.evaluate.selection import MAX_TEST_LABEL
from mtt_fast.io import write_json, write_text
from mtt_fast.report.collect import ipc_key, method_label, method_rank
from mtt_fast.report.entries import Tables
from mtt_fast.report.figures import FigureFile
from mtt_fast.report.html import markdown_to_html
from mtt_fast.report.tables import (
    METRIC_NAMES,
    max_test_markdown,
    results_markdown,
    sweep_markdown,
    table1_markdown,
)


class _Doc:
    """Markdown being written, with the figures it references (relative to the output dir)."""

    def __init__(self, out: Path, figures: list[FigureFile]):
        self.out, self.lines, self.images = out, [], []
        self.figures = {(f.kind, f.index): f for f in figures}

    def add(self, *lines: str) -> None:
        self.lines += list(lines)

    def image(self, kind: str, index: int) -> None:
        """The figure drawn for entry ``index`` of section ``kind``, if one was."""
        fig = self.figures.get((kind, index))
        if fig is None:
            return
        rel = fig.path.relative_to(self.out).as_posix()
        self.images.append(rel)
        self.add(f"![{fig.caption}]({rel})", "")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def _name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _head(doc: _Doc, t: Tables) -> None:
    f = t.found
    doc.add("# mtt-fast report", "",
            f"Made by `mtt-fast report` (mtt-fast {mtt_fast.__version__}) from: "
            + ", ".join(f"`{p}`" for p in t.sources) + ".", "",
            f"- {f['distills']} distill run(s), {f['evals']} evaluation(s), {f['sweeps']} sweep(s)",
            "- Numbers are percent; mean ± std over the networks trained from scratch on each synset "
            "and tested on real data. The headline metric is accuracy, or AUC for a binary task; "
            "balanced accuracy is shown beside it so that an imbalanced test set cannot hide behind it.", "")


def _tables_1_to_5(doc: _Doc, t: Tables) -> None:
    doc.add("## Table 1: distillation methods", "")
    doc.add(table1_markdown(t.table1) if t.table1 else "No evaluation on the distillation backbone was found.", "")
    if t.max_test:
        doc.add("### For comparison with published tables only: max over evaluations", "",
                f"Not a result of ours: the {MAX_TEST_LABEL}. The numbers above are the synsets "
                "selected on validation, tested once.", "", max_test_markdown(t.max_test), "")
    doc.add("## Tables 2-3: unseen architectures", "")
    for g in t.cross_arch:
        doc.add(f"### {g['dataset']}, {g['ipc']} image(s) per class: trained on the synset, "
                f"tested on the {g['split']} split", "")
        doc.add("Average: over the unseen architectures shown.", "")
        doc.add(results_markdown([(r["label"], r["results"]) for r in g["rows"]], archs=g["archs"]), "")
    if not t.cross_arch:
        doc.add("No evaluation on an architecture other than the distillation backbone was found "
                "(run `mtt-fast eval --archs alexnet,vgg11,resnet18`).", "")
    doc.add("## Tables 4-5: hyper-parameter sweeps", "")
    if not t.sweeps:
        doc.add("No sweep directory was given (`mtt-fast sweep GRID.yaml --out DIR` writes one).", "")
    for s in t.sweeps:
        done = sum(r.get("status") == "complete" for r in s["rows"])
        doc.add(f"### Sweep `{s['name']}`", "",
                f"{len(s['rows'])} point(s), {done} complete; best validation {_name(s['metric'])} "
                f"during distillation, best first.", "")
        doc.add(sweep_markdown(s["summary"]), "")


def _run_facts(info: dict) -> str:
    """One distill run in a sentence: engine, progress, best validation value, speed."""
    metric = info["metric"]
    facts = [f"engine {info['engine']}", f"{info['steps_done']} of {info['iterations']} iterations"
             + ("" if info["complete"] else " (unfinished)")]
    if info["best_iteration"] is not None:
        facts.append(f"best validation {_name(metric)} {info['best_val']:.1f} at iteration "
                     f"{info['best_iteration']}" if info["best_val"] is not None else "no finite validation value")
    top = info["max_test_over_evals"]
    if top is not None:
        facts.append(f"max over in-loop evaluations of the TEST split {top['value']:.1f} at iteration "
                     f"{top['iteration']} (selection on the test set; see the table above)")
    if info["final_syn_lr"] is not None:
        facts.append(f"final syn_lr {info['final_syn_lr']:.4g}")
    if info["seconds_per_iteration"]:
        facts.append(f"{info['seconds_per_iteration']:.2f} s per iteration")
    return "; ".join(facts) + "."


def _runs_and_recall(doc: _Doc, t: Tables) -> None:
    doc.add("## Distillation runs", "")
    if not t.distill_runs:
        doc.add("No distill run with recorded metrics was found.", "")
    for i, info in enumerate(t.distill_runs):
        doc.add(f"### `{info['name']}`: {method_label(info['method'])}, {info['ipc']} image(s) per class, "
                f"{info['dataset']}", "")
        doc.add(_run_facts(info), "")
        doc.image("curves", i)
    doc.add("## Per-class recall: where the errors fall", "")
    for i, r in enumerate(t.recall):
        doc.add(f"### {r['dataset']}, {r['ipc']} image(s) per class", "", f"{r['note'].capitalize()}.", "")
        doc.image("recall", i)
    if not t.recall:
        doc.add("No evaluation records per-class recall.", "")


def _counts_and_grids(doc: _Doc, t: Tables) -> None:
    doc.add("## Class counts: real training split vs distilled sets", "")
    for i, c in enumerate(t.class_counts):
        doc.add(f"### {c['dataset']}", "")
        if c["real_train"] is None:
            doc.add(f"Real class counts not shown: {c['real_source']}.", "")
        doc.image("counts", i)
    if not t.class_counts:
        doc.add("No synset was found.", "")
    doc.add("## Synthetic images", "", "One row per class; the full-resolution grid is in `grids/`.", "")
    for i, s in enumerate(t.synsets):
        if s["grid"] is None:
            doc.add(f"`{s['name']}`: the synset has no grid.png.", "")
            continue
        doc.add(f"### `{s['name']}`", "")
        doc.image("grid", i)


def _evaluations(doc: _Doc, t: Tables) -> None:
    doc.add("## Every evaluation", "")
    by_split: dict[tuple, list[dict]] = {}
    for e in t.evaluations:
        by_split.setdefault((e["dataset"], e["split"] or "test", e["metric"]), []).append(e)
    for _, es in sorted(by_split.items(), key=lambda kv: str(kv[0])):
        es = sorted(es, key=lambda e: (ipc_key(e["ipc"]), method_rank(e["method"]), e["name"]))
        doc.add(results_markdown([(f"`{e['name']}` ({method_label(e['method'], e.get('labels'))})", e) for e in es]),
                "")
    if not t.evaluations:
        doc.add("No evaluation was found.", "")
    if t.notes:
        doc.add("## Notes", "", *(f"- {n}" for n in t.notes), "")


def report_markdown(t: Tables, figures: list[FigureFile], out: Path) -> tuple[str, list[str]]:
    """``report.md``'s text and the figures it shows (paths relative to ``out``), in order."""
    doc = _Doc(out, figures)
    for section in (_head, _tables_1_to_5, _runs_and_recall, _counts_and_grids, _evaluations):
        section(doc, t)
    return doc.text(), doc.images


def report_data(t: Tables, figures: list[FigureFile], out: Path) -> dict:
    """``report.json``'s content: the numbers behind the tables and figures."""
    grids = {f.index: f for f in figures if f.kind == "grid"}
    return {
        "mtt_fast_version": mtt_fast.__version__,
        "sources": list(t.sources),
        "table1": t.table1,
        "max_test_over_evals": t.max_test,
        "cross_architecture": [
            {"dataset": g["dataset"], "split": g["split"], "ipc": g["ipc"], "archs": g["archs"],
             "rows": {r["label"]: {a: r["results"]["results"][a] for a in g["archs"] if a in r["results"]["results"]}
                      for r in g["rows"]},
             "sources": {r["label"]: r["source"] for r in g["rows"]}} for g in t.cross_arch],
        "sweeps": [{k: s[k] for k in ("name", "path", "metric", "keys", "rows")} for s in t.sweeps],
        "distill_runs": t.distill_runs,
        "per_class_recall": [{"dataset": r["dataset"], "split": r["split"], "ipc": r["ipc"], "classes": r["classes"],
                              "series": {s[0]: s[1] for s in r["series"]}} for r in t.recall],
        "class_counts": [{"dataset": c["dataset"], "classes": c["classes"], "real_train": c["real_train"],
                          "real_source": c["real_source"], "distilled": dict(c["distilled"])} for c in t.class_counts],
        "grids": [{"name": s["name"], "synset": s["path"], "grid": grids[i].copy.relative_to(out).as_posix(),
                   "plot": grids[i].path.relative_to(out).as_posix()}
                  for i, s in enumerate(t.synsets) if i in grids],
        "evaluations": t.evaluations,
        "notes": t.notes,
    }


def json_safe(obj):
    """JSON-safe copy: NaN / inf become None, tuples lists, paths strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def render(t: Tables, figures: list[FigureFile], out: str | Path) -> dict:
    """The render step: write ``report.md``, ``report.html`` and ``report.json`` into ``out``.

    Returns:
        ``report.json``'s content, plus ``images``: the figures ``report.md`` shows.
    """
    out = Path(out)
    md, images = report_markdown(t, figures, out)
    data = report_data(t, figures, out)
    write_text(out / "report.md", md)
    write_text(out / "report.html", markdown_to_html(md, out, title="mtt-fast report"))
    write_json(out / "report.json", json_safe(data))
    data["images"] = images
    return data
