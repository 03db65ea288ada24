"""Fixtures shared across test folders: a tiny CRC-layout dataset and a finished tiny store."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY, run
from tests.fixtures.datasets import make_crc


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


@pytest.fixture(scope="module")
def crc_bundle_one_thread(tmp_path_factory):
    """The tiny CRC set loaded as a bundle (16 px), with torch on one thread while the module runs."""
    import torch

    from mtt_fast.data import load_dataset

    tmp = tmp_path_factory.mktemp("crc")
    root = make_crc(tmp / "crc", patients_per_class=4, tiles_per_patient=3, size=64, test_patients_per_class=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_dataset("crc", str(root), 16, progress=False, cache_dir=str(tmp / "cache"))
    torch.set_num_threads(before)
