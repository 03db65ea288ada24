"""Bag-level, class-stratified, seeded train/val/test splits.

A "bag" is the unit that must never straddle two splits: a slide (PG), a patient (CRC), or
a single image when nothing better is known. A bag's class is the majority label of its
images (ties go to the lower class index). Every split is a pure function of
(labels, bags, seed, fractions), so reloading a dataset from its meta.json reproduces it.

Split codes used throughout `mtt_fast.data`:
    TRAIN = 0, VAL = 1, TEST = 2, TRAINVAL = 3 (official train part; val still to carve),
    UNASSIGNED = -1 (no official split: the whole split is ours to make).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mtt_fast.errors import UserError

TRAIN, VAL, TEST, TRAINVAL, UNASSIGNED = 0, 1, 2, 3, -1
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def parse_fractions(value: Any, option: str = "fractions") -> tuple[float, float, float]:
    """Parse a {"train","val","test"} dict or a 3-sequence of split fractions.

    The fractions must be >= 0, train > 0, and sum to 1.
    """
    if isinstance(value, dict):
        unknown = set(value) - set(SPLIT_NAMES)
        if unknown:
            raise UserError(
                f"option {option}: unknown split(s) {sorted(unknown)}; use train, val, test"
            )
        vals = [value.get(k, 0.0) for k in SPLIT_NAMES]
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        vals = list(value)
    else:
        raise UserError(
            f"option {option}: give {{train: f, val: f, test: f}} or [train, val, test]"
        )
    try:
        fr = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise UserError(f"option {option}: fractions must be numbers") from None
    if any(f < 0 for f in fr) or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(
            f"option {option}: fractions must be >= 0, train > 0, and sum to 1 (got {fr})"
        )
    return fr  # type: ignore[return-value]


def bag_table(
    labels: np.ndarray, bags: Sequence[str], num_classes: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unique bags (sorted), each bag's majority class, and each item's bag number.

    Returns:
        (names [B], majority label [B] int64, item -> bag number [N] int64)
    """
    names, inverse = np.unique(np.asarray(bags, dtype=object).astype(str), return_inverse=True)
    counts = np.zeros((len(names), max(num_classes, 1)), dtype=np.int64)
    np.add.at(counts, (inverse, np.asarray(labels, dtype=np.int64)), 1)
    return [str(n) for n in names], counts.argmax(axis=1), inverse.astype(np.int64)


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items into len(fractions) counts by largest remainder.

    Every split with a positive fraction gets at least one item when n allows it.
    """
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _class_permutation(bag_ids: np.ndarray, seed: int, cls: int, tag: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, cls, tag]))
    return bag_ids[rng.permutation(len(bag_ids))]


def split_bags(
    labels: np.ndarray,
    bags: Sequence[str],
    num_classes: int,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> np.ndarray:
    """Assign every item to train/val/test so that no bag is in two splits.

    Within each class (a bag's majority label), bags are shuffled with a generator seeded
    by (seed, class) and cut by `fractions`.

    Returns:
        int64 [N] split codes (TRAIN, VAL, TEST).
    """
    names, bag_label, item_bag = bag_table(labels, bags, num_classes)
    bag_split = np.full(len(names), TRAIN, dtype=np.int64)
    for c in range(num_classes):
        ids = np.flatnonzero(bag_label == c)
        if len(ids) == 0:
            continue
        perm = _class_permutation(ids, seed, c, 0)
        n_tr, n_va, _ = _allocate(len(ids), fractions)
        bag_split[perm[n_tr : n_tr + n_va]] = VAL
        bag_split[perm[n_tr + n_va :]] = TEST
    return bag_split[item_bag]


def carve_val(
    labels: np.ndarray,
    bags: Sequence[str],
    num_classes: int,
    seed: int,
    *,
    fraction: float | None = None,
    count: int | None = None,
) -> np.ndarray:
    """Split an official training set into train and val by bag, stratified by class.

    Give either `fraction` (of each class's bags) or `count` (total number of val bags,
    spread over classes in proportion to their bag counts; exact).

    Returns:
        int64 [N] split codes (TRAIN, VAL).
    """
    names, bag_label, item_bag = bag_table(labels, bags, num_classes)
    bag_split = np.full(len(names), TRAIN, dtype=np.int64)
    per_class = [np.flatnonzero(bag_label == c) for c in range(num_classes)]
    if count is not None:
        total = len(names)
        raw = [count * len(ids) / max(total, 1) for ids in per_class]
        quota = [int(np.floor(r)) for r in raw]
        order = sorted(range(num_classes), key=lambda i: (-(raw[i] - quota[i]), i))
        for i in order[: count - sum(quota)]:
            quota[i] += 1
    else:
        f = float(fraction or 0.0)
        quota = [_allocate(len(ids), (1.0 - f, f))[1] if len(ids) else 0 for ids in per_class]
    for c, ids in enumerate(per_class):
        if len(ids) == 0 or quota[c] == 0:
            continue
        perm = _class_permutation(ids, seed, c, 1)
        bag_split[perm[: quota[c]]] = VAL
    return bag_split[item_bag]


def resolve_assignment(
    official: np.ndarray,
    labels: np.ndarray,
    bags: Sequence[str],
    num_classes: int,
    seed: int,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    val_count: int | None = None,
) -> np.ndarray:
    """Turn per-item official codes into final TRAIN/VAL/TEST codes.

    UNASSIGNED items are split by `split_bags` with `fractions`; TRAINVAL items are split
    into train and val by `carve_val` (`val_fraction` or `val_count`); TRAIN/VAL/TEST items
    keep their code.
    """
    official = np.asarray(official, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    bags_arr = np.asarray(bags, dtype=object)
    out = official.copy()
    free = official == UNASSIGNED
    if free.any():
        out[free] = split_bags(labels[free], bags_arr[free], num_classes, seed, fractions)
    tv = official == TRAINVAL
    if tv.any():
        out[tv] = carve_val(
            labels[tv], bags_arr[tv], num_classes, seed, fraction=val_fraction, count=val_count
        )
    return out


def class_split_counts(assignment: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per (class, split): int64 [num_classes, 3], columns train, val, test."""
    a = np.asarray(assignment, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    out = np.zeros((max(num_classes, 0), len(SPLIT_NAMES)), dtype=np.int64)
    ok = (a >= 0) & (a < len(SPLIT_NAMES))
    np.add.at(out, (y[ok], a[ok]), 1)
    return out


def bags_of_class(labels: np.ndarray, bags: Sequence[str], num_classes: int, cls: int) -> int:
    """How many bags have `cls` as their majority class."""
    if len(labels) == 0:
        return 0
    _, bag_label, _ = bag_table(labels, bags, num_classes)
    return int((bag_label == cls).sum())


def overlapping_bags(assignment: np.ndarray, bags: Sequence[str]) -> list[str]:
    """Bags that occur in more than one split (sorted); empty when the split is clean."""
    seen: dict[str, int] = {}
    bad: set[str] = set()
    for b, s in zip(bags, np.asarray(assignment).tolist()):
        prev = seen.setdefault(b, s)
        if prev != s:
            bad.add(b)
    return sorted(bad)
