"""load_dataset / load_dataset_from_meta: from a dataset name and root to a DatasetBundle."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtt_fast.data import arrays, crc, folder, pg
from mtt_fast.data.cache import load_or_build
from mtt_fast.data.checks import check_every_class_in_every_split, check_two_classes
from mtt_fast.data.dataset import DatasetBundle, ImageSplit
from mtt_fast.data.normalization import check_normalization, explicit_stats, preset_stats
from mtt_fast.data.source import SourceIndex
from mtt_fast.data.splits import (
    SPLIT_NAMES,
    overlapping_bags,
    parse_fractions,
    resolve_assignment,
)
from mtt_fast.data.store import ImageStore
from mtt_fast.errors import UserError

Reader = Callable[[str, "dict | None"], "tuple[SourceIndex, dict[str, Any]]"]

#: dataset name -> reader
DATASETS: dict[str, Reader] = {
    "pg": pg.index,
    "crc": crc.index,
    "folder": folder.index,
    "npz": arrays.index_npz,
    "fashion-mnist": arrays.index_fashion_mnist,
}
ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "patchgastric": "pg"}
DEFAULT_ROOTS = {"fashion-mnist": arrays.FASHION_MNIST_DIR}


def dataset_names() -> list[str]:
    """Valid values of --dataset."""
    return list(DATASETS)


def _resolve_name(name: str) -> str:
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise UserError(f"--dataset: unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return key


def _resolve_root(name: str, root: str | os.PathLike | None) -> str:
    if root is None or str(root) == "":
        if name not in DEFAULT_ROOTS:
            raise UserError(f"--data-root: required for dataset {name}")
        root = DEFAULT_ROOTS[name]
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.exists(root):
        raise UserError(f"--data-root: {root} does not exist")
    return root


def train_mean_std(
    store: ImageStore, index: np.ndarray, cache_file: str | None, progress: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of the images at `index`, in [0, 1] units.

    For file datasets the result is cached beside the image cache, keyed by the index set.
    """
    idx = np.sort(np.asarray(index, dtype=np.int64))
    sidecar = None
    if cache_file is not None:
        h = hashlib.sha256(idx.tobytes()).hexdigest()[:16]
        sidecar = f"{cache_file}.stats-{h}.json"
        try:
            with open(sidecar) as f:
                d = json.load(f)
            return tuple(d["mean"]), tuple(d["std"])
        except (OSError, ValueError, KeyError):
            pass
    from tqdm.auto import tqdm

    c, r = store.channels, store.res
    chunk = max(1, int(8e6 // (c * r * r)))  # ~64 MB of float64 per step
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    bar = tqdm(
        total=len(idx),
        desc="train mean/std",
        unit="img",
        dynamic_ncols=True,
        disable=not progress or len(idx) < 20000,
    )
    for s in range(0, len(idx), chunk):
        x = store.read(idx[s : s + chunk]).to(torch.float64)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        bar.update(len(x))
    bar.close()
    n = max(len(idx), 1) * r * r
    mean = s1 / n / 255.0
    var = (s2 / n / 65025.0 - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    out = tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
    if sidecar is not None:
        # best effort: a read-only or full cache directory only costs recomputing it
        tmp = f"{sidecar}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"mean": out[0], "std": out[1], "n": len(idx)}, f)
            os.replace(tmp, sidecar)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return out


def _load(
    name: str,
    root: str | os.PathLike | None,
    res: int | None,
    *,
    seed: int,
    options: dict | None,
    cache_dir: str | None,
    normalization: Any,
    progress: bool,
    workers: int | None,
    stats_override: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    check_splits: bool = True,
) -> DatasetBundle:
    name = _resolve_name(name)
    check_normalization(normalization)
    if options is not None and not isinstance(options, dict):
        raise UserError("option options: dataset options must be a mapping")
    root = _resolve_root(name, root)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"--seed: must be an integer, got {seed!r}")

    src, opts = DATASETS[name](root, options)
    check_two_classes(name, root, src, options)
    fractions = parse_fractions(opts["fractions"]) if "fractions" in opts else (0.7, 0.15, 0.15)
    if "fractions" in opts:
        opts["fractions"] = list(fractions)

    if res is None:
        if not src.native_res:
            raise UserError(f"--res: the images of {root} are not square; give --res")
        res = src.native_res
    if not isinstance(res, int) or isinstance(res, bool) or res < 1:
        raise UserError(f"--res: must be a positive integer, got {res!r}")

    assignment = resolve_assignment(
        src.official,
        src.labels,
        src.bags,
        len(src.classes),
        seed,
        fractions=fractions,
        val_fraction=opts.get("val_fraction"),
        val_count=opts.get("val_size"),
    )
    overlap = overlapping_bags(assignment, src.bags)
    assert not overlap, f"bags in two splits: {overlap[:5]}"
    if check_splits:
        check_every_class_in_every_split(name, root, src, opts, assignment, fractions)

    if src.files is not None:
        assert src.file_stats is not None
        arr, cpath = load_or_build(
            root,
            src.files,
            src.file_stats,
            res,
            src.channels,
            name=name,
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
        )
        store = ImageStore(arr, res, cpath)
    else:
        assert src.images is not None
        store = ImageStore(src.images, res)
        cpath = None

    positions = {s: np.flatnonzero(assignment == code) for code, s in enumerate(SPLIT_NAMES)}

    # normalization
    if stats_override is not None:
        mean, std = stats_override
        if len(mean) != src.channels:
            raise UserError(
                f"option normalization: {len(mean)} channel(s) recorded, dataset has {src.channels}"
            )
    elif isinstance(normalization, dict):
        mean, std = explicit_stats(normalization, src.channels)
    elif normalization == "compute" or (normalization == "auto" and src.preset is None):
        mean, std = train_mean_std(store, positions["train"], cpath, progress)
    elif normalization == "auto":
        assert src.preset is not None
        mean, std = preset_stats(src.preset, src.channels)
    else:
        mean, std = preset_stats(normalization, src.channels)

    splits = {
        s: ImageSplit(
            s,
            store,
            pos,
            src.labels[pos],
            [src.bags[i] for i in pos.tolist()],
            src.classes,
            mean,
            std,
        )
        for s, pos in positions.items()
    }
    return DatasetBundle(
        name=name,
        root=root,
        res=res,
        classes=src.classes,
        channels=src.channels,
        mean=mean,
        std=std,
        splits=splits,
        options=opts,
        seed=seed,
        normalization=normalization,
        left_out=src.left_out,
        cache_path=cpath,
        preset=src.preset,
    )


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    res: int | None = None,
    *,
    seed: int = 0,
    options: dict | None = None,
    cache_dir: str | None = None,
    normalization: str | dict = "auto",
    progress: bool = True,
    workers: int | None = None,
    check_splits: bool = True,
) -> DatasetBundle:
    """Load a dataset, its bag-disjoint split and its normalization.

    Args:
        name: "pg", "crc", "folder", "npz" or "fashion-mnist".
        root: --data-root: the dataset directory (the .npz file for npz; defaults to
            /usr/share/datasets/fashion-mnist for fashion-mnist).
        res: side length of the square images; None = the dataset's native size
            (224 for pg and crc, 28 for fashion-mnist, the image size for folder/npz).
        seed: seed of the split (a pure function of the file index, seed and fractions).
        options: dataset options (see each reader's DEFAULTS); unknown keys are a UserError.
        cache_dir: where the decoded uint8 cache of file datasets lives
            (default $MTT_FAST_CACHE or ~/.cache/mtt-fast).
        normalization: "auto" (the dataset's preset; computed on train for folder/npz),
            "compute", "none", a preset name ("crc", "pg", "imagenet", "fashion-mnist"),
            or {"mean": [...], "std": [...]}.
        progress: show tqdm bars for long steps.
        workers: decoding processes for building the cache (None = automatic).
        check_splits: require every class to have at least one image in each of train,
            val and test (checked before any image is decoded). Only for callers that
            inspect a dataset (e.g. its per-split counts) and never train on it: False
            lets a bundle with empty class splits through.

    Returns:
        The DatasetBundle.

    Raises:
        UserError: unknown dataset, missing root, bad layout/option/image, fewer than two
            classes, a class without an image in train, val or test (check_splits), a
            cache directory that cannot be written.
    """
    return _load(
        name,
        root,
        res,
        seed=seed,
        options=options,
        cache_dir=cache_dir,
        normalization=normalization,
        progress=progress,
        workers=workers,
        check_splits=check_splits,
    )


def load_dataset_from_meta(
    meta: dict[str, Any],
    root: str | os.PathLike | None = None,
    *,
    strict: bool = True,
    check_splits: bool = True,
    **kw: Any,
) -> DatasetBundle:
    """Reload the dataset described by `DatasetBundle.meta()`: same data, split, mean/std.

    Args:
        meta: the dict from `bundle.meta()` (e.g. read back from a store's meta.json).
        root: a new location when the dataset moved (default: meta["root"]).
        strict: raise UserError when the reloaded split differs from the recorded one
            (the data changed); with False the new split is used silently.
        check_splits: as for `load_dataset` (every class in train, val and test).
        **kw: cache_dir, progress, workers (and res, to reload at another resolution).

    Raises:
        UserError: the meta is incomplete, or (strict) the data no longer matches it.
    """
    for key in ("name", "root", "res", "seed"):
        if key not in meta:
            raise UserError(f"dataset meta: missing key {key!r}")
    allowed = {"cache_dir", "progress", "workers", "res"}
    bad = sorted(set(kw) - allowed)
    if bad:
        raise TypeError(f"load_dataset_from_meta() got unexpected keyword(s) {bad}")
    override = None
    if "mean" in meta and "std" in meta:
        override = (tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"]))
    bundle = _load(
        meta["name"],
        root if root is not None else meta["root"],
        kw.get("res", meta["res"]),
        seed=int(meta["seed"]),
        options=meta.get("options"),
        cache_dir=kw.get("cache_dir"),
        normalization=meta.get("normalization", "auto"),
        progress=kw.get("progress", True),
        workers=kw.get("workers"),
        stats_override=override,
        check_splits=check_splits,
    )
    if "classes" in meta and list(meta["classes"]) != bundle.classes:
        raise UserError(
            f"--data-root: classes of {bundle.root} ({bundle.classes}) differ from the "
            f"recorded ones ({list(meta['classes'])})"
        )
    fp = meta.get("split_fingerprint")
    if strict and fp is not None and fp != bundle.split_fingerprint():
        raise UserError(
            f"--data-root: the data at {bundle.root} no longer gives the recorded split "
            f"(fingerprint {bundle.split_fingerprint()} != {fp}); the dataset changed"
        )
    return bundle
