"""Bag-disjoint, stratified, seeded splits; reload from meta; write_split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtt_fast.data import load_dataset, load_dataset_from_meta
from mtt_fast.data.splits import (
    TEST,
    TRAIN,
    TRAINVAL,
    UNASSIGNED,
    VAL,
    carve_val,
    overlapping_bags,
    parse_fractions,
    resolve_assignment,
    split_bags,
)
from mtt_fast.errors import UserError


def _toy(n_bags_per_class=(20, 10, 4), per_bag=3, seed=0):
    rng = np.random.default_rng(seed)
    labels, bags = [], []
    for c, nb in enumerate(n_bags_per_class):
        for b in range(nb):
            k = int(rng.integers(1, per_bag + 1))
            labels += [c] * k
            bags += [f"c{c}-b{b}"] * k
    perm = rng.permutation(len(labels))
    return np.array(labels)[perm], [bags[i] for i in perm]


def test_split_bags_disjoint_and_stratified():
    labels, bags = _toy()
    a = split_bags(labels, bags, 3, seed=0)
    assert not overlapping_bags(a, bags)
    for c, nb in enumerate((20, 10, 4)):
        cb = {b for b, y in zip(bags, labels) if y == c}
        per = [len({b for b, s in zip(bags, a) if s == k and b in cb}) for k in (TRAIN, VAL, TEST)]
        assert sum(per) == nb
        assert per == {20: [14, 3, 3], 10: [7, 2, 1], 4: [2, 1, 1]}[nb]
        assert all(p >= 1 for p in per)  # each class present in each split


def test_split_is_a_pure_function_of_seed():
    labels, bags = _toy()
    a = split_bags(labels, bags, 3, seed=3)
    b = split_bags(labels, bags, 3, seed=3)
    c = split_bags(labels, bags, 3, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # the item order of the index does not matter, only the (item, bag) pairs
    perm = np.random.default_rng(1).permutation(len(labels))
    d = split_bags(labels[perm], [bags[i] for i in perm], 3, seed=3)
    assert np.array_equal(a[perm], d)


def test_majority_label_decides_bag_class():
    labels = np.array([0, 0, 1, 1, 1, 0])
    bags = ["a", "a", "a", "b", "b", "c"]
    a = split_bags(labels, bags, 2, seed=0, fractions=(0.5, 0.5, 0.0))
    assert not overlapping_bags(a, bags)
    assert set(a.tolist()) <= {TRAIN, VAL}


def test_carve_val_by_count_is_exact_and_stratified():
    labels = np.repeat(np.arange(4), [100, 60, 30, 10])
    bags = [f"i{i}" for i in range(len(labels))]
    a = carve_val(labels, bags, 4, seed=0, count=20)
    assert int((a == VAL).sum()) == 20
    assert np.bincount(labels[a == VAL], minlength=4).tolist() == [10, 6, 3, 1]


def test_resolve_assignment_keeps_official_codes():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    bags = ["p1", "p2", "p3", "p4", "p5", "p6", "t1", "t2"]
    off = np.array([TRAINVAL] * 6 + [TEST] * 2)
    a = resolve_assignment(off, labels, bags, 2, seed=0, val_fraction=0.34)
    assert a[6:].tolist() == [TEST, TEST]
    assert set(a[:6].tolist()) == {TRAIN, VAL}
    free = resolve_assignment(np.full(8, UNASSIGNED), labels, bags, 2, seed=0)
    assert set(free.tolist()) <= {TRAIN, VAL, TEST}


@pytest.mark.parametrize(
    "bad", [[0.5, 0.5], [0.7, 0.2, 0.2], [0.0, 0.5, 0.5], {"train": 0.9, "dev": 0.1}, "0.7"]
)
def test_bad_fractions(bad):
    with pytest.raises(UserError, match="option fractions"):
        parse_fractions(bad)


def test_fractions_option_on_dataset(folder_root, cache):
    with pytest.raises(UserError, match="option fractions"):
        load_dataset("folder", folder_root, options={"fractions": [0.5, 0.6, 0.1]}, cache_dir=cache)
    b = load_dataset(
        "folder",
        folder_root,
        cache_dir=cache,
        progress=False,
        options={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
    )
    assert b.meta()["options"]["fractions"] == [0.6, 0.2, 0.2]


@pytest.mark.parametrize("dataset", ["pg", "crc", "folder"])
def test_bundle_splits_bag_disjoint_and_reload_from_meta(
    dataset, pg_root, crc_root, folder_root, cache, tmp_path
):
    root = {"pg": pg_root, "crc": crc_root, "folder": folder_root}[dataset]
    opts = {"folder": {"bag_regex": r"^(.*-bag\d+)_"}}.get(dataset)
    b = load_dataset(dataset, root, 8, seed=5, options=opts, cache_dir=cache, progress=False)
    sets = [set(b.split(s).bags) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # same seed -> same split; meta round-trips through JSON
    meta = json.loads(json.dumps(b.meta()))
    r = load_dataset_from_meta(meta, cache_dir=cache, progress=False)
    for s in ("train", "val", "test"):
        assert r.split(s).bags == b.split(s).bags
        assert r.split(s).labels.tolist() == b.split(s).labels.tolist()
        assert np.array_equal(r.split(s).get_raw().numpy(), b.split(s).get_raw().numpy())
    assert (r.mean, r.std, r.classes, r.res) == (b.mean, b.std, b.classes, b.res)
    assert r.meta() == b.meta()
    # another seed gives another split (pg/crc/folder all have enough bags)
    c = load_dataset(dataset, root, 8, seed=6, options=opts, cache_dir=cache, progress=False)
    assert any(c.split(s).bags != b.split(s).bags for s in ("train", "val"))


def test_reload_from_moved_root_and_changed_data(tmp_path, cache):
    import shutil

    from tests.fixtures.datasets import make_folder

    root = make_folder(tmp_path / "a", per_class=8, size=8)
    b = load_dataset("folder", root, cache_dir=cache, progress=False)
    meta = b.meta()
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    r = load_dataset_from_meta(meta, root=str(moved), cache_dir=cache, progress=False)
    assert r.root == str(moved)
    assert r.split("test").bags == b.split("test").bags
    # the data changed: the split no longer matches
    (moved / "benign" / "img_0.png").unlink()
    with pytest.raises(UserError, match="no longer gives the recorded split"):
        load_dataset_from_meta(meta, root=str(moved), cache_dir=cache, progress=False)
    load_dataset_from_meta(meta, root=str(moved), cache_dir=cache, progress=False, strict=False)
    with pytest.raises(UserError, match="missing key"):
        load_dataset_from_meta({"name": "folder"})


def test_write_split(pg_root, cache, tmp_path):
    b = load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False)
    path = tmp_path / "run" / "split.json"
    b.write_split(path)
    doc = json.loads(path.read_text())
    assert doc["dataset"] == "pg" and doc["fingerprint"] == b.split_fingerprint()
    assert set(doc["bags"].values()) <= {"train", "val", "test"}
    for s in ("train", "val", "test"):
        assert doc["counts"][s]["images"] == len(b.split(s))
        assert {k for k, v in doc["bags"].items() if v == s} == set(b.split(s).bags)
    assert not list((tmp_path / "run").glob("*.tmp"))
