"""Normalization presets, auto/compute/none/explicit, and the normalize helpers."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.data import NORMALIZATION_PRESETS, load_dataset
from mtt_fast.errors import UserError


def test_preset_values_match_the_paper():
    assert NORMALIZATION_PRESETS["crc"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert NORMALIZATION_PRESETS["pg"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert NORMALIZATION_PRESETS["imagenet"] == NORMALIZATION_PRESETS["pg"]
    assert NORMALIZATION_PRESETS["fashion-mnist"] == ((0.2860,), (0.3530,))


def test_auto_uses_the_dataset_preset(pg_root, crc_root, cache):
    pg = load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False)
    assert (pg.mean, pg.std) == NORMALIZATION_PRESETS["pg"]
    crc = load_dataset("crc", crc_root, 8, cache_dir=cache, progress=False)
    assert (crc.mean, crc.std) == NORMALIZATION_PRESETS["crc"]
    other = load_dataset(
        "crc", crc_root, 8, cache_dir=cache, progress=False, normalization="imagenet"
    )
    assert (other.mean, other.std) == NORMALIZATION_PRESETS["imagenet"]
    assert other.meta()["normalization"] == "imagenet"


def test_compute_and_auto_for_folder_npz(folder_root, npz_path, cache):
    b = load_dataset("folder", folder_root, cache_dir=cache, progress=False)
    x = b.split("train").get_raw()
    assert b.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert b.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-4)
    # normalized train data has mean ~0, std ~1 per channel
    z = b.split("train").get()
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (z.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    n = load_dataset("npz", npz_path, progress=False)
    assert n.channels == 1 and len(n.mean) == 1


def test_compute_on_preset_dataset(pg_root, cache):
    b = load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False, normalization="compute")
    x = b.split("train").get_raw()
    assert b.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)


def test_none_and_explicit(npz_path):
    b = load_dataset("npz", npz_path, progress=False, normalization="none")
    assert b.mean == (0.0,) and b.std == (1.0,)
    sp = b.split("val")
    assert torch.equal(sp.get(), sp.get_raw())
    e = load_dataset("npz", npz_path, progress=False, normalization={"mean": [0.5], "std": [0.25]})
    assert e.mean == (0.5,) and e.std == (0.25,)
    assert torch.allclose(e.split("val").get(), (sp.get_raw() - 0.5) / 0.25)


def test_bad_normalization(npz_path):
    with pytest.raises(UserError, match="option normalization.*unknown"):
        load_dataset("npz", npz_path, normalization="zscore")
    with pytest.raises(UserError, match="option normalization.*3 channel"):
        load_dataset("npz", npz_path, normalization="crc")
    with pytest.raises(UserError, match="option normalization"):
        load_dataset("npz", npz_path, normalization={"mean": [0.5, 0.5], "std": [1, 1]})
    with pytest.raises(UserError, match="option normalization"):
        load_dataset("npz", npz_path, normalization={"mean": [0.5]})


def test_normalize_denormalize_roundtrip(pg_root, cache):
    b = load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False)
    sp = b.split("train")
    raw = sp.get_raw(slice(0, 3))
    z = sp.get(slice(0, 3))
    assert torch.allclose(z, b.normalize(raw))
    assert torch.allclose(b.denormalize(z), raw, atol=1e-6)
    assert torch.allclose(sp.denormalize(sp.normalize(raw)), raw, atol=1e-6)
    m = torch.tensor(b.mean).view(1, 3, 1, 1)
    s = torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose(z, (raw - m) / s)
