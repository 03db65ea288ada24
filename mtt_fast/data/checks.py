"""The dataset checks every stage relies on: at least two classes, every class in every split.

Each failure is one line naming the dataset root, the class, its counts, why, and the option
that fixes it (the explanations are per loader: split by bag, val carved from an official
train part, an official part missing the class).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from mtt_fast.data import crc
from mtt_fast.data.source import SourceIndex
from mtt_fast.data.splits import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    TRAINVAL,
    UNASSIGNED,
    VAL,
    bags_of_class,
    class_split_counts,
)
from mtt_fast.errors import UserError

#: what one bag (the unit a split never cuts) is, per dataset
_BAG_WORDS = {"pg": "slide", "crc": "patient"}


def _bag_word(name: str, opts: dict[str, Any]) -> str:
    if name in _BAG_WORDS:
        return _BAG_WORDS[name]
    if name == "folder" and opts.get("bag_regex") is not None:
        return "bag"
    return "image"


def check_two_classes(name: str, root: str, src: SourceIndex, options: dict | None) -> None:
    """At least two classes, or one line saying where the single class came from."""
    n = len(src.classes)
    if n >= 2:
        return
    given = bool(options and options.get("classes") is not None)
    if name == "folder":
        how = (
            "option classes names fewer than 2 class folders"
            if given
            else f"{root} needs one subfolder per class (<class>/*.png)"
        )
    elif name == "pg":
        how = "option classes (class -> list of subtypes) maps fewer than 2 classes"
    elif name == "npz":
        how = "the file's labels hold fewer than 2 values"
    else:
        how = "the dataset has fewer than 2 classes"
    names = ", ".join(map(repr, src.classes)) or "none"
    raise UserError(f"{root}: dataset {name} has {n} class ({names}); at least 2 are needed: {how}")


def _leave_out_hint(name: str, classes: list[str], c: int) -> str:
    """How to drop class `c` (where the dataset has an option for it and 2 classes remain)."""
    others = [x for i, x in enumerate(classes) if i != c]
    if len(others) < 2:
        return ""
    if name == "folder":
        return f", or leave it out: --data-option 'classes={json.dumps(others)}'"
    if name == "pg":
        return (
            ", or leave it out or merge it into another (option classes: class -> list of subtypes)"
        )
    return ""


def _split_reason(
    name: str,
    root: str,
    src: SourceIndex,
    opts: dict[str, Any],
    fractions: tuple[float, float, float],
    c: int,
    split: int,
) -> str:
    """Why class `c` has no image in `split`, and the option that fixes it."""
    bag = _bag_word(name, opts)
    y = np.asarray(src.labels, dtype=np.int64)
    off = np.asarray(src.official, dtype=np.int64)
    bags = np.asarray(src.bags, dtype=object)
    sname = SPLIT_NAMES[split]
    free = off == UNASSIGNED
    tv = off == TRAINVAL
    if free.any() and (free & (y == c)).any():
        # no official split: bags of each class are cut by option fractions
        n_bags = bags_of_class(y[free], bags[free], len(src.classes), c)
        needed = sum(1 for f in fractions if f > 0)
        fr = "[" + ",".join(f"{f:g}" for f in fractions) + "]"
        if fractions[split] <= 0:
            return (
                f"option fractions {fr} gives {sname} nothing: "
                "--data-option 'fractions=[0.7,0.15,0.15]'"
            )
        if n_bags == 0:
            return f"its images lie in {bag}s whose majority is another class (option bag_regex)"
        if n_bags < needed:
            return (
                f"it has {n_bags} {bag}(s) and a split by {bag} needs at least {needed} per "
                f"class: add {bag}s of it{_leave_out_hint(name, src.classes, c)}"
            )
        return f"its {n_bags} {bag}s are cut by option fractions {fr}: change them"
    if split in (TRAIN, VAL) and tv.any() and (tv & (y == c)).any():
        # val is carved from the official train part, by bag
        n_bags = bags_of_class(y[tv], bags[tv], len(src.classes), c)
        total = len(set(bags[tv].tolist()))
        if opts.get("val_size") is not None:
            vs = opts["val_size"]
            if split == VAL:
                need = math.ceil(total / max(n_bags, 1))
                return (
                    f"option val_size {vs} is shared by the classes in proportion to their "
                    f"{bag}s and leaves it none: --data-option val_size={need} or more"
                )
            return f"option val_size {vs} takes all of its {n_bags} {bag}(s): lower it"
        if split == VAL and n_bags < 2:
            return (
                f"it has {n_bags} {bag} in the official train part, and val is carved from "
                f"there by {bag} (one must stay in train): add {bag}s of it"
                f"{_leave_out_hint(name, src.classes, c)}"
            )
        vf = opts.get("val_fraction")
        if split == VAL and vf is not None and float(vf) <= 0:
            return f"option val_fraction is {vf}: --data-option val_fraction=0.15"
        return f"val is carved from its {n_bags} {bag}s by option val_fraction {vf}: change it"
    # an official part of the dataset holds none of it
    cls = src.classes[c]
    if name == "crc":
        cohorts = crc.COHORTS.get(str(opts.get("cohort")), [str(opts.get("cohort"))])
        part = {TRAIN: "TRAIN", VAL: "TRAIN", TEST: "TEST"}[split]
        where = " and ".join(f"{co}_{part}/{cls}" for co in cohorts)
    elif name == "folder":
        where = os.path.join(root, sname, cls)
    elif name == "npz":
        where = f"key {sname}_labels"
    elif name == "fashion-mnist":
        where = "t10k files" if split == TEST else "train files"
    else:
        where = sname
    return (
        f"the dataset's official {sname} part ({where}) has no image of it"
        f"{_leave_out_hint(name, src.classes, c)}"
    )


def check_every_class_in_every_split(
    name: str,
    root: str,
    src: SourceIndex,
    opts: dict[str, Any],
    assignment: np.ndarray,
    fractions: tuple[float, float, float],
) -> None:
    """Raise UserError (one line) for the first class without an image in train, val or test.

    The line names the dataset root, the class, its per-split image counts, why the split
    is empty and the option that fixes it. A class missing from val gives NaN validation
    scores (and model selection picks nothing); one missing from train or test cannot be
    learnt or measured.
    """
    counts = class_split_counts(assignment, src.labels, len(src.classes))
    for c, row in enumerate(counts.tolist()):
        missing = [k for k, n in enumerate(row) if n == 0]
        if not missing:
            continue
        reason = _split_reason(name, root, src, opts, fractions, c, missing[0])
        raise UserError(
            f"{root}: class {src.classes[c]!r} has {row[0]} train / {row[1]} val / {row[2]} "
            f"test images, but every class needs at least 1 in each split: {reason}"
        )
