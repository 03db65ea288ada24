"""Issue 15, data side: every class in every split, at least two classes, PG subsets, a
cache directory that cannot be written. Each failure is ONE line naming what to change."""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import pytest

from mtt_fast.data import DataWarning, imageio, load_dataset, load_dataset_from_meta
from mtt_fast.data import cache as cache_mod
from mtt_fast.data.arrays import FASHION_MNIST_DIR
from mtt_fast.errors import UserError
from tests.fixtures.datasets import PG_SUBTYPES, make_crc, make_folder, make_npz, make_pg


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def _forbid_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoded an image before the split was checked")

    monkeypatch.setattr(imageio, "decode_image", boom)


# --------------------------------------------------------------------------------------
# every class in train, val and test; at least two classes


def test_crc_class_with_one_patient_has_no_val(tmp_path, cache, monkeypatch):
    root = make_crc(tmp_path / "crc", patients_per_class=3, tiles_per_patient=2, size=16)
    # keep one MSIMUT patient in TRAIN: val is carved by patient, so none is left for it
    d = root / "CRC_DX_TRAIN" / "MSIMUT"
    patients = sorted({n.split("-", 2)[2][:12] for n in os.listdir(d)})
    for n in os.listdir(d):
        if patients[0] not in n:
            os.remove(d / n)
    _forbid_decoding(monkeypatch)  # checked before any image is decoded
    with pytest.raises(UserError) as ei:
        load_dataset("crc", root, 8, cache_dir=cache, progress=False)
    msg = _one_line(ei)
    assert msg.startswith(f"{root}: class 'MSIMUT' has 2 train / 0 val / 6 test images")
    assert "1 patient in the official train part" in msg


def test_crc_val_fraction_zero_names_the_option(tmp_path, cache):
    root = make_crc(tmp_path / "crc", patients_per_class=3, tiles_per_patient=1, size=16)
    with pytest.raises(UserError) as ei:
        load_dataset("crc", root, 8, cache_dir=cache, options={"val_fraction": 0.0})
    msg = _one_line(ei)
    assert "class 'MSS' has 3 train / 0 val / 3 test images" in msg
    assert "option val_fraction is 0.0: --data-option val_fraction=0.15" in msg


def test_folder_class_with_too_few_images(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", classes=("a", "b", "c"), per_class=8, size=8)
    for n in sorted(os.listdir(root / "b"))[2:]:
        os.remove(root / "b" / n)  # b keeps 2 images: one bag each, 3 are needed
    _forbid_decoding(monkeypatch)
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, progress=False)
    msg = _one_line(ei)
    assert msg == (
        f"{root}: class 'b' has 2 train / 0 val / 0 test images, but every class needs at "
        "least 1 in each split: it has 2 image(s) and a split by image needs at least 3 per "
        'class: add images of it, or leave it out: --data-option \'classes=["a", "c"]\''
    )
    # the suggested option works
    monkeypatch.undo()
    b = load_dataset(
        "folder", root, cache_dir=cache, progress=False, options={"classes": ["a", "c"]}
    )
    assert b.classes == ["a", "c"]


def test_folder_bags_and_fractions(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=6, size=8, bags_per_class=2)
    with pytest.raises(UserError, match=r"class 'benign' .* 2 bag\(s\) and a split by bag needs"):
        load_dataset("folder", root, cache_dir=cache, options={"bag_regex": r"^(.*-bag\d+)_"})
    root = make_folder(tmp_path / "g", per_class=6, size=8)
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, options={"fractions": [0.8, 0.2, 0.0]})
    assert "option fractions [0.8,0.2,0] gives test nothing" in _one_line(ei)


def test_folder_official_test_part_without_a_class(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=3, size=8, splits=True)
    shutil.rmtree(root / "test" / "tumor")
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, progress=False)
    msg = _one_line(ei)
    assert "class 'tumor' has 3 train / 3 val / 0 test images" in msg
    assert f"official test part ({os.path.join(root, 'test', 'tumor')})" in msg


