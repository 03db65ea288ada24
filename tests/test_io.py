"""Atomic writes leave ordinary, shareable files (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

from mtt_fast.io import write_json


def test_atomic_write_uses_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind
