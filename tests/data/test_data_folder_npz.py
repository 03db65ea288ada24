"""The generic folder reader and the MedMNIST-style npz reader."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mtt_fast.data import load_dataset
from mtt_fast.errors import UserError
from tests.fixtures.datasets import make_folder, make_npz


def test_folder_flat_each_file_its_own_bag(tmp_path, cache):
    root = make_folder(tmp_path / "f", classes=("b", "a", "c"), per_class=7, size=20)
    b = load_dataset("folder", root, cache_dir=cache, progress=False)
    assert b.classes == ["a", "b", "c"]  # sorted folder names
    assert b.res == 20 and b.channels == 3
    bags = [x for s in b.splits.values() for x in s.bags]
    assert len(bags) == len(set(bags)) == 21
    assert sum(len(s) for s in b.splits.values()) == 21
    for s in b.splits.values():
        for bag, y in zip(s.bags, s.labels.tolist()):
            assert bag.split(os.sep)[0] == b.classes[y]


def test_folder_bag_regex(folder_root, cache):
    b = load_dataset(
        "folder",
        folder_root,
        8,
        cache_dir=cache,
        progress=False,
        options={"bag_regex": r"^(.*-bag\d+)_"},
    )
    allbags = {x for s in b.splits.values() for x in s.bags}
    assert len(allbags) == 10  # 2 classes x 5 bags
    sets = [set(b.split(s).bags) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_folder_bad_regex(folder_root, cache):
    with pytest.raises(UserError, match="option bag_regex: invalid"):
        load_dataset("folder", folder_root, 8, cache_dir=cache, options={"bag_regex": "(["})
    with pytest.raises(UserError, match="option bag_regex.*capturing group"):
        load_dataset("folder", folder_root, 8, cache_dir=cache, options={"bag_regex": "bag"})
    with pytest.raises(UserError, match="option bag_regex.*does not match file"):
        load_dataset("folder", folder_root, 8, cache_dir=cache, options={"bag_regex": r"^(zzz)"})


def test_folder_official_splits(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=5, size=12, splits=True)
    b = load_dataset("folder", root, cache_dir=cache, progress=False)
    for s in ("train", "val", "test"):
        sp = b.split(s)
        assert len(sp) == 10
        assert all(bag.startswith(s + os.sep) for bag in sp.bags)
    shutil.rmtree(root / "val")
    c = load_dataset("folder", root, cache_dir=cache, progress=False, options={"val_fraction": 0.2})
    assert len(c.split("test")) == 10 and len(c.split("val")) == 2 and len(c.split("train")) == 8
    assert all(bag.startswith("train" + os.sep) for bag in c.split("val").bags)


def test_folder_classes_option_grayscale_and_res(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=4, size=10, channels=1)
    b = load_dataset(
        "folder", root, 6, cache_dir=cache, progress=False, options={"classes": ["tumor", "benign"]}
    )
    assert b.classes == ["tumor", "benign"] and b.channels == 1
    assert b.split("train").get().shape[1:] == (1, 6, 6)
    with pytest.raises(UserError, match="option classes"):
        load_dataset("folder", root, 6, cache_dir=cache, options={"classes": ["tumor", "normal"]})
    rgb = load_dataset("folder", root, 6, cache_dir=cache, progress=False, options={"channels": 3})
    assert rgb.channels == 3


def test_folder_empty_class_and_non_square(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=3, size=8)
    (root / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        load_dataset("folder", root, cache_dir=cache)
    shutil.rmtree(root / "empty")
    Image.new("RGB", (10, 6)).save(root / "benign" / "aaa.png")
    with pytest.raises(UserError, match="--res"):
        load_dataset("folder", root, cache_dir=cache)
    b = load_dataset("folder", root, 8, cache_dir=cache, progress=False)
    assert b.res == 8
    empty_root = tmp_path / "nothing"
    empty_root.mkdir()
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("folder", empty_root, 8, cache_dir=cache)


def test_folder_extensions(tmp_path, cache):
    for ext in ("jpg", "bmp", "tif"):
        root = make_folder(tmp_path / ext, per_class=3, size=8, ext=ext)
        b = load_dataset("folder", root, cache_dir=cache, progress=False)
        assert sum(len(s) for s in b.splits.values()) == 6


def test_npz_loader(npz_path):
    b = load_dataset("npz", npz_path, progress=False)
    assert b.res == 28 and b.channels == 1 and b.classes == ["0", "1", "2"]
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [30, 9, 12]
    with np.load(npz_path) as z:
        ref = z["val_images"]
        lab = z["val_labels"][:, 0]
    val = b.split("val")
    assert torch.equal(val.get_uint8()[:, 0], torch.from_numpy(ref))
    assert val.labels.tolist() == lab.tolist()
    r = load_dataset("npz", npz_path, 16, progress=False, options={"classes": ["x", "y", "z"]})
    assert r.classes == ["x", "y", "z"]
    assert r.split("val").get().shape == (9, 1, 16, 16)
    # resized on the fly but to uint8 levels, identical whatever the batch
    one = r.split("val").get_raw([3])
    many = r.split("val").get_raw()[3:4]
    assert torch.equal(one, many)
    assert torch.equal((one * 255).round() / 255, one)


def test_npz_rgb_and_flat_labels(tmp_path):
    p = make_npz(tmp_path / "rgb.npz", channels=3, labels_2d=False, size=12)
    b = load_dataset("npz", p, progress=False)
    assert b.channels == 3 and b.split("train").get().shape == (30, 3, 12, 12)


def test_npz_errors(tmp_path):
    p = make_npz(tmp_path / "bad.npz", drop_key="test_labels")
    with pytest.raises(UserError, match=f"{p}.*missing key.*test_labels"):
        load_dataset("npz", p)
    q = tmp_path / "garbage.npz"
    q.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="garbage.npz"):
        load_dataset("npz", q)
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("npz", tmp_path)
    r = tmp_path / "shape.npz"
    np.savez(
        r,
        **{
            k: np.zeros((2, 4, 4), np.uint8) if "images" in k else np.zeros(3, np.int64)
            for k in (
                "train_images",
                "train_labels",
                "val_images",
                "val_labels",
                "test_images",
                "test_labels",
            )
        },
    )
    with pytest.raises(UserError, match="train_labels"):
        load_dataset("npz", r)
    with pytest.raises(UserError, match="option classes"):
        load_dataset("npz", make_npz(tmp_path / "ok.npz"), options={"classes": ["a"]})
