"""The report's figures step: the PNGs the tables step's data calls for, written under ``out``.

``plots/``: training curves per distill run, per-class recall, class counts real vs distilled,
each synset's grid with its title; ``grids/``: the synsets' own ``grid.png``, copied.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mtt_fast.io import atomic_target
from mtt_fast.report.collect import Collection, method_label
from mtt_fast.report.entries import Tables
from mtt_fast.report.plots import plot_counts, plot_curves, plot_grid, plot_recall
from mtt_fast.report.tables import METRIC_NAMES


@dataclass
class FigureFile:
    """One figure written: for the entry ``index`` of the ``Tables`` section ``kind``."""

    kind: str  # "curves" (distill_runs), "recall", "counts" (class_counts) or "grid" (synsets)
    index: int
    path: Path
    caption: str
    copy: Path | None = None  # "grid": the synset's own grid.png, copied into grids/


def slug(name: str) -> str:
    """``name`` as a file name: runs of other characters than ``[A-Za-z0-9._-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _curves(col: Collection, tables: Tables, plots: Path) -> list[FigureFile]:
    runs = {str(d.path): d for d in col.distills}
    out = []
    for i, info in enumerate(tables.distill_runs):
        name, metric = info["name"], info["metric"]
        loss_label = ("DD loss (cross-entropy of\nthe updated nets on real images)" if info["method"] == "dd"
                      else "matching loss\n(normalized distance)")
        title = f"{name}: {method_label(info['method'])}, ipc {info['ipc']}"
        p = plot_curves(runs[info["path"]].metrics, metric, title, plots / f"curves_{slug(name)}.png",
                        loss_label=loss_label)
        if p is not None:
            out.append(FigureFile("curves", i, p, f"{name}: validation {METRIC_NAMES.get(metric, metric)} (selection "
                                  f"split), matching (or DD) loss and learned syn_lr against the iteration"))
    return out


def _recall(tables: Tables, plots: Path) -> list[FigureFile]:
    out = []
    for i, r in enumerate(tables.recall):
        dataset, split, ipc = r["dataset"], r["split"], r["ipc"]
        p = plot_recall(r["classes"], r["series"], f"{dataset}, {ipc} img/cls: recall per class on the {split} split "
                        f"({r['arch']})", plots / f"recall_{slug(dataset)}_{split}_ipc{ipc}.png")
        out.append(FigureFile("recall", i, p, f"{dataset}, ipc {ipc}: per-class recall ({r['note']})"))
    return out


def _counts(tables: Tables, plots: Path) -> list[FigureFile]:
    out = []
    for i, c in enumerate(tables.class_counts):
        if c["distilled"] or c["real_train"] is not None:
            dataset = c["dataset"]
            p = plot_counts(c["classes"], c["real_train"], c["real_source"], c["distilled"],
                            f"{dataset}: images per class", plots / f"counts_{slug(dataset)}.png")
            out.append(FigureFile("counts", i, p, f"{dataset}: images per class in the real training split and in "
                                  f"the distilled sets"))
    return out


def _grids(tables: Tables, out_dir: Path, plots: Path) -> list[FigureFile]:
    out = []
    grids = out_dir / "grids"
    for i, s in enumerate(tables.synsets):
        if s["grid"] is None:
            continue
        name = s["name"]
        copy = grids / f"{slug(name)}.png"
        grids.mkdir(parents=True, exist_ok=True)
        with atomic_target(copy) as tmp:
            shutil.copyfile(s["grid"], tmp)
        title = f"{name}: {method_label(s['method'])}, ipc {s['ipc']}"
        p = plot_grid(s["grid"], s["classes"], title, plots / f"grid_{slug(name)}.png")
        out.append(FigureFile("grid", i, p, title, copy=copy))
    return out


def draw_figures(col: Collection, tables: Tables, out: str | Path) -> list[FigureFile]:
    """The figures step: draw every figure ``tables`` calls for into ``out/plots`` (and ``out/grids``).

    Args:
        col: the collection ``tables`` was made from (the curves plot every recorded step).
        tables: the tables step's data.
        out: the report directory.

    Returns:
        The figures written, in section order.
    """
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    return [*_curves(col, tables, plots), *_recall(tables, plots), *_counts(tables, plots),
            *_grids(tables, out, plots)]
