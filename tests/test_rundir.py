"""Run directories: settings added by a newer version do not orphan older runs."""

from __future__ import annotations

import pytest

from mtt_fast.errors import UserError
from mtt_fast.rundir import mark_complete, prepare_out


def test_new_setting_at_its_default_matches_an_old_run(tmp_path):
    out = tmp_path / "run"
    assert prepare_out(out, {"command": "distill", "ipc": 1}) == "new"
    mark_complete(out)
    new = {"command": "distill", "ipc": 1, "space": "wp"}
    assert prepare_out(out, new, defaults={"space": "wp"}) == "complete"
    with pytest.raises(UserError, match="space: None there, 'z' now"):
        prepare_out(out, {**new, "space": "z"}, defaults={"space": "wp"})
    with pytest.raises(UserError, match="space"):
        prepare_out(out, new)  # without the defaults a new key is a difference
    with pytest.raises(UserError, match="ipc: 1 there, 2 now"):
        prepare_out(out, {**new, "ipc": 2}, defaults={"space": "wp"})
