"""The on-disk uint8 cache: reuse, invalidation, atomic writes, worker pool, bad images."""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import pytest

from mtt_fast.data import cache as cache_mod
from mtt_fast.data import imageio, load_dataset
from mtt_fast.errors import UserError
from tests.fixtures.datasets import make_folder


def _npys(d):
    return sorted(glob.glob(os.path.join(d, "*.npy")))


def _forbid_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoded an image although the cache was valid")

    monkeypatch.setattr(imageio, "decode_image", boom)


def test_second_load_does_not_decode(pg_root, cache, monkeypatch):
    a = load_dataset("pg", pg_root, 12, cache_dir=cache, progress=False)
    files = _npys(cache)
    assert len(files) == 1
    arr = np.load(files[0], mmap_mode="r")
    assert arr.dtype == np.uint8 and arr.shape[1:] == (3, 12, 12)
    mtime = os.stat(files[0]).st_mtime_ns
    _forbid_decoding(monkeypatch)
    b = load_dataset("pg", pg_root, 12, cache_dir=cache, progress=False)
    assert os.stat(files[0]).st_mtime_ns == mtime
    assert np.array_equal(a.split("train").get_raw().numpy(), b.split("train").get_raw().numpy())
    assert isinstance(b.split("train")._store.array, np.memmap)


def test_key_changes_with_res_and_files(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=4, size=16)
    load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    load_dataset("folder", root, 12, cache_dir=cache, progress=False)
    assert len(_npys(cache)) == 2
    # same names, new content (size/mtime change) -> new cache
    p = root / "benign" / "img_0.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 0, 0)).save(p)
    os.utime(p, ns=(1, 1))
    b = load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    assert len(_npys(cache)) == 3
    bag = os.path.join("benign", "img_0.png")
    (s,) = [s for s in b.splits.values() if bag in s.bags]
    x = s.get_uint8([s.bags.index(bag)])
    assert x[0, 0].float().mean() == 255 and x[0, 1].float().mean() == 0


def test_failed_build_leaves_no_cache(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", per_class=4, size=16)
    calls = {"n": 0}
    real = imageio.decode_image

    def flaky(path, res, channels):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the build were interrupted midway
        return real(path, res, channels)

    monkeypatch.setattr(imageio, "decode_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    assert os.listdir(cache) == []  # neither a final file nor a temp file
    monkeypatch.setattr(imageio, "decode_image", real)
    b = load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    assert len(_npys(cache)) == 1 and len(b.split("train")) > 0


def test_killed_build_and_corrupt_cache_are_rebuilt(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=4, size=16)
    a = load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    final = _npys(cache)[0]
    ref = np.load(final).copy()
    va = a.split("val").get_raw().numpy()
    del a  # drop its memmap before the file is damaged in place below
    # a stale temp file of a killed build is never mistaken for the cache
    with open(final + ".12345.tmp", "wb") as f:
        f.write(b"garbage")
    # a truncated final file (e.g. copied half-way) is detected and rebuilt
    with open(final, "r+b") as f:
        f.truncate(200)
    b = load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    assert np.array_equal(np.load(final), ref)
    assert np.array_equal(va, b.split("val").get_raw().numpy())


def test_worker_pool_matches_in_process(tmp_path):
    root = make_folder(tmp_path / "f", per_class=70, size=24, classes=("a", "b"))
    d0, d2 = str(tmp_path / "c0"), str(tmp_path / "c2")
    load_dataset("folder", root, 16, cache_dir=d0, workers=0, progress=False)
    load_dataset("folder", root, 16, cache_dir=d2, workers=2, progress=False)
    assert np.array_equal(np.load(_npys(d0)[0]), np.load(_npys(d2)[0]))


def test_worker_pool_reports_bad_file(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=70, size=8, classes=("a", "b"))
    bad = root / "b" / "img_3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match=re.escape(f"cannot read image {bad}")):
        load_dataset("folder", root, 8, cache_dir=cache, workers=2, progress=False)
    assert _npys(cache) == []


def test_missing_image_names_the_file(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=3, size=8)
    p = str(root / "tumor" / "img_1.png")
    with pytest.raises(UserError, match=re.escape(f"cannot read image {p}")):
        imageio.decode_image(p + ".gone", 8, 3)
    # an empty file
    open(p, "wb").close()
    with pytest.raises(UserError, match=re.escape(f"cannot read image {p}")):
        load_dataset("folder", root, 8, cache_dir=cache, progress=False)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "envcache"))
    assert cache_mod.default_cache_dir() == str(tmp_path / "envcache")
    monkeypatch.delenv("MTT_FAST_CACHE")
    assert cache_mod.default_cache_dir().endswith(os.path.join(".cache", "mtt-fast"))
    root = make_folder(tmp_path / "f", per_class=3, size=8)
    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "envcache"))
    load_dataset("folder", root, progress=False)
    assert len(_npys(str(tmp_path / "envcache"))) == 1
