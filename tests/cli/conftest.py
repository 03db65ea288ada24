"""Running the command line in-process from tests (the shared fixtures are in tests/conftest.py)."""

from __future__ import annotations

from click.testing import CliRunner
from mtt_fast.cli.main import main

TINY = ["--res", "16", "--arch", "convnet", "--width", "8", "--depth", "2", "--batch-size", "8", "--no-progress"]


def run(*args: str, ok: bool = True):
    """Invoke the CLI in-process; assert on the exit code; return the result."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result
