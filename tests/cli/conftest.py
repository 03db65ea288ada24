"""A tiny CRC-layout dataset and a finished tiny store, shared by the CLI tests."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mtt_fast.cli.main import main

from tests.fixtures.datasets import make_crc

TINY = ["--res", "16", "--arch", "convnet", "--width", "8", "--depth", "2", "--batch-size", "8", "--no-progress"]


def run(*args: str, ok: bool = True):
    """Invoke the CLI in-process; assert on the exit code; return the result."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def crc_root(tmp_path_factory):
    return make_crc(tmp_path_factory.mktemp("crc"), patients_per_class=6, tiles_per_patient=3, size=224,
                    test_patients_per_class=3)


@pytest.fixture(scope="session")
def store(tmp_path_factory, crc_root):
    """Two experts x 3 epochs on the tiny CRC set."""
    out = tmp_path_factory.mktemp("runs") / "buffer"
    cache = tmp_path_factory.mktemp("cache")
    run("buffer", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", cache, *TINY,
        "--num-experts", "2", "--epochs", "3", "--out", out)
    return out
