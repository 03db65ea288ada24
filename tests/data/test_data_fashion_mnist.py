"""Fashion-MNIST from the real idx files (skipped when they are not installed)."""

from __future__ import annotations

import gzip
import os
import shutil
import time

import numpy as np
import pytest
import torch

from mtt_fast.data import load_dataset
from mtt_fast.data.arrays import FASHION_MNIST_DIR
from mtt_fast.errors import UserError

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}",
)


@pytest.fixture(scope="module")
def fmnist():
    t = time.perf_counter()
    b = load_dataset("fashion-mnist", progress=False)
    print(f"\nfashion-mnist first load: {time.perf_counter() - t:.2f} s")
    return b


@needs_fmnist
def test_official_split_and_val_carving(fmnist):
    b = fmnist
    assert b.root == FASHION_MNIST_DIR and b.res == 28 and b.channels == 1
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot"
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    assert b.split("val").class_counts() == [500] * 10  # stratified
    assert b.split("test").class_counts() == [1000] * 10
    assert (b.mean, b.std) == ((0.2860,), (0.3530,))
    assert not set(b.split("train").bags) & set(b.split("val").bags)
    x = b.split("test").get_raw(slice(0, 8))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1


@needs_fmnist
def test_test_split_is_t10k_in_order(fmnist):
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    assert fmnist.split("test").labels.tolist() == labels.tolist()
    assert fmnist.split("test").bags[:2] == ["test/0", "test/1"]


@needs_fmnist
def test_seeded_val_and_options(fmnist):
    a = load_dataset("fashion-mnist", seed=0, progress=False, options={"val_size": 1000})
    b = load_dataset("fashion-mnist", seed=0, progress=False, options={"val_size": 1000})
    c = load_dataset("fashion-mnist", seed=1, progress=False, options={"val_size": 1000})
    assert len(a.split("val")) == 1000 and a.split("val").class_counts() == [100] * 10
    assert a.split("val").bags == b.split("val").bags != c.split("val").bags
    r = load_dataset("fashion-mnist", res=32, progress=False)
    assert r.split("train").get(slice(0, 2)).shape == (2, 1, 32, 32)
    with pytest.raises(UserError, match="option val_size"):
        load_dataset("fashion-mnist", options={"val_size": 60000})
    with pytest.raises(UserError, match="option val_sz"):
        load_dataset("fashion-mnist", options={"val_sz": 10})


@needs_fmnist
def test_missing_and_corrupt_files(tmp_path):
    d = tmp_path / "fm"
    shutil.copytree(FASHION_MNIST_DIR, d)
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", d)
    shutil.copy(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"), d)
    data = (d / "train-labels-idx1-ubyte.gz").read_bytes()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", d)
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz.*expected 5 bytes"):
        load_dataset("fashion-mnist", d)
