"""``mtt-fast report``: the paper's tables and the figures to look at, from run directories.

Writes into ``out``:

* ``report.md``: Table 1 (dataset x ipc x method on the backbone), Tables 2-3 (method x
  unseen architecture), Tables 4-5 (one per sweep), every evaluation, and links to the figures;
* ``report.html``: the same page, self-contained (every image inlined as a PNG data URI);
* ``report.json``: the numbers behind the tables and figures;
* ``plots/*.png``: training curves per distill run, per-class recall (the imbalance story),
  class counts real vs distilled, labelled image grids; ``grids/*.png``: the synsets' own grids.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import mtt_fast
from mtt_fast.errors import UserError
from mtt_fast.evaluate.selection import MAX_TEST_LABEL, max_test_over_evals
from mtt_fast.io import atomic_target, read_json, write_json, write_text
from mtt_fast.report.collect import (
    EvalRun,
    SynsetInfo,
    collect,
    finite,
    method_label,
    method_rank,
)
from mtt_fast.report.html import markdown_to_html
from mtt_fast.report.plots import plot_counts, plot_curves, plot_grid, plot_recall
from mtt_fast.report.tables import (
    METRIC_NAMES,
    results_markdown,
    sweep_markdown,
    sweep_rows,
    table1_markdown,
)

UNSEEN_ORDER = ["alexnet", "vgg11", "resnet18"]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _ipc_key(ipc) -> tuple:
    return (ipc is None, ipc if isinstance(ipc, (int, float)) else 0)


def _clean(obj):
    """JSON-safe copy: NaN / inf become None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------
# numbers


