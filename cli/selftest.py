"""``mtt-fast selftest``: every compiled op family against its spec on a device, now."""

from __future__ import annotations

import click
from mtt_fast.cli.common import echo, fail, out_path, user_errors


@click.command()
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--bench", is_flag=True,
              help="Also time the compiled op and its reference (forward + backward, one shape per family).")
@click.option("--json", "json_file", default=None, metavar="FILE",
              help="Write the results (and timings) with the torch version, device, build hash and git commit.")
@user_errors
def selftest(device, bench, json_file):
    """Check the compiled ops (traj_loss, block, dsa) against their pure-PyTorch spec.

    Runs each family's parity check (forward, first derivatives, the block's double
    backward) in float32 and float64 on the device, ignoring and refreshing the cached
    verdicts that `--block-impl auto` / `--dsa-impl auto` consult. Exit status 2 when a
    family fails.
    """
    import torch

    from mtt_fast import selftest as verify
    from mtt_fast.io import write_json
    from mtt_fast.stages.common import resolve_device

    dev = resolve_device(device)
    report = verify.selftest(dev, (torch.float32, torch.float64), benchmark=bench)
    echo(verify.format_table(report))
    if json_file:
        write_json(out_path(json_file), report)
        echo(f"wrote {json_file}")
    if report["failed"]:
        fail(f"parity check failed on {report['device']} for: {', '.join(report['failed'])} "
             "(`--block-impl auto` / `--dsa-impl auto` use the reference there)")
