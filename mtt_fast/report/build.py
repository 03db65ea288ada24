"""``mtt-fast report``: the paper's tables and the figures to look at, from run directories.

Writes into ``out``:

* ``report.md``: Table 1 (dataset x ipc x method on the backbone), Tables 2-3 (method x
  unseen architecture), Tables 4-5 (one per sweep), every evaluation, and links to the figures;
* ``report.html``: the same page, self-contained (every image inlined as a PNG data URI);
* ``report.json``: the numbers behind the tables and figures;
* ``plots/*.png``: training curves per distill run, per-class recall (the imbalance story),
  class counts real vs distilled, labelled image grids; ``grids/*.png``: the synsets' own grids.

Four steps, each reading the previous one's data:

1. :func:`~mtt_fast.report.collect.collect`: run directories -> ``Collection``;
2. :func:`~mtt_fast.report.entries.make_tables`: ``Collection`` -> ``Tables`` (plain data);
3. :func:`~mtt_fast.report.figures.draw_figures`: ``Tables`` -> the figure files written;
4. :func:`~mtt_fast.report.render.render`: ``Tables`` + figures -> report.md / .html / .json.

The report reads run directories only; it never loads a dataset. A caller that may count a
real training split's classes from the data passes ``class_counts`` (e.g.
:func:`mtt_fast.data.counts.train_class_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtt_fast.report.collect import collect
from mtt_fast.report.counts import ClassCounts, real_class_counts
from mtt_fast.report.entries import Tables, cross_arch_groups, make_tables, table1_entries
from mtt_fast.report.figures import FigureFile, draw_figures, slug
from mtt_fast.report.render import render

__all__ = ["FigureFile", "Tables", "build_report", "cross_arch_groups", "draw_figures", "make_tables",
           "real_class_counts", "render", "slug", "table1_entries"]


def build_report(paths: list[str | Path], out: str | Path, *, load_data: bool = True,
                 log: Callable[[str], None] = print, class_counts: ClassCounts | None = None) -> dict:
    """Collect the runs under ``paths`` and write the report into ``out`` (which must exist).

    Args:
        paths: RUN_DIRs (distill runs, evaluations, sweeps, or folders holding them).
        out: the report directory.
        load_data: False: never ask ``class_counts`` (``--no-load-data``).
        log: where the one-line summary of what was found goes.
        class_counts: given a synset's dataset meta (``meta["dataset"]``), the real training
            split's images per class, or None; asked only when no trajectory store records
            them and the data's root exists. None: the counts are not taken from the data.

    Returns:
        The ``report.json`` content, plus ``images``: the figures ``report.md`` shows.
    """
    col = collect(paths)
    tables = make_tables(col, load_data=load_data, class_counts=class_counts)
    f = tables.found
    log(f"found {f['distills']} distill run(s), {f['evals']} evaluation(s), {f['sweeps']} sweep(s)")
    figures = draw_figures(col, tables, out)
    return render(tables, figures, out)
