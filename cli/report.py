"""``mtt-fast report``: the paper's tables and figures from run directories."""

from __future__ import annotations

import click
from mtt_fast.cli.common import common_options, echo, out_path, user_errors


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--out", required=True, help="Directory for report.md, report.html, report.json, plots/ and grids/.")
@click.option("--load-data/--no-load-data", default=True, show_default=True,
              help="Count the real training split's classes from the data when no trajectory store records them.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report in --out.")
@common_options
@user_errors
def report(run_dirs, out, load_data, overwrite, seed, device, progress):
    """Tables (the paper's Tables 1-5) and plots from distill, eval and sweep directories.

    Each RUN_DIR is a distill run (its eval/ and eval_cross/ included), an eval directory,
    a sweep directory, or a folder holding such directories one or two levels down (the
    output of `mtt-fast demo`, say).
    """
    from mtt_fast.stages import run_report

    run_report(list(run_dirs), out_path(out), load_data=load_data, overwrite=overwrite, log=echo)
