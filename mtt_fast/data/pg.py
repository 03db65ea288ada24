"""PatchGastricADC22 (Tsuneki & Kanavati 2022), as published.

Layout (github.com/masatsuneki/histopathology-image-caption + the patches archive):

    <root>/captions.csv                 columns id,subtype,text; one row per slide
    <root>/patches_captions/{id}_{hash}.jpg   300x300 patches of slide {id}

The paper's three classes merge the two "poorly differentiated" subtypes; every other
subtype is left out and counted. The mapping is the option ``classes`` (class name ->
list of subtypes, in label order). A class none of whose subtypes has a row in the CSV is
an error; a merged class with SOME of its subtypes absent (a filtered subset) is built
from the others, with a :class:`~mtt_fast.data.source.DataWarning` per absent subtype.
There is no official split: split by slide.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from typing import Any

import numpy as np

from mtt_fast.data.imageio import is_image_name
from mtt_fast.data.source import SourceIndex, check_options, require_dir, warn
from mtt_fast.data.splits import UNASSIGNED
from mtt_fast.errors import UserError

DEFAULT_CLASSES: dict[str, list[str]] = {
    "well": ["Well differentiated tubular adenocarcinoma"],
    "moderate": ["Moderately differentiated tubular adenocarcinoma"],
    "poorly": [
        "Poorly differentiated adenocarcinoma, solid type",
        "Poorly differentiated adenocarcinoma, non-solid type",
    ],
}

DEFAULTS: dict[str, Any] = {
    "classes": DEFAULT_CLASSES,
    "csv": "captions.csv",
    "patch_dir": "patches_captions",
    "fractions": [0.7, 0.15, 0.15],
}

REQUIRED_COLUMNS = ("id", "subtype")


def _norm(s: str) -> str:
    return " ".join(str(s).split()).lower()


def _parse_mapping(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value:
        raise UserError("option classes: give a mapping class name -> list of subtypes")
    mapping: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for cls, subtypes in value.items():
        if isinstance(subtypes, str):
            subtypes = [subtypes]
        if not isinstance(subtypes, (list, tuple)) or not subtypes:
            raise UserError(f"option classes: class {cls!r} needs a non-empty list of subtypes")
        for st in subtypes:
            key = _norm(st)
            if key in owner:
                raise UserError(
                    f"option classes: subtype {st!r} is mapped to both {owner[key]!r} and {cls!r}"
                )
            owner[key] = str(cls)
        mapping[str(cls)] = [str(s) for s in subtypes]
    return mapping


def _read_captions(csv_path: str) -> list[tuple[str, str]]:
    """(id, subtype) rows of captions.csv."""
    if not os.path.isfile(csv_path):
        raise UserError(f"missing file {csv_path} (PatchGastricADC22 captions.csv)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UserError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header) or 'none'})"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                sid = (row.get("id") or "").strip()
                if sid:
                    rows.append((sid, (row.get("subtype") or "").strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {csv_path}: {exc}") from None
    return rows


def _csv_subtypes(rows: list[tuple[str, str]], limit: int = 8) -> str:
    """'subtype' (n slides), ... of the CSV, most frequent first, for one-line messages."""
    slides: dict[str, set[str]] = {}
    for sid, st in rows:
        slides.setdefault(st or "(empty)", set()).add(sid)
    ranked = sorted(slides.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = [f"{st!r} ({len(ids)} slide{'s' if len(ids) != 1 else ''})" for st, ids in ranked]
    more = len(parts) - limit
    text = ", ".join(parts[:limit]) + (f" and {more} more" if more > 0 else "")
    return text or "no rows"


def index(root: str, options: dict | None) -> tuple[SourceIndex, dict[str, Any]]:
    """Index PatchGastricADC22 under `root`. Returns (index, resolved options)."""
    opts = check_options("pg", options, DEFAULTS)
    mapping = _parse_mapping(opts["classes"])
    opts["classes"] = mapping
    csv_path = os.path.join(root, str(opts["csv"]))
    patch_dir = os.path.join(root, str(opts["patch_dir"]))
    rows = _read_captions(csv_path)
    require_dir(patch_dir, "PatchGastricADC22 patch folder (option patch_dir)")

    # subtype -> class, validated against the subtypes present in the CSV: a class needs at
    # least one of its subtypes; an absent subtype of a merged class is only a warning
    present = {_norm(st) for _, st in rows}
    sub_to_class: dict[str, int] = {}
    absent_subtypes: dict[str, list[str]] = {}
    for ci, (cls, subtypes) in enumerate(mapping.items()):
        absent = [st for st in subtypes if _norm(st) not in present]
        if len(absent) == len(subtypes):
            raise UserError(
                f"option classes: no subtype of class {cls!r} "
                f"({', '.join(map(repr, subtypes))}) appears in {csv_path}, which has "
                f"{_csv_subtypes(rows)}; map it to subtypes the CSV has, or leave it out"
            )
        if absent:
            absent_subtypes[cls] = absent
            kept = [st for st in subtypes if st not in absent]
            for st in absent:
                warn(
                    f"option classes: subtype {st!r} of class {cls!r} appears nowhere in "
                    f"{csv_path}; class {cls!r} is made of {', '.join(map(repr, kept))} only",
                    csv_path,
                )
        for st in subtypes:
            if st not in absent:
                sub_to_class[_norm(st)] = ci

    # slide -> class; duplicates with the same subtype merge, conflicting ones are left out
    slide_sub: dict[str, str] = {}
    conflicting: set[str] = set()
    for sid, st in rows:
        if sid in slide_sub and _norm(slide_sub[sid]) != _norm(st):
            conflicting.add(sid)
        slide_sub.setdefault(sid, st)
    unknown_slides: Counter[str] = Counter()
    slide_class: dict[str, int] = {}
    for sid, st in slide_sub.items():
        if sid in conflicting:
            continue
        if _norm(st) in sub_to_class:
            slide_class[sid] = sub_to_class[_norm(st)]
        else:
            unknown_slides[st] += 1

    # one scan of the patch folder, grouped by the id prefix of "{id}_{hash}.jpg"
    by_slide: dict[str, list[tuple[str, int, int]]] = {}
    with os.scandir(patch_dir) as it:
        for e in it:
            if e.name.startswith(".") or not is_image_name(e.name) or not e.is_file():
                continue
            sid = e.name.split("_", 1)[0]
            st = e.stat()
            rel = os.path.relpath(e.path, root)
            by_slide.setdefault(sid, []).append((rel, st.st_size, st.st_mtime_ns))

    unknown_patches: Counter[str] = Counter()
    for sid, st in slide_sub.items():
        if sid not in slide_class and sid in by_slide:
            key = "conflicting subtypes" if sid in conflicting else st
            unknown_patches[key] += len(by_slide[sid])
    orphan = sum(len(v) for sid, v in by_slide.items() if sid not in slide_sub)
    no_patches = sorted(sid for sid in slide_class if sid not in by_slide)

    entries: list[tuple[str, int, int, int, str]] = []
    for sid, ci in slide_class.items():
        for rel, size, mtime in by_slide.get(sid, []):
            entries.append((rel, size, mtime, ci, sid))
    entries.sort()

    classes = list(mapping)
    left_out = {
        "unknown_subtype_slides": dict(sorted(unknown_slides.items())),
        "unknown_subtype_patches": dict(sorted(unknown_patches.items())),
        "conflicting_subtype_slides": len(conflicting),
        "slides_without_patches": len(no_patches),
        "slides_without_patches_ids": no_patches[:20],
        "patches_without_csv_row": orphan,
    }
    if absent_subtypes:
        left_out["absent_subtypes"] = absent_subtypes
    src = SourceIndex(
        root=root,
        classes=classes,
        channels=3,
        native_res=224,
        preset="pg",
        labels=np.array([e[3] for e in entries], dtype=np.int64),
        bags=[e[4] for e in entries],
        official=np.full(len(entries), UNASSIGNED, dtype=np.int64),
        files=[e[0] for e in entries],
        file_stats=[(e[1], e[2]) for e in entries],
        left_out=left_out,
    )
    src.check_classes_nonempty(f"PatchGastricADC22 at {root} (option classes)")
    return src, opts
