"""The `mtt-fast` command line (placeholder until the commands land)."""

import click


@click.group()
def main() -> None:
    """mtt-fast: distill image datasets by matching training trajectories."""