def table1_entries(evals: list[EvalRun]) -> list[dict]:
    """One entry per (dataset, split, ipc, method): the backbone architecture's result.

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
            "runs": len(r.get("runs", [])) or e.results.get("repeats"), "mean": r["mean"], "std": r["std"],
            "source": e.name,
        }
        key = (entry["dataset"], entry["split"], entry["ipc"], entry["method"])
        if key not in best or (entry["runs"] or 0) > (best[key]["runs"] or 0):
            best[key] = entry
    return sorted(best.values(), key=lambda x: (x["dataset"], x["split"], _ipc_key(x["ipc"]), method_rank(x["method"])))


def cross_arch_groups(evals: list[EvalRun]) -> list[dict]:
    """Per (dataset, split, ipc): methods x unseen architectures (Tables 2-3)."""
    groups: dict[tuple, dict[str, EvalRun]] = {}
    for e in evals:
        backbone = e.backbone or "convnet"
        unseen = [a for a in e.results["results"] if a != backbone]
        if not unseen:
            continue
        key = (e.dataset, e.results.get("split", "test"), e.ipc)
        g = groups.setdefault(key, {})
        m = e.method.lower()
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
    for (dataset, split, ipc), by_method in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _ipc_key(kv[0][2]))):
        found = [a for e in by_method.values() for a in e.results["results"] if a != (e.backbone or "convnet")]
        archs = [a for a in UNSEEN_ORDER if a in found] + sorted({a for a in found if a not in UNSEEN_ORDER})
        rows = [(method_label(m), by_method[m]) for m in sorted(by_method, key=method_rank)]
        out.append({"dataset": dataset, "split": split, "ipc": ipc, "archs": archs, "rows": rows})
    return out


def real_class_counts(syn: SynsetInfo, stores: list[Path], load_data: bool, cache: dict) -> tuple[list[int] | None, str]:
    """Images per class of the real training split the synset was distilled from.

    Tried in order: the trajectory store's ``split.json`` (written by ``mtt-fast buffer``
    from the same split; free to read), the store's ``meta.json`` if it records
    ``class_counts``, then the data itself through ``load_dataset_from_meta`` when its root
    is reachable (and ``load_data``).

    Returns:
        ``(counts or None, where they came from / why they are missing)``.
    """
    ds = syn.meta.get("dataset") or {}
    classes = syn.classes
    key = (ds.get("name"), ds.get("root"), ds.get("split_fingerprint"), ds.get("res"))
    if key in cache:
        return cache[key]
    result: tuple[list[int] | None, str] = (None, "")
    for store in stores:
        split = store / "split.json"
        if split.is_file():
            try:
                doc = read_json(split)
                if doc.get("fingerprint") in (None, ds.get("split_fingerprint")):
                    per = doc["counts"]["train"]["per_class"]
                    result = ([int(per[c]) for c in classes], f"recorded in {split}")
                    break
            except (UserError, KeyError, TypeError, ValueError):
                pass
        meta = store / "meta.json"
        if meta.is_file():
            try:
                per = read_json(meta).get("class_counts")
                if per:
                    per = per.get("train", per) if isinstance(per, dict) else per
                    result = ([int(per[c]) for c in classes] if isinstance(per, dict) else [int(v) for v in per],
                              f"recorded in {meta}")
                    break
            except (UserError, KeyError, TypeError, ValueError):
                pass
    if result[0] is None:
        root = ds.get("root")
        if not load_data:
            result = (None, "the store records no class counts and --no-load-data was given")
        elif not root or not Path(root).exists():
            result = (None, f"the data ({root}) is not reachable and no trajectory store recording the counts was found")
        else:
            try:
                from mtt_fast.data import load_dataset_from_meta

                bundle = load_dataset_from_meta(ds, progress=False)
                result = (list(bundle.split("train").class_counts()), f"counted in {root}")
            except (UserError, OSError, ValueError, KeyError) as e:
                result = (None, f"the data at {root} could not be read: {e}")
    cache[key] = result
    return result


# ------------------------------------------------------------------------------------------
# the report


class _Doc:
    """Markdown being written, with the figures it references (relative to the output dir)."""

    def __init__(self, out: Path):
        self.out, self.lines, self.images = out, [], []

    def add(self, *lines: str) -> None:
        self.lines += list(lines)

    def image(self, path: Path | None, caption: str) -> None:
        if path is None:
            return
        rel = path.relative_to(self.out).as_posix()
        self.images.append(rel)
        self.add(f"![{caption}]({rel})", "")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def build_report(paths: list[str | Path], out: str | Path, *, load_data: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Collect the runs under ``paths`` and write the report into ``out`` (which must exist).

    Returns:
        The ``report.json`` content.
    """
    out = Path(out)
    col = collect(paths)
    evals = col.all_evals()
    plots, grids = out / "plots", out / "grids"
    plots.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    data: dict = {"mtt_fast_version": mtt_fast.__version__, "sources": [str(Path(p).resolve()) for p in paths]}
    log(f"found {len(col.distills)} distill run(s), {len(evals)} evaluation(s), {len(col.sweeps)} sweep(s)")

    doc.add("# mtt-fast report", "",
            f"Made by `mtt-fast report` (mtt-fast {mtt_fast.__version__}) from: "
            + ", ".join(f"`{p}`" for p in data["sources"]) + ".", "",
            f"- {len(col.distills)} distill run(s), {len(evals)} evaluation(s), {len(col.sweeps)} sweep(s)",
            "- Numbers are percent; mean ± std over the networks trained from scratch on each synset "
            "and tested on real data. The headline metric is accuracy, or AUC for a binary task; "
            "balanced accuracy is shown beside it so that an imbalanced test set cannot hide behind it.", "")

    # Table 1 --------------------------------------------------------------------------
    entries = table1_entries(evals)
    data["table1"] = entries
    doc.add("## Table 1: distillation methods", "")
    doc.add(table1_markdown(entries) if entries else "No evaluation on the distillation backbone was found.", "")

    # the labelled max-over-evaluations test numbers -------------------------------------
    tops = []
    for d in col.distills:
        metric = next((e.metric for e in d.evals), None) or (
            "auc" if len(d.synset.classes if d.synset else []) == 2 else "accuracy")
        top = max_test_over_evals(d.metrics, metric)
        if top is not None:
            tops.append({"run": d.name, "method": d.method, "ipc": d.ipc, "dataset": d.dataset, **top})
    data["max_test_over_evals"] = tops
    if tops:
        tops.sort(key=lambda t: (str(t["dataset"]), _ipc_key(t["ipc"]), method_rank(t["method"])))
        doc.add("### For comparison with published tables only: max over evaluations", "",
                f"Not a result of ours: the {MAX_TEST_LABEL}. The numbers above are the synsets "
                "selected on validation, tested once.", "",
                "| Dataset | Img/Cls | Method | Metric | Max test over evaluations | At iteration | Run |",
                "|---|---|---|---|---|---|---|")
        for t in tops:
            std = f" ± {t['std']:.1f}" if isinstance(t.get("std"), (int, float)) and t["std"] else ""
            doc.add(f"| {t['dataset']} | {t['ipc']} | {method_label(t['method'])} | "
                    f"{METRIC_NAMES.get(t['metric'], t['metric'])} | {t['value']:.1f}{std} | {t['iteration']} | "
                    f"`{t['run']}` |")
        doc.add("")

    # Tables 2-3 -----------------------------------------------------------------------
    groups = cross_arch_groups(evals)
    data["cross_architecture"] = [{"dataset": g["dataset"], "split": g["split"], "ipc": g["ipc"], "archs": g["archs"],
                                   "rows": {label: {a: e.results["results"][a] for a in g["archs"] if a in e.results["results"]}
                                            for label, e in g["rows"]}, "sources": {label: e.name for label, e in g["rows"]}}
                                  for g in groups]
    doc.add("## Tables 2-3: unseen architectures", "")
    if groups:
        for g in groups:
            doc.add(f"### {g['dataset']}, {g['ipc']} image(s) per class: trained on the synset, "
                    f"tested on the {g['split']} split", "")
            doc.add("Average: over the unseen architectures shown.", "")
            doc.add(results_markdown([(label, e.results) for label, e in g["rows"]], archs=g["archs"]), "")
    else:
        doc.add("No evaluation on an architecture other than the distillation backbone was found "
                "(run `mtt-fast eval --archs alexnet,vgg11,resnet18`).", "")

    # Tables 4-5 -----------------------------------------------------------------------
    data["sweeps"] = []
    doc.add("## Tables 4-5: hyper-parameter sweeps", "")
    if not col.sweeps:
        doc.add("No sweep directory was given (`mtt-fast sweep GRID.yaml --out DIR` writes one).", "")
    for s in col.sweeps:
        rows = sweep_rows(s.summary)
        done = sum(r.get("status") == "complete" for r in rows)
        metric = s.summary.get("metric", "accuracy")
        doc.add(f"### Sweep `{s.name}`", "",
                f"{len(rows)} point(s), {done} complete; best validation {METRIC_NAMES.get(metric, metric)} "
                f"during distillation, best first.", "")
        doc.add(sweep_markdown(s.summary), "")
        data["sweeps"].append({"name": s.name, "path": str(s.path), "metric": metric,
                               "keys": s.summary.get("keys"), "rows": rows})

    # distillation runs ------------------------------------------------------------------
    data["distill_runs"] = []
    runs = [d for d in col.distills if d.metrics]
    doc.add("## Distillation runs", "")
    if not runs:
        doc.add("No distill run with recorded metrics was found.", "")
    for d in runs:
        metric = next((e.metric for e in d.evals), None)
        vals = [r for r in d.metrics if isinstance(r.get("val"), dict)]
        if metric is None:
            metric = "auc" if len(d.synset.classes if d.synset else []) == 2 else "accuracy"
        best = max(vals, key=lambda r: finite(r["val"].get(metric)) or -math.inf) if vals else None
        steps = [r for r in d.metrics if "loss" in r]
        info = {"name": d.name, "path": str(d.path), "method": d.method, "ipc": d.ipc, "dataset": d.dataset,
                "engine": d.config.get("engine"), "iterations": d.config.get("iterations"), "metric": metric,
                "steps_done": (steps[-1]["iteration"] + 1) if steps else 0,
                "best_iteration": best["iteration"] if best else None,
                "best_val": finite(best["val"].get(metric)) if best else None,
                "final_syn_lr": steps[-1].get("syn_lr") if steps else None,
                "seconds_per_iteration": (sum(r.get("seconds", 0.0) for r in steps) / len(steps)) if steps else None,
                "complete": (d.path / "COMPLETE").exists(),
                "val_curve": [[r["iteration"], finite(r["val"].get(metric))] for r in vals],
                "max_test_over_evals": max_test_over_evals(d.metrics, metric)}
        data["distill_runs"].append(info)
        doc.add(f"### `{d.name}`: {method_label(d.method)}, {d.ipc} image(s) per class, {d.dataset}", "")
        facts = [f"engine {info['engine']}", f"{info['steps_done']} of {info['iterations']} iterations"
                 + ("" if info["complete"] else " (unfinished)")]
        if best is not None:
            facts.append(f"best validation {METRIC_NAMES.get(metric, metric)} {info['best_val']:.1f} at iteration "
                         f"{info['best_iteration']}" if info["best_val"] is not None else "no finite validation value")
        top = info["max_test_over_evals"]
        if top is not None:
            facts.append(f"max over in-loop evaluations of the TEST split {top['value']:.1f} at iteration "
                         f"{top['iteration']} (selection on the test set; see the table above)")
        if info["final_syn_lr"] is not None:
            facts.append(f"final syn_lr {info['final_syn_lr']:.4g}")
        if info["seconds_per_iteration"]:
            facts.append(f"{info['seconds_per_iteration']:.2f} s per iteration")
        doc.add("; ".join(facts) + ".", "")
        loss_label = ("DD loss (cross-entropy of\nthe updated nets on real images)" if d.method == "dd"
                      else "matching loss\n(normalized distance)")
        p = plot_curves(d.metrics, metric, f"{d.name}: {method_label(d.method)}, ipc {d.ipc}",
                        plots / f"curves_{slug(d.name)}.png", loss_label=loss_label)
        doc.image(p, f"{d.name}: validation {METRIC_NAMES.get(metric, metric)} (selection split), matching (or DD) loss "
                     f"and learned syn_lr against the iteration")

    # per-class recall -------------------------------------------------------------------
    data["per_class_recall"] = []
    doc.add("## Per-class recall: where the errors fall", "")
    recall_groups: dict[tuple, list[dict]] = {}
    for e in entries:
        recall_groups.setdefault((e["dataset"], e["split"], e["ipc"]), []).append(e)
    ev_by_name = {e.name: e for e in evals}
    drew = False
    for (dataset, split, ipc), es in recall_groups.items():
        series = []
        for e in es:
            rec = e["mean"].get("per_class_recall")
            if rec:
                series.append((f"{method_label(e['method'])}", [float(v) for v in rec], finite(e["mean"].get("balanced_accuracy"))))
        if not series:
            continue
        classes = list(ev_by_name[es[0]["source"]].results.get("classes") or [str(i) for i in range(len(series[0][1]))])
        if len(series) == 1 and es[0]["method"] != "random":
            note = "no random-real baseline evaluated at this ipc: the distilled set alone"
        elif all(e["method"] == "random" for e in es):
            note = "only the random-real baseline was evaluated at this ipc"
        else:
            note = "distilled sets beside the random-real baseline"
        p = plot_recall(classes, series, f"{dataset}, {ipc} img/cls: recall per class on the {split} split "
                        f"({es[0]['arch']})", plots / f"recall_{slug(dataset)}_{split}_ipc{ipc}.png")
        doc.add(f"### {dataset}, {ipc} image(s) per class", "", f"{note.capitalize()}.", "")
        doc.image(p, f"{dataset}, ipc {ipc}: per-class recall ({note})")
        data["per_class_recall"].append({"dataset": dataset, "split": split, "ipc": ipc, "classes": classes,
                                         "series": {s[0]: s[1] for s in series}})
        drew = True
    if not drew:
        doc.add("No evaluation records per-class recall.", "")

    # class counts -----------------------------------------------------------------------
    data["class_counts"] = []
    doc.add("## Class counts: real training split vs distilled sets", "")
    synsets: dict[Path, tuple[str, SynsetInfo, list[Path]]] = {}
    for d in col.distills:
        if d.synset is not None:
            stores = [Path(s) for s in (d.config.get("buffer"), d.synset.meta.get("buffer")) if s]
            synsets.setdefault(d.synset.path.resolve(), (d.name, d.synset, stores))
    for e in evals:
        if e.synset is not None:
            stores = [Path(e.synset.meta["buffer"])] if e.synset.meta.get("buffer") else []
            synsets.setdefault(e.synset.path.resolve(), (e.name, e.synset, stores))
    by_dataset: dict[tuple, list[tuple[str, SynsetInfo, list[Path]]]] = {}
    for item in synsets.values():
        ds = item[1].meta.get("dataset") or {}
        by_dataset.setdefault((ds.get("name", "?"), ds.get("split_fingerprint")), []).append(item)
    cache: dict = {}
    all_stores = [s for items in by_dataset.values() for _, _, st in items for s in st]
    for (dataset, _fp), items in sorted(by_dataset.items(), key=lambda kv: str(kv[0])):
        classes = items[0][1].classes
        real, source = None, ""
        for _, syn, st in items:
            real, source = real_class_counts(syn, list(dict.fromkeys(st + all_stores)), load_data, cache)
            if real is not None:
                break
        seen: dict[tuple, list[str]] = {}
        for name, syn, _ in sorted(items, key=lambda it: (_ipc_key(it[1].meta.get("ipc")), method_rank(it[1].meta.get("method")))):
            if syn.counts is not None and len(syn.counts) == len(classes):
                seen.setdefault(tuple(syn.counts), []).append(f"{method_label(syn.meta.get('method'))}")
        syn_series = []
        for counts, labels in seen.items():
            ipc_set = {c for c in counts}
            head = f"ipc {next(iter(ipc_set))}" if len(ipc_set) == 1 else f"{sum(counts)} images"
            syn_series.append((f"{head}: {', '.join(dict.fromkeys(labels))}", list(counts)))
        doc.add(f"### {dataset}", "")
        if real is None:
            doc.add(f"Real class counts not shown: {source}.", "")
        if syn_series or real is not None:
            p = plot_counts(classes, real, source, syn_series, f"{dataset}: images per class",
                            plots / f"counts_{slug(dataset)}.png")
            doc.image(p, f"{dataset}: images per class in the real training split and in the distilled sets")
        data["class_counts"].append({"dataset": dataset, "classes": classes, "real_train": real, "real_source": source,
                                     "distilled": {label: c for label, c in syn_series}})
    if not by_dataset:
        doc.add("No synset was found.", "")

    # image grids ------------------------------------------------------------------------
    doc.add("## Synthetic images", "", "One row per class; the full-resolution grid is in `grids/`.", "")
    data["grids"] = []
    for name, syn, _ in sorted(synsets.values(), key=lambda it: it[0]):
        if syn.grid is None:
            doc.add(f"`{name}`: the synset has no grid.png.", "")
            continue
        copy = grids / f"{slug(name)}.png"
        grids.mkdir(parents=True, exist_ok=True)
        with atomic_target(copy) as tmp:
            shutil.copyfile(syn.grid, tmp)
        title = f"{name}: {method_label(syn.meta.get('method'))}, ipc {syn.meta.get('ipc')}"
        p = plot_grid(syn.grid, syn.classes, title, plots / f"grid_{slug(name)}.png")
        doc.add(f"### `{name}`", "")
        doc.image(p, title)
        data["grids"].append({"name": name, "synset": str(syn.path), "grid": copy.relative_to(out).as_posix(),
                              "plot": p.relative_to(out).as_posix()})

    # every evaluation -------------------------------------------------------------------
    doc.add("## Every evaluation", "")
    data["evaluations"] = []
    by_split: dict[tuple, list[EvalRun]] = {}
    for e in evals:
        by_split.setdefault((e.dataset, e.results.get("split", "test"), e.metric), []).append(e)
        data["evaluations"].append({"name": e.name, "path": str(e.path), "dataset": e.dataset, "method": e.method,
                                    "ipc": e.ipc, "split": e.results.get("split"), "metric": e.metric,
                                    "results": {a: {"mean": r["mean"], "std": r["std"], "runs": len(r.get("runs", []))}
                                                for a, r in e.results["results"].items()}})
    for _, es in sorted(by_split.items(), key=lambda kv: str(kv[0])):
        es = sorted(es, key=lambda e: (_ipc_key(e.ipc), method_rank(e.method), e.name))
        doc.add(results_markdown([(f"`{e.name}` ({method_label(e.method)})", e.results) for e in es]), "")
    if not evals:
        doc.add("No evaluation was found.", "")

    if col.notes:
        doc.add("## Notes", "", *(f"- {n}" for n in col.notes), "")
    data["notes"] = col.notes

    md = doc.text()
    write_text(out / "report.md", md)
    write_text(out / "report.html", markdown_to_html(md, out, title="mtt-fast report"))
    write_json(out / "report.json", _clean(data))
    data["images"] = doc.images
    return data

