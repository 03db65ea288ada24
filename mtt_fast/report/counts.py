"""Images per class: of the real training split each synset was distilled from, and of the synsets.

The real counts are read from what the run directories record (a trajectory store's
``split.json`` or ``meta.json``). The report never loads a dataset itself: a caller that may
(``mtt-fast report --load-data``) passes a ``class_counts`` loader, such as
:func:`mtt_fast.data.counts.train_class_counts`, which is asked only when no store records them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtt_fast.errors import UserError
from mtt_fast.io import read_json
from mtt_fast.report.collect import Collection, SynsetInfo, ipc_key, method_label, method_rank

#: Given a synset's dataset meta (``meta["dataset"]``), the real training split's images per
#: class, or None when they cannot be had.
ClassCounts = Callable[[dict], list[int] | None]


def synsets_of(col: Collection) -> dict[Path, tuple[str, SynsetInfo, list[Path]]]:
    """Every synset found, once: ``{resolved dir: (run name, info, trajectory stores it names)}``."""
    synsets: dict[Path, tuple[str, SynsetInfo, list[Path]]] = {}
    for d in col.distills:
        if d.synset is not None:
            stores = [Path(s) for s in (d.config.get("buffer"), d.synset.meta.get("buffer")) if s]
            synsets.setdefault(d.synset.path.resolve(), (d.name, d.synset, stores))
    for e in col.all_evals():
        if e.synset is not None:
            stores = [Path(e.synset.meta["buffer"])] if e.synset.meta.get("buffer") else []
            synsets.setdefault(e.synset.path.resolve(), (e.name, e.synset, stores))
    return synsets


def _recorded_counts(store: Path, ds: dict, classes: list[str]) -> tuple[list[int] | None, str]:
    """The counts a trajectory store records (``split.json``, else ``meta.json``), if any."""
    split = store / "split.json"
    if split.is_file():
        try:
            doc = read_json(split)
            if doc.get("fingerprint") in (None, ds.get("split_fingerprint")):
                per = doc["counts"]["train"]["per_class"]
                return [int(per[c]) for c in classes], f"recorded in {split}"
        except (UserError, KeyError, TypeError, ValueError):
            pass
    meta = store / "meta.json"
    if meta.is_file():
        try:
            per = read_json(meta).get("class_counts")
            if per:
                per = per.get("train", per) if isinstance(per, dict) else per
                return ([int(per[c]) for c in classes] if isinstance(per, dict) else [int(v) for v in per],
                        f"recorded in {meta}")
        except (UserError, KeyError, TypeError, ValueError):
            pass
    return None, ""


def _loaded_counts(ds: dict, load_data: bool, class_counts: ClassCounts | None) -> tuple[list[int] | None, str]:
    """The counts from the data itself, through the caller's ``class_counts`` loader."""
    root = ds.get("root")
    if not load_data:
        return None, "the store records no class counts and --no-load-data was given"
    if not root or not Path(root).exists():
        return None, f"the data ({root}) is not reachable and no trajectory store recording the counts was found"
    if class_counts is None:
        return None, "the store records no class counts and the data was not loaded (no class-count loader given)"
    try:
        counts = class_counts(ds)
    except (UserError, OSError, ValueError, KeyError) as e:
        return None, f"the data at {root} could not be read: {e}"
    if counts is None:
        return None, f"the data at {root} could not be counted"
    return [int(c) for c in counts], f"counted in {root}"


def real_class_counts(syn: SynsetInfo, stores: list[Path], load_data: bool, cache: dict,
                      class_counts: ClassCounts | None = None) -> tuple[list[int] | None, str]:
    """Images per class of the real training split the synset was distilled from.

    Tried in order: the trajectory store's ``split.json`` (written by ``mtt-fast buffer``
    from the same split; free to read), the store's ``meta.json`` if it records
    ``class_counts``, then ``class_counts(syn.meta["dataset"])`` when the data's root is
    reachable (and ``load_data``).

    Returns:
        ``(counts or None, where they came from / why they are missing)``.
    """
    ds = syn.meta.get("dataset") or {}
    key = (ds.get("name"), ds.get("root"), ds.get("split_fingerprint"), ds.get("res"))
    if key in cache:
        return cache[key]
    result: tuple[list[int] | None, str] = (None, "")
    for store in stores:
        result = _recorded_counts(store, ds, syn.classes)
        if result[0] is not None:
            break
    if result[0] is None:
        result = _loaded_counts(ds, load_data, class_counts)
    cache[key] = result
    return result


def _distilled_series(items: list[tuple[str, SynsetInfo, list[Path]]],
                      classes: list[str]) -> list[tuple[str, list[int]]]:
    """One ``(label, images per class)`` series per distinct class-count vector of the synsets."""
    seen: dict[tuple, list[str]] = {}
    order = sorted(items, key=lambda it: (ipc_key(it[1].meta.get("ipc")), method_rank(it[1].meta.get("method"))))
    for _name, syn, _ in order:
        if syn.counts is not None and len(syn.counts) == len(classes):
            seen.setdefault(tuple(syn.counts), []).append(f"{method_label(syn.meta.get('method'))}")
    series = []
    for counts, labels in seen.items():
        ipc_set = set(counts)
        head = f"ipc {next(iter(ipc_set))}" if len(ipc_set) == 1 else f"{sum(counts)} images"
        series.append((f"{head}: {', '.join(dict.fromkeys(labels))}", list(counts)))
    return series


def class_count_entries(col: Collection, *, load_data: bool = True,
                        class_counts: ClassCounts | None = None) -> list[dict]:
    """Per dataset (and split): the real training split's counts beside each distilled set's.

    Returns:
        ``{"dataset", "classes", "real_train", "real_source", "distilled"}`` per dataset, where
        ``distilled`` is a list of ``(label, images per class)``.
    """
    by_dataset: dict[tuple, list[tuple[str, SynsetInfo, list[Path]]]] = {}
    for item in synsets_of(col).values():
        ds = item[1].meta.get("dataset") or {}
        by_dataset.setdefault((ds.get("name", "?"), ds.get("split_fingerprint")), []).append(item)
    cache: dict = {}
    all_stores = [s for items in by_dataset.values() for _, _, st in items for s in st]
    out = []
    for (dataset, _fp), items in sorted(by_dataset.items(), key=lambda kv: str(kv[0])):
        classes = items[0][1].classes
        real, source = None, ""
        for _, syn, st in items:
            real, source = real_class_counts(syn, list(dict.fromkeys(st + all_stores)), load_data, cache,
                                             class_counts)
            if real is not None:
                break
        out.append({"dataset": dataset, "classes": classes, "real_train": real, "real_source": source,
                    "distilled": _distilled_series(items, classes)})
    return out