def test_one_class_folder_is_refused(tmp_path, cache):
    root = make_folder(tmp_path / "f", classes=("only",), per_class=9, size=8)
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, progress=False)
    assert _one_line(ei) == (
        f"{root}: dataset folder has 1 class ('only'); at least 2 are needed: "
        f"{root} needs one subfolder per class (<class>/*.png)"
    )
    root = make_folder(tmp_path / "g", per_class=9, size=8)
    with pytest.raises(UserError, match="has 1 class .*option classes names fewer than 2"):
        load_dataset("folder", root, cache_dir=cache, options={"classes": ["tumor"]})


def test_npz_val_without_a_class_and_one_class(tmp_path):
    with pytest.raises(UserError) as ei:
        load_dataset("npz", make_npz(tmp_path / "a.npz", n_val=2), progress=False)
    assert "class '2' has 10 train / 0 val / 4 test images" in _one_line(ei)
    assert "official val part (key val_labels)" in str(ei.value)
    with pytest.raises(UserError, match="dataset npz has 1 class"):
        load_dataset("npz", make_npz(tmp_path / "b.npz", num_classes=1), progress=False)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}",
)
def test_fashion_mnist_val_size_too_small():
    with pytest.raises(UserError) as ei:
        load_dataset("fashion-mnist", None, 8, options={"val_size": 5}, progress=False)
    msg = _one_line(ei)
    assert "class 'Sandal' has 6000 train / 0 val / 1000 test images" in msg
    assert msg.endswith("--data-option val_size=10 or more")


def test_check_splits_switch_and_reload_from_meta(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=2, size=8)
    b = load_dataset("folder", root, cache_dir=cache, progress=False, check_splits=False)
    assert len(b.split("val")) == 0
    with pytest.raises(UserError, match="class 'benign' has 2 train / 0 val / 0 test"):
        load_dataset_from_meta(b.meta(), cache_dir=cache, progress=False)
    c = load_dataset_from_meta(b.meta(), cache_dir=cache, progress=False, check_splits=False)
    assert c.split_fingerprint() == b.split_fingerprint()


def test_valid_fixtures_pass(pg_root, crc_root, folder_root, npz_path, cache):
    for name, root, res in (
        ("pg", pg_root, 8),
        ("crc", crc_root, 8),
        ("folder", folder_root, None),
        ("npz", npz_path, None),
    ):
        b = load_dataset(name, root, res, cache_dir=cache, progress=False)
        for s in b.splits.values():
            assert min(s.class_counts()) >= 1


# --------------------------------------------------------------------------------------
# PatchGastricADC22: a subset with one merged subtype absent


def _pg_without(tmp_path, drop: list[str]):
    """A PG set with 3 slides of each poorly subtype, minus the rows of `drop`."""
    root = make_pg(tmp_path / "pg", slides_per_class=6, patches_per_slide=1, size=32)
    with open(root / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "subtype", "text"])
        for r in rows:
            if r["subtype"] not in drop:
                w.writerow([r["id"], r["subtype"], r["text"]])
    return root


def test_pg_one_poorly_subtype_absent_warns_and_loads(tmp_path, cache):
    solid, non_solid = PG_SUBTYPES["poorly"]
    root = _pg_without(tmp_path, [non_solid])
    with pytest.warns(DataWarning) as rec:
        b = load_dataset("pg", root, 8, cache_dir=cache, progress=False)
    (w,) = [r for r in rec if issubclass(r.category, DataWarning)]
    assert str(w.message) == (
        f"option classes: subtype {non_solid!r} of class 'poorly' appears nowhere in "
        f"{root / 'captions.csv'}; class 'poorly' is made of {solid!r} only"
    )
    assert w.filename == str(root / "captions.csv") and w.lineno == 0
    assert b.classes == ["well", "moderate", "poorly"]
    assert sum(s.class_counts()[2] for s in b.splits.values()) == 3
    assert b.left_out["absent_subtypes"] == {"poorly": [non_solid]}


def test_pg_absent_subtype_is_one_line_as_python_shows_it(tmp_path, cache):
    """Python's default display (what the command line prints): one line, no source line."""
    root = _pg_without(tmp_path, [PG_SUBTYPES["poorly"][0]])
    with pytest.warns(DataWarning) as rec:
        load_dataset("pg", root, 8, cache_dir=cache, progress=False)
    (w,) = [r for r in rec if issubclass(r.category, DataWarning)]
    shown = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    assert shown.count("\n") == 1 and shown.endswith("\n")
    assert shown.startswith(f"{root / 'captions.csv'}:0: DataWarning: option classes: subtype")
    assert "solid type' of class 'poorly' appears nowhere" in shown


