"""ImageSplit access (get/subset/class_indices/batches), stats, and user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtt_fast.data import (
    DatasetBundle,
    ExpertTransform,
    ImageSplit,
    dataset_stats,
    format_stats,
    load_dataset,
)
from mtt_fast.errors import UserError


@pytest.fixture
def pg(pg_root, cache):
    return load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False)


def test_bundle_attributes(pg):
    assert isinstance(pg, DatasetBundle)
    assert pg.name == "pg" and pg.num_classes == 3 and pg.channels == 3 and pg.res == 8
    assert isinstance(pg.split("train"), ImageSplit)
    meta = pg.meta()
    assert json.loads(json.dumps(meta)) == meta
    for key in (
        "name",
        "root",
        "res",
        "options",
        "seed",
        "normalization",
        "mean",
        "std",
        "classes",
        "channels",
    ):
        assert key in meta
    with pytest.raises(UserError, match="option split"):
        pg.split("dev")


def test_get_index_types(pg):
    sp = pg.split("train")
    n = len(sp)
    allx = sp.get()
    assert allx.shape == (n, 3, 8, 8) and allx.dtype == torch.float32
    idx = [3, 0, 3, n - 1]
    ref = allx[idx]
    assert torch.equal(sp.get(torch.tensor(idx)), ref)
    assert torch.equal(sp.get(np.array(idx)), ref)
    assert torch.equal(sp.get(idx), ref)
    assert torch.equal(sp.get(slice(1, 3)), allx[1:3])
    assert torch.equal(sp.get([-1]), allx[-1:])
    assert sp.get([]).shape == (0, 3, 8, 8)
    with pytest.raises(IndexError):
        sp.get([n])


def test_class_indices_and_subset(pg):
    sp = pg.split("train")
    for c in range(3):
        ii = sp.class_indices(c)
        assert ii.dtype == torch.long and (sp.labels[ii] == c).all()
        assert torch.equal(ii, sp.class_indices(pg.classes[c]))
    sub = sp.subset(sp.class_indices(1))
    assert len(sub) == len(sp.class_indices(1)) and (sub.labels == 1).all()
    assert torch.equal(sub.get(), sp.get(sp.class_indices(1)))
    assert sub.bags == [sp.bags[i] for i in sp.class_indices(1).tolist()]
    with pytest.raises(UserError, match="unknown class"):
        sp.class_indices("signet")


def test_batches_cover_the_split_once(pg):
    sp = pg.split("train")
    seen, ys = [], []
    g = torch.Generator().manual_seed(0)
    for x, y in sp.batches(5, generator=g):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == torch.long
        seen.append(x)
        ys.append(y)
    x = torch.cat(seen)
    y = torch.cat(ys)
    assert len(x) == len(sp)
    assert sorted(y.tolist()) == sorted(sp.labels.tolist())
    # a shuffled permutation of get()
    order = torch.randperm(len(sp), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, sp.get(order))
    assert torch.equal(y, sp.labels[order])


def test_batches_options(pg):
    sp = pg.split("train")
    n = len(sp)
    sizes = [len(x) for x, _ in sp.batches(5, generator=torch.Generator(), drop_last=True)]
    assert sizes == [5] * (n // 5)
    xs = [x for x, _ in sp.batches(4, generator=torch.Generator(), shuffle=False)]
    assert torch.equal(torch.cat(xs), sp.get())
    a = [x for x, _ in sp.batches(4, generator=torch.Generator().manual_seed(1))]
    b = [x for x, _ in sp.batches(4, generator=torch.Generator().manual_seed(1))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(UserError, match="batch_size"):
        next(sp.batches(0, generator=torch.Generator()))


def test_batches_with_transform(pg):
    sp = pg.split("train")
    t = ExpertTransform(brightness=None, saturation=None, hue=None, hflip=1.0, vflip=0.0)
    ((x, _),) = list(sp.batches(len(sp), generator=torch.Generator(), shuffle=False, transform=t))
    assert torch.allclose(x, sp.get().flip(-1))
    # transform draws come from the same generator, after the shuffle: reproducible
    t2 = ExpertTransform()
    a = next(sp.batches(4, generator=torch.Generator().manual_seed(7), transform=t2))[0]
    b = next(sp.batches(4, generator=torch.Generator().manual_seed(7), transform=t2))[0]
    assert torch.equal(a, b)
    raw = sp.denormalize(a)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_on_cuda(pg):
    sp = pg.split("train")
    x, y = next(
        sp.batches(4, generator=torch.Generator(), device="cuda", transform=ExpertTransform())
    )
    assert x.is_cuda and y.is_cuda
    assert torch.allclose(sp.get([0, 1], device="cuda").cpu(), sp.get([0, 1]))


def test_stats(pg):
    s = dataset_stats(pg)
    assert json.loads(json.dumps(s)) == s
    tr = s["splits"]["train"]
    assert tr["images"] == len(pg.split("train"))
    assert list(tr["class_counts"]) == pg.classes
    assert tr["imbalance_ratio"] == pytest.approx(
        max(tr["class_counts"].values()) / min(tr["class_counts"].values())
    )
    assert sum(tr["bags_per_class"].values()) == tr["bags"] == len(set(pg.split("train").bags))
    assert s["left_out"]["slides_without_patches"] == 1
    assert len(s["train_mean"]) == 3 and len(s["train_std"]) == 3
    text = format_stats(s)
    for word in (
        "well",
        "moderate",
        "poorly",
        "imbalance",
        "Papillary adenocarcinoma",
        "slides_without_patches",
    ):
        assert word in text
    assert "train_mean" not in dataset_stats(pg, compute_mean_std=False)


def test_stats_imbalance_none_when_class_missing(tmp_path, cache):
    from tests.fixtures.datasets import make_folder

    root = make_folder(tmp_path / "f", per_class=2, size=8)
    with pytest.raises(UserError, match="class 'benign' has 2 train / 0 val / 0 test"):
        load_dataset("folder", root, cache_dir=cache, progress=False)
    b = load_dataset("folder", root, cache_dir=cache, progress=False, check_splits=False)
    s = dataset_stats(b)
    # 2 bags per class cannot fill three splits: val and test stay empty
    assert s["splits"]["train"]["imbalance_ratio"] == 1.0
    assert s["splits"]["val"]["images"] == 0 and s["splits"]["val"]["imbalance_ratio"] is None
    assert "inf" in format_stats(s)


def test_user_errors(tmp_path, pg_root, cache):
    with pytest.raises(UserError) as ei:
        load_dataset("imagenet", tmp_path)
    for name in ("pg", "crc", "folder", "npz", "fashion-mnist"):
        assert name in str(ei.value)
    with pytest.raises(UserError, match="--data-root.*does not exist"):
        load_dataset("pg", tmp_path / "nope")
    with pytest.raises(UserError, match="--data-root.*required"):
        load_dataset("crc", None)
    with pytest.raises(UserError, match="option cohrt.*not an option of dataset pg"):
        load_dataset("pg", pg_root, 8, options={"cohrt": "x"}, cache_dir=cache)
    with pytest.raises(UserError, match="--res"):
        load_dataset("pg", pg_root, 0, cache_dir=cache)
    with pytest.raises(UserError, match="--seed"):
        load_dataset("pg", pg_root, 8, seed="1", cache_dir=cache)
    # one line
    try:
        load_dataset("pg", tmp_path / "nope")
    except UserError as e:
        assert "\n" not in str(e)
