"""A generic image folder: one subfolder per class, optionally under train/val/test.

    <root>/<class>/**/*.{png,jpg,jpeg,tif,tiff,bmp}
    <root>/{train,val,test}/<class>/...      (used when <root>/train and <root>/test exist;
                                              val is carved from train when <root>/val is absent)

Options: ``bag_regex`` (a regular expression searched in the file name; its first group is
the bag, e.g. the slide or patient; default: every file is its own bag), ``classes`` (a list
fixing the class order; default sorted folder names), ``channels`` (1 or 3; default from the
first image), ``fractions`` and ``val_fraction``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from mtt_fast.data.imageio import probe_image
from mtt_fast.data.source import SourceIndex, check_options, scan_images
from mtt_fast.data.splits import TEST, TRAIN, TRAINVAL, UNASSIGNED, VAL
from mtt_fast.errors import UserError

DEFAULTS: dict[str, Any] = {
    "bag_regex": None,
    "classes": None,
    "channels": None,
    "fractions": [0.7, 0.15, 0.15],
    "val_fraction": 0.15,
}


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def index(root: str, options: dict | None) -> tuple[SourceIndex, dict[str, Any]]:
    """Index an image folder. Returns (index, resolved options)."""
    opts = check_options("folder", options, DEFAULTS)
    regex = None
    if opts["bag_regex"] is not None:
        try:
            regex = re.compile(str(opts["bag_regex"]))
        except re.error as exc:
            raise UserError(f"option bag_regex: invalid regular expression: {exc}") from None
        if regex.groups < 1:
            raise UserError("option bag_regex: needs a capturing group (the bag)")
    vf = opts["val_fraction"]
    if not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise UserError(f"option val_fraction: must be in [0, 1), got {vf!r}")

    top = _subdirs(root)
    official = "train" in top and ("test" in top or "val" in top)
    if official:
        parts = [
            (s, code) for s, code in (("train", TRAIN), ("val", VAL), ("test", TEST)) if s in top
        ]
        if "val" not in top:
            parts[0] = ("train", TRAINVAL)
    else:
        parts = [("", UNASSIGNED)]

    found: set[str] = set()
    for sub, _ in parts:
        found.update(_subdirs(os.path.join(root, sub)))
    if opts["classes"] is not None:
        classes = [str(c) for c in opts["classes"]]
        missing = [c for c in classes if c not in found]
        if missing:
            raise UserError(f"option classes: no folder for class(es) {missing} under {root}")
    else:
        classes = sorted(found)
    if not classes:
        raise UserError(f"--data-root: {root} has no class subfolders")
    opts["classes"] = classes

    entries: list[tuple[str, int, int, int, str, int]] = []
    for sub, code in parts:
        for ci, cls in enumerate(classes):
            d = os.path.join(root, sub, cls)
            if not os.path.isdir(d):
                continue
            for rel, size, mtime in scan_images(d, root, recursive=True):
                if regex is None:
                    bag = rel
                else:
                    m = regex.search(os.path.basename(rel))
                    if m is None or m.group(1) is None:
                        raise UserError(
                            f"option bag_regex: {regex.pattern!r} does not match file {rel}"
                        )
                    bag = m.group(1)
                entries.append((rel, size, mtime, ci, bag, code))
    entries.sort()
    labels = np.array([e[3] for e in entries], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise UserError(f"--data-root: class folder(s) {empty} under {root} contain no images")

    if official:
        split_of: dict[str, int] = {}
        for e in entries:
            s = VAL if e[5] == VAL else (TEST if e[5] == TEST else TRAIN)
            if split_of.setdefault(e[4], s) != s:
                raise UserError(
                    f"option bag_regex: bag {e[4]!r} occurs in more than one of the "
                    f"train/val/test folders of {root}"
                )

    channels = opts["channels"]
    first = os.path.join(root, entries[0][0])
    ch0, w, h = probe_image(first)
    if channels is None:
        channels = ch0
    if channels not in (1, 3):
        raise UserError(f"option channels: must be 1 or 3, got {channels!r}")
    opts["channels"] = channels
    native = w if w == h else 0  # 0: the loader asks for --res

    src = SourceIndex(
        root=root,
        classes=classes,
        channels=int(channels),
        native_res=native,
        preset=None,
        labels=labels,
        bags=[e[4] for e in entries],
        official=np.array([e[5] for e in entries], dtype=np.int64),
        files=[e[0] for e in entries],
        file_stats=[(e[1], e[2]) for e in entries],
        left_out={},
    )
    return src, opts
