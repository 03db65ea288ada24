"""In-memory array datasets: MedMNIST-style .npz files and Fashion-MNIST idx files."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from mtt_fast.data.imageio import read_idx
from mtt_fast.data.source import SourceIndex, check_options
from mtt_fast.data.splits import TEST, TRAIN, TRAINVAL, VAL
from mtt_fast.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

NPZ_DEFAULTS: dict[str, Any] = {"classes": None}
FASHION_DEFAULTS: dict[str, Any] = {"val_size": 5000}
NPZ_KEYS = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 [N,H,W] or [N,H,W,C] -> uint8 [N,C,H,W]."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[-1] not in (1, 3):
            raise UserError(f"{where}: images must have 1 or 3 channels, got shape {images.shape}")
        images = images.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"{where}: images must be N,H,W or N,H,W,C, got shape {images.shape}")
    if images.dtype != np.uint8:
        if images.dtype.kind == "f" and images.size and images.max() <= 1.0:
            images = np.round(images * 255.0)
        images = np.clip(images, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images)


def _labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{where}: labels must be N or N,1 matching {n} images, got {labels.shape}")
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"{where}: labels must be non-negative integers")
    return labels.astype(np.int64)


def index_npz(root: str, options: dict | None) -> tuple[SourceIndex, dict[str, Any]]:
    """Index a MedMNIST-style .npz file (`root` is the file)."""
    opts = check_options("npz", options, NPZ_DEFAULTS)
    if not os.path.isfile(root):
        raise UserError(f"--data-root: {root} is not a file (dataset npz wants the .npz file)")
    try:
        with np.load(root, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise UserError(f"{root}: missing key(s) {', '.join(missing)}")
            arrays = {k: z[k] for k in NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {root}: {exc}") from None

    images, labels, official = [], [], []
    for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        im = _to_nchw(arrays[f"{name}_images"], f"{root} key {name}_images")
        lb = _labels(arrays[f"{name}_labels"], len(im), f"{root} key {name}_labels")
        images.append(im)
        labels.append(lb)
        official.append(np.full(len(im), code, dtype=np.int64))
    shapes = {im.shape[1:] for im in images}
    if len(shapes) != 1:
        raise UserError(f"{root}: train/val/test images differ in shape: {sorted(shapes)}")
    all_labels = np.concatenate(labels)
    k = int(all_labels.max()) + 1 if all_labels.size else 0
    if opts["classes"] is not None:
        classes = [str(c) for c in opts["classes"]]
        if len(classes) < k:
            raise UserError(f"option classes: {len(classes)} names but labels go up to {k - 1}")
    else:
        classes = [str(i) for i in range(k)]
    opts["classes"] = classes
    c, h, w = images[0].shape[1:]
    bags = [
        f"{name}/{i}" for name, im in zip(("train", "val", "test"), images) for i in range(len(im))
    ]
    src = SourceIndex(
        root=root,
        classes=classes,
        channels=int(c),
        native_res=int(h) if h == w else 0,
        preset=None,
        labels=all_labels,
        bags=bags,
        official=np.concatenate(official),
        images=np.concatenate(images),
    )
    train_counts = np.bincount(labels[0], minlength=len(classes))
    empty = [cl for cl, n in zip(classes, train_counts) if n == 0]
    if empty:
        raise UserError(f"{root}: class(es) {empty} have no training images")
    return src, opts


def _find_idx(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise UserError(f"missing file {os.path.join(root, stem + '.gz')} (Fashion-MNIST)")


def index_fashion_mnist(root: str, options: dict | None) -> tuple[SourceIndex, dict[str, Any]]:
    """Index Fashion-MNIST from its four idx(.gz) files in `root`."""
    opts = check_options("fashion-mnist", options, FASHION_DEFAULTS)
    arrays = {k: read_idx(_find_idx(root, stem)) for k, stem in FASHION_MNIST_FILES.items()}
    tr_im, te_im = arrays["train_images"], arrays["test_images"]
    tr_lb, te_lb = arrays["train_labels"], arrays["test_labels"]
    for key, im, lb in (("train", tr_im, tr_lb), ("t10k", te_im, te_lb)):
        if im.ndim != 3 or lb.ndim != 1 or len(im) != len(lb):
            raise UserError(
                f"{root}: {key} images {im.shape} and labels {lb.shape} do not match (Fashion-MNIST)"
            )
    vs = opts["val_size"]
    if not isinstance(vs, int) or isinstance(vs, bool) or not 0 <= vs < len(tr_im):
        raise UserError(f"option val_size: must be an integer in [0, {len(tr_im)}), got {vs!r}")
    images = np.concatenate([tr_im, te_im])[:, None]
    labels = np.concatenate([tr_lb, te_lb]).astype(np.int64)
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{root}: Fashion-MNIST labels must be in 0..9")
    official = np.concatenate(
        [np.full(len(tr_im), TRAINVAL, dtype=np.int64), np.full(len(te_im), TEST, dtype=np.int64)]
    )
    bags = [f"train/{i}" for i in range(len(tr_im))] + [f"test/{i}" for i in range(len(te_im))]
    src = SourceIndex(
        root=root,
        classes=list(FASHION_MNIST_CLASSES),
        channels=1,
        native_res=int(tr_im.shape[1]),
        preset="fashion-mnist",
        labels=labels,
        bags=bags,
        official=official,
        images=np.ascontiguousarray(images),
    )
    return src, opts
