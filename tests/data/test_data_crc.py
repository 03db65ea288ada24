"""TCGA MSI/MSS reader: classes order, patient bags, official split, cohorts, errors."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from mtt_fast.data import load_dataset
from mtt_fast.errors import UserError
from tests.fixtures.datasets import make_crc

NAME_RE = re.compile(r"^blk-[A-Z]{16}-(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-01Z-00-DX1\.png$")


def _files(root, cohort, split):
    out = {}
    for cls in ("MSS", "MSIMUT"):
        for n in os.listdir(os.path.join(root, f"{cohort}_{split}", cls)):
            out[n] = cls
    return out


def test_fixture_layout_and_names(crc_root):
    names = _files(crc_root, "CRC_DX", "TRAIN")
    assert names and all(NAME_RE.match(n) for n in names)
    from PIL import Image

    p = os.path.join(
        crc_root, "CRC_DX_TRAIN", "MSS", next(n for n, c in names.items() if c == "MSS")
    )
    with Image.open(p) as im:
        assert im.size == (224, 224)


def test_classes_bags_and_official_split(crc_root, cache):
    b = load_dataset("crc", crc_root, 16, cache_dir=cache, progress=False)
    assert b.classes == ["MSS", "MSIMUT"]
    assert b.res == 16 and b.channels == 3
    train_files = _files(crc_root, "CRC_DX", "TRAIN")
    test_files = _files(crc_root, "CRC_DX", "TEST")
    patient_of = {n: NAME_RE.match(n).group(1) for n in {**train_files, **test_files}}
    # test split = exactly the TEST folder; train + val = exactly the TRAIN folder
    te = b.split("test")
    assert sorted(te.bags) == sorted(patient_of[n] for n in test_files)
    trval = b.split("train").bags + b.split("val").bags
    assert sorted(trval) == sorted(patient_of[n] for n in train_files)
    # label 0 = MSS
    mss_patients = {patient_of[n] for n, c in test_files.items() if c == "MSS"}
    for bag, y in zip(te.bags, te.labels.tolist()):
        assert (y == 0) == (bag in mss_patients)
    # val carved by patient: no patient in two splits, and val is not empty
    sets = [set(b.split(s).bags) for s in ("train", "val", "test")]
    assert len(sets[1]) >= 1
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_cohorts(crc_root, cache):
    n = {}
    for cohort in ("CRC_DX", "STAD", "both"):
        b = load_dataset(
            "crc", crc_root, 8, cache_dir=cache, progress=False, options={"cohort": cohort}
        )
        n[cohort] = sum(len(s) for s in b.splits.values())
        assert b.meta()["options"]["cohort"] == cohort
    assert n["both"] == n["CRC_DX"] + n["STAD"]
    assert n["CRC_DX"] == 2 * (4 + 2) * 2


def test_bad_cohort_and_missing_folder(crc_root, tmp_path, cache):
    with pytest.raises(UserError, match="option cohort"):
        load_dataset("crc", crc_root, 8, cache_dir=cache, options={"cohort": "COAD"})
    root = make_crc(tmp_path / "crc", patients_per_class=1, tiles_per_patient=1, size=16)
    shutil.rmtree(root / "CRC_DX_TEST" / "MSIMUT")
    with pytest.raises(UserError, match=r"CRC_DX_TEST.*MSIMUT"):
        load_dataset("crc", root, 8, cache_dir=cache)
    with pytest.raises(UserError, match="STAD_TRAIN"):
        load_dataset("crc", root, 8, cache_dir=cache, options={"cohort": "STAD"})


def test_unzipped_per_archive_layout(tmp_path, cache):
    """<root>/CRC_DX_TRAIN_MSIMUT/MSIMUT/... (each zip unzipped into its own folder)."""
    a = make_crc(tmp_path / "a", patients_per_class=2, tiles_per_patient=1, size=16)
    b_root = tmp_path / "b"
    for split in ("TRAIN", "TEST"):
        for cls in ("MSS", "MSIMUT"):
            shutil.copytree(a / f"CRC_DX_{split}" / cls, b_root / f"CRC_DX_{split}_{cls}" / cls)
    ba = load_dataset("crc", a, 8, cache_dir=cache, progress=False)
    bb = load_dataset("crc", b_root, 8, cache_dir=cache, progress=False)
    for s in ("train", "val", "test"):
        assert sorted(ba.split(s).bags) == sorted(bb.split(s).bags)


def test_patient_in_train_and_test_is_user_error(tmp_path, cache):
    root = make_crc(tmp_path / "crc", patients_per_class=1, tiles_per_patient=1, size=16)
    src = root / "CRC_DX_TRAIN" / "MSS"
    name = os.listdir(src)[0]
    shutil.copy(src / name, root / "CRC_DX_TEST" / "MSS" / name.replace("blk-", "blk-Z"))
    with pytest.raises(UserError, match="both the TRAIN and TEST"):
        load_dataset("crc", root, 8, cache_dir=cache)


def test_unparsed_names_counted(tmp_path, cache):
    root = make_crc(tmp_path / "crc", patients_per_class=2, tiles_per_patient=1, size=16)
    src = root / "CRC_DX_TRAIN" / "MSS"
    shutil.copy(src / os.listdir(src)[0], src / "weird-name.png")
    (src / "notes.txt").write_text("not an image")
    b = load_dataset("crc", root, 8, cache_dir=cache, progress=False)
    assert b.left_out["tiles_without_patient_id"] == 1
