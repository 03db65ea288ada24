"""PatchGastricADC22 reader: class mapping, left-out counts, bags, layout errors."""

from __future__ import annotations

import csv
import os
import re
import shutil

import pytest
import torch

from mtt_fast.data import load_dataset
from mtt_fast.errors import UserError
from tests.fixtures.datasets import PG_EXTRA_SUBTYPE, PG_SUBTYPES, make_pg


def _csv_rows(root):
    with open(os.path.join(root, "captions.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_layout_is_the_published_one(pg_root):
    rows = _csv_rows(pg_root)
    assert list(rows[0]) == ["id", "subtype", "text"]
    names = os.listdir(pg_root / "patches_captions")
    assert all(n.endswith(".jpg") and len(n.split("_")[0]) == 32 for n in names)
    from PIL import Image

    with Image.open(pg_root / "patches_captions" / names[0]) as im:
        assert im.size == (300, 300)


def test_classes_mapping_and_bags(pg_root, cache):
    b = load_dataset("pg", pg_root, 16, cache_dir=cache, progress=False)
    assert b.classes == ["well", "moderate", "poorly"]
    assert b.channels == 3 and b.res == 16
    rows = {r["id"]: r["subtype"] for r in _csv_rows(pg_root)}
    total = 0
    for s in ("train", "val", "test"):
        sp = b.split(s)
        total += len(sp)
        for bag, y in zip(sp.bags, sp.labels.tolist()):
            # bag = slide id; label follows the slide's subtype
            assert bag in rows
            assert rows[bag] in PG_SUBTYPES[b.classes[y]]
    assert total == 3 * 4 * 2  # 3 classes x 4 slides x 2 patches; extras left out
    # both poorly subtypes land in class "poorly"
    poorly = {
        rows[bag] for s in b.splits.values() for bag, y in zip(s.bags, s.labels.tolist()) if y == 2
    }
    assert poorly == set(PG_SUBTYPES["poorly"])


def test_left_out_counts(pg_root, cache):
    b = load_dataset("pg", pg_root, 16, cache_dir=cache, progress=False)
    lo = b.left_out
    assert lo["unknown_subtype_slides"] == {PG_EXTRA_SUBTYPE: 1}
    assert lo["unknown_subtype_patches"] == {PG_EXTRA_SUBTYPE: 2}
    assert lo["slides_without_patches"] == 1
    assert lo["patches_without_csv_row"] == 0


def test_native_res_is_224_and_published_size_decodes(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=3, patches_per_slide=1, extra_subtypes=False)
    b = load_dataset("pg", root, cache_dir=cache, progress=False)
    assert b.res == 224
    x = b.split("train").get_raw(slice(0, 2))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_custom_mapping_option(pg_root, cache):
    mapping = {
        "tubular": [PG_SUBTYPES["well"][0], PG_SUBTYPES["moderate"][0]],
        "papillary": [PG_EXTRA_SUBTYPE],
    }
    # one papillary slide cannot fill train, val and test: refused by default ...
    with pytest.raises(UserError, match="class 'papillary' has 2 train / 0 val / 0 test"):
        load_dataset(
            "pg", pg_root, 8, cache_dir=cache, progress=False, options={"classes": mapping}
        )
    # ... and loaded for inspection with check_splits=False
    b = load_dataset(
        "pg",
        pg_root,
        8,
        cache_dir=cache,
        progress=False,
        options={"classes": mapping},
        check_splits=False,
    )
    assert b.classes == ["tubular", "papillary"]
    counts = [sum(s.class_counts()[c] for s in b.splits.values()) for c in range(2)]
    assert counts == [2 * 4 * 2, 2]
    assert sum(b.left_out["unknown_subtype_slides"].values()) == 4  # the poorly slides
    assert b.meta()["options"]["classes"] == mapping


def test_mapping_naming_absent_subtype_is_user_error(pg_root, cache):
    with pytest.raises(UserError, match="option classes.*Signet ring"):
        load_dataset(
            "pg",
            pg_root,
            8,
            cache_dir=cache,
            progress=False,
            options={
                "classes": {"a": [PG_SUBTYPES["well"][0]], "b": ["Signet ring cell carcinoma"]}
            },
        )


def test_subtype_in_two_classes_is_user_error(pg_root, cache):
    st = PG_SUBTYPES["well"][0]
    with pytest.raises(UserError, match="option classes"):
        load_dataset("pg", pg_root, 8, cache_dir=cache, options={"classes": {"a": [st], "b": [st]}})


def test_missing_columns(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=1, patches_per_slide=1)
    rows = _csv_rows(root)
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "text"])
        for r in rows:
            w.writerow([r["id"], r["text"]])
    with pytest.raises(UserError) as ei:
        load_dataset("pg", root, 8, cache_dir=cache)
    msg = str(ei.value)
    assert "captions.csv" in msg and "id" in msg and "subtype" in msg


def test_missing_csv_and_patch_dir(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=1, patches_per_slide=1)
    shutil.rmtree(root / "patches_captions")
    with pytest.raises(UserError, match="patches_captions"):
        load_dataset("pg", root, 8, cache_dir=cache)
    os.remove(root / "captions.csv")
    with pytest.raises(UserError, match="captions.csv"):
        load_dataset("pg", root, 8, cache_dir=cache)


def test_empty_class_is_user_error(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=2, patches_per_slide=1)
    rows = _csv_rows(root)
    poorly = {r["id"] for r in rows if r["subtype"] in PG_SUBTYPES["poorly"]}
    for n in os.listdir(root / "patches_captions"):
        if n.split("_")[0] in poorly:
            os.remove(root / "patches_captions" / n)
    with pytest.raises(UserError, match="poorly"):
        load_dataset("pg", root, 8, cache_dir=cache)


def test_orphan_patches_and_duplicate_rows(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=2, patches_per_slide=1, extra_subtypes=False)
    src = min(os.listdir(root / "patches_captions"))
    shutil.copy(root / "patches_captions" / src, root / "patches_captions" / ("f" * 32 + "_x.jpg"))
    rows = _csv_rows(root)
    with open(root / "captions.csv", "a", newline="") as f:
        csv.writer(f).writerow([rows[0]["id"], rows[0]["subtype"], "duplicate row"])
    # 2 slides per class cannot fill val and test; this test is about the counts only
    b = load_dataset("pg", root, 8, cache_dir=cache, progress=False, check_splits=False)
    assert b.left_out["patches_without_csv_row"] == 1
    assert b.left_out["conflicting_subtype_slides"] == 0
    assert sum(len(s) for s in b.splits.values()) == 6
    # the same slide listed under two different subtypes is left out and counted
    with open(root / "captions.csv", "a", newline="") as f:
        csv.writer(f).writerow([rows[1]["id"], PG_EXTRA_SUBTYPE, "conflicting row"])
    c = load_dataset("pg", root, 8, cache_dir=cache, progress=False, check_splits=False)
    assert c.left_out["conflicting_subtype_slides"] == 1
    assert c.left_out["unknown_subtype_patches"] == {"conflicting subtypes": 1}
    assert sum(len(s) for s in c.splits.values()) == 5
    assert rows[1]["id"] not in {x for s in c.splits.values() for x in s.bags}


def test_corrupt_patch_names_the_file(tmp_path, cache):
    root = make_pg(tmp_path / "pg", slides_per_class=3, patches_per_slide=1, extra_subtypes=False)
    bad = root / "patches_captions" / min(os.listdir(root / "patches_captions"))
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UserError, match=re.escape(f"cannot read image {bad}")):
        load_dataset("pg", root, 8, cache_dir=cache, progress=False)
