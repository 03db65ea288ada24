"""``mtt-fast report``: the paper's tables and figures from run directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtt_fast.report.build import build_report
from mtt_fast.report.collect import collect
from mtt_fast.rundir import finished, open_run


def run_report(run_dirs: list[str | Path], out: str | Path, *, load_data: bool = True, overwrite: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Write report.md / .html / .json, plots/ and grids/ into ``out``; returns the report's data.

    ``load_data``: count the real training split's classes from the data when no trajectory
    store records them (the only step that reads a dataset; the report layer itself reads run
    directories only).
    """
    from mtt_fast.data.counts import train_class_counts

    collect(run_dirs)  # a bad RUN_DIR fails before anything is written
    out = Path(out)
    config = {"command": "report", "run_dirs": [str(Path(p).resolve()) for p in run_dirs], "load_data": load_data}
    if finished(out, config, overwrite=overwrite):
        log(f"{out} already holds this report; nothing to do (pass --overwrite to make it again)")
        return {}
    with open_run(out, config, overwrite=overwrite) as run:
        data = build_report(run_dirs, out, load_data=load_data, log=log,
                            class_counts=train_class_counts if load_data else None)
        run.complete()
    log(f"report in {out / 'report.md'} and {out / 'report.html'} ({len(data['images'])} figures)")
    return data