def test_pg_class_with_all_subtypes_absent_is_user_error(tmp_path, cache):
    root = _pg_without(tmp_path, PG_SUBTYPES["poorly"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # an error, not also a warning
        with pytest.raises(UserError) as ei:
            load_dataset("pg", root, 8, cache_dir=cache, progress=False)
    msg = _one_line(ei)
    assert msg.startswith("option classes: no subtype of class 'poorly' (")
    assert f"appears in {root / 'captions.csv'}, which has " in msg
    assert f"{PG_SUBTYPES['well'][0]!r} (7 slides)" in msg  # 6 + the one without patches
    assert "'Papillary adenocarcinoma' (1 slide)" in msg


def test_pg_complete_csv_does_not_warn(pg_root, cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        b = load_dataset("pg", pg_root, 8, cache_dir=cache, progress=False)
    assert "absent_subtypes" not in b.left_out


# --------------------------------------------------------------------------------------
# a cache directory that cannot be written


def _expected(cache_dir, reason):
    return f"cannot write {cache_dir}: {reason} (choose another --cache-dir or set MTT_FAST_CACHE)"


def _leftovers(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_read_only_cache_dir_is_one_line(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", per_class=4, size=8)
    os.makedirs(cache)

    def erofs(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", erofs)
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, progress=False)
    assert _one_line(ei) == _expected(cache, "Read-only file system")
    assert _leftovers(cache) == []


def test_full_disk_while_reserving_leaves_nothing(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", per_class=4, size=8)

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC)  # no strerror: the reason comes from the errno

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", enospc, raising=False)
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=cache, progress=False)
    assert _one_line(ei) == _expected(cache, "No space left on device")
    assert _leftovers(cache) == []


def test_full_disk_at_the_final_rename_leaves_nothing(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", per_class=4, size=8)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(".npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(cache_mod.os, "replace", replace)
    with pytest.raises(UserError, match=re.escape(_expected(cache, "No space left on device"))):
        load_dataset("folder", root, cache_dir=cache, progress=False)
    assert _leftovers(cache) == []  # no .npy, no .tmp, no sidecar
    monkeypatch.undo()
    b = load_dataset("folder", root, cache_dir=cache, progress=False)
    assert len(b.split("train")) > 0


def test_cache_dir_under_a_file(tmp_path):
    root = make_folder(tmp_path / "f", per_class=4, size=8)
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "cache")
    with pytest.raises(UserError) as ei:
        load_dataset("folder", root, cache_dir=bad, progress=False)
    assert _one_line(ei) == _expected(bad, "Not a directory")


def test_filled_read_only_cache_still_loads(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "f", per_class=4, size=8)
    a = load_dataset("folder", root, cache_dir=cache, progress=False)
    before = _leftovers(cache)

    def erofs(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # nothing may be written: the cache, its sidecar and the mean/std sidecar are all there
    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", erofs)
    monkeypatch.setattr(cache_mod.os, "makedirs", erofs)
    b = load_dataset("folder", root, cache_dir=cache, progress=False)
    assert np.array_equal(a.split("train").get_raw().numpy(), b.split("train").get_raw().numpy())
    assert _leftovers(cache) == before


def _can_write_read_only_dirs() -> bool:
    d = tempfile.mkdtemp()
    try:
        os.chmod(d, 0o555)
        try:
            open(os.path.join(d, "probe"), "w").close()
            return True
        except OSError:
            return False
    finally:
        os.chmod(d, 0o755)
        shutil.rmtree(d)


@pytest.mark.skipif(_can_write_read_only_dirs(), reason="chmod does not stop writes (root)")
def test_chmod_read_only_cache_dir(tmp_path, cache):
    root = make_folder(tmp_path / "f", per_class=4, size=8)
    os.makedirs(cache)
    os.chmod(cache, 0o555)
    try:
        with pytest.raises(UserError) as ei:
            load_dataset("folder", root, cache_dir=cache, progress=False)
        assert _one_line(ei) == _expected(cache, "Permission denied")
    finally:
        os.chmod(cache, 0o755)
