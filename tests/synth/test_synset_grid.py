"""grid.png: one row per class, each row's class name written in a band at its left."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from mtt_fast.synth import Synset, save_grid
from mtt_fast.synth.synset import grid_row_labels, label_rows

PAD = 2


def _grid(tmp_path, name, channels, res, classes, ipc=2, labelled=True):
    k = len(classes)
    g = torch.Generator().manual_seed(res * 31 + channels)
    images = torch.randn(k * ipc, channels, res, res, generator=g)
    labels = torch.arange(k).repeat_interleave(ipc)
    norm = {"mean": [0.5] * channels, "std": [0.25] * channels}
    path = tmp_path / f"{name}.png"
    save_grid(images, labels, norm, path, num_classes=k, classes=list(classes) if labelled else None)
    return path


def _rows(height, k):
    row = (height - PAD) // k - PAD
    return [(PAD + i * (row + PAD), PAD + i * (row + PAD) + row) for i in range(k)]


@pytest.mark.parametrize("channels,res,classes", [
    (1, 16, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    (3, 224, ["ADI", "LYM", "TUM"]),
    (3, 32, [f"class {i}" for i in range(40)]),
    (1, 28, ["MSS", "MSIMUT"]),
])
def test_rows_carry_their_class_names(tmp_path, channels, res, classes):
    plain = np.asarray(Image.open(_grid(tmp_path, "plain", channels, res, classes, labelled=False)).convert("RGB"))
    path = _grid(tmp_path, "named", channels, res, classes)
    named = np.asarray(Image.open(path).convert("RGB"))
    band = named.shape[1] - plain.shape[1]
    assert named.shape[0] == plain.shape[0] and band > 0
    # the tiles are untouched, the names sit in the band to their left
    assert np.array_equal(named[:, band:], plain)
    rows = _rows(named.shape[0], len(classes))
    inks = []
    for name, (y0, y1) in zip(classes, rows):
        ink = named[y0:y1, :band].min(axis=2) < 128
        assert ink.sum() > 10 * len(name.replace(" ", "")), f"row {name!r}: label band blank"
        inks.append(ink)
    # between rows (the pad lines) nothing is written, and different names look different
    for (_, y1), (y0, _) in pairwise(rows):
        assert (named[y1:y0, :band] == 255).all()
    assert not np.array_equal(inks[0], inks[1])
    assert grid_row_labels(path) == list(classes)
    assert grid_row_labels(tmp_path / "plain.png") is None


def test_synset_save_writes_a_labelled_grid(tmp_path):
    classes = ["ADI", "LYM", "TUM"]
    meta = {"classes": classes, "normalization": {"mean": [0.5], "std": [0.25]}}
    Synset(torch.zeros(3, 1, 8, 8), torch.arange(3), 0.01, meta).save(tmp_path / "syn")
    assert grid_row_labels(tmp_path / "syn" / "grid.png") == classes


def test_label_rows_without_a_scalable_font(monkeypatch):
    """Pillow without FreeType (or before 10.1): the bitmap font, enlarged with the rows."""
    bitmap = getattr(ImageFont, "load_default_imagefont", None) or ImageFont.load_default

    def no_size(size=None):
        if size is not None:
            raise ImportError("The _imagingft C module is not installed")
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", no_size)
    tallest = {}
    for row in (64, 224):
        canvas = np.full((2 * (row + PAD) + PAD, 50, 3), 128, dtype=np.uint8)
        out = label_rows(canvas, ["ADI", "Ankle boot"], pad=PAD)
        band = out.shape[1] - 50
        assert band > 0 and np.array_equal(out[:, band:], canvas)
        heights = []
        for y0, y1 in _rows(out.shape[0], 2):
            ink = out[y0:y1, :band].min(axis=2) < 128
            assert ink.any()
            heights.append(np.ptp(np.flatnonzero(ink.any(axis=1))))
        tallest[row] = max(heights)
    # enlarged for tall rows: not an 11 px line beside 224 px tiles
    assert tallest[224] > tallest[64] and tallest[224] >= 20


def test_long_and_unusual_names_fit(tmp_path):
    canvas = np.full((3 * (64 + PAD) + PAD, 20, 3), 0, dtype=np.uint8)
    names = ["x" * 200, "naïve → ünïcode", ""]
    short = label_rows(canvas, ["x" * 22 + "..", "a", "b"], pad=PAD)
    out = label_rows(canvas, names, pad=PAD)
    assert out.shape[1] == short.shape[1]  # cut at 24 characters
    for y0, y1 in _rows(out.shape[0], 3):
        assert (out[y0:y1, : out.shape[1] - 20].min(axis=2) < 128).any()
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        save_grid(torch.zeros(3, 1, 4, 4), torch.arange(3), {"mean": [0.0], "std": [1.0]}, tmp_path / "g.png",
                  num_classes=3, classes=["a", "b"])
