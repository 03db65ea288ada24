"""TCGA MSI vs MSS tiles (Kather et al. 2019, zenodo record 2530835), as published.

The record holds one zip per (cohort, split, class), e.g. CRC_DX_TRAIN_MSIMUT.zip, whose
content is a class folder (MSIMUT/ or MSS/) of 224x224 PNG tiles named
``blk-<hash>-TCGA-XX-XXXX-01Z-00-DX1.png``. Unzipping each split's two archives into one
folder (``unzip CRC_DX_TRAIN_MSIMUT.zip -d CRC_DX_TRAIN``) gives the layout read here:

    <root>/{CRC_DX,STAD}_{TRAIN,TEST}/{MSS,MSIMUT}/blk-...png

Unzipping each archive into a folder named after it (``<root>/CRC_DX_TRAIN_MSIMUT/MSIMUT/``)
is accepted too. Classes are ["MSS", "MSIMUT"] (label 0 = MSS); the bag is the patient
``TCGA-XX-XXXX``. TRAIN/TEST is the official split; val is carved from TRAIN by patient.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from mtt_fast.data.source import SourceIndex, check_options, scan_images
from mtt_fast.data.splits import TEST, TRAINVAL
from mtt_fast.errors import UserError

CLASSES = ["MSS", "MSIMUT"]
COHORTS = {"CRC_DX": ["CRC_DX"], "STAD": ["STAD"], "both": ["CRC_DX", "STAD"]}
PATIENT_RE = re.compile(r"(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})")

DEFAULTS: dict[str, Any] = {"cohort": "CRC_DX", "val_fraction": 0.15}


def _class_dir(root: str, cohort: str, split: str, cls: str) -> str:
    """The folder of one (cohort, split, class), in either published unzip layout."""
    a = os.path.join(root, f"{cohort}_{split}", cls)
    if os.path.isdir(a):
        return a
    b = os.path.join(root, f"{cohort}_{split}_{cls}", cls)
    if os.path.isdir(b):
        return b
    c = os.path.join(root, f"{cohort}_{split}_{cls}")
    if os.path.isdir(c) and not os.path.isdir(os.path.join(c, cls)):
        return c
    raise UserError(f"missing folder {a} (TCGA {cohort} {split} tiles of class {cls})")


def index(root: str, options: dict | None) -> tuple[SourceIndex, dict[str, Any]]:
    """Index the TCGA MSI/MSS tiles under `root`. Returns (index, resolved options)."""
    opts = check_options("crc", options, DEFAULTS)
    cohort = opts["cohort"]
    if cohort not in COHORTS:
        raise UserError(f"option cohort: {cohort!r} is not one of {', '.join(COHORTS)}")
    vf = opts["val_fraction"]
    if not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise UserError(f"option val_fraction: must be in [0, 1), got {vf!r}")

    entries: list[tuple[str, int, int, int, str, int]] = []
    unparsed: list[str] = []
    for co in COHORTS[cohort]:
        for split, code in (("TRAIN", TRAINVAL), ("TEST", TEST)):
            for ci, cls in enumerate(CLASSES):
                d = _class_dir(root, co, split, cls)
                for rel, size, mtime in scan_images(d, root):
                    m = PATIENT_RE.search(os.path.basename(rel))
                    if m is None:
                        unparsed.append(rel)
                        continue
                    entries.append((rel, size, mtime, ci, m.group(1).upper(), code))
    entries.sort()

    # a patient in both official splits would leak test data into training
    split_of: dict[str, int] = {}
    for e in entries:
        if split_of.setdefault(e[4], e[5]) != e[5]:
            raise UserError(
                f"{root}: patient {e[4]} has tiles in both the TRAIN and TEST folders "
                "(the official split must be patient-disjoint)"
            )

    src = SourceIndex(
        root=root,
        classes=list(CLASSES),
        channels=3,
        native_res=224,
        preset="crc",
        labels=np.array([e[3] for e in entries], dtype=np.int64),
        bags=[e[4] for e in entries],
        official=np.array([e[5] for e in entries], dtype=np.int64),
        files=[e[0] for e in entries],
        file_stats=[(e[1], e[2]) for e in entries],
        left_out={"tiles_without_patient_id": len(unparsed), "examples": unparsed[:5]},
    )
    src.check_classes_nonempty(f"TCGA tiles at {root} (option cohort={cohort})")
    return src, opts
