"""Shared tiny datasets for tests/data (built once per session)."""

from __future__ import annotations

import pytest

from tests.fixtures.datasets import make_crc, make_folder, make_npz, make_pg


@pytest.fixture(scope="session")
def pg_root(tmp_path_factory):
    """PatchGastricADC22 with 4 slides per class, 2 patches each, 300x300 as published."""
    return make_pg(tmp_path_factory.mktemp("pg"), slides_per_class=4, patches_per_slide=2)


@pytest.fixture(scope="session")
def crc_root(tmp_path_factory):
    """TCGA tiles, both cohorts, 224x224 as published."""
    return make_crc(
        tmp_path_factory.mktemp("crc"),
        patients_per_class=4,
        tiles_per_patient=2,
        cohorts=("CRC_DX", "STAD"),
        test_patients_per_class=2,
    )


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"), per_class=10, size=20, bags_per_class=5)


@pytest.fixture(scope="session")
def npz_path(tmp_path_factory):
    return make_npz(tmp_path_factory.mktemp("npz") / "mini.npz")


@pytest.fixture
def cache(tmp_path):
    """A fresh cache directory per test."""
    return str(tmp_path / "cache")
