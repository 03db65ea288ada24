"""Run directories: settings added by a newer version do not orphan older runs."""

from __future__ import annotations

import pytest

from mtt_fast.errors import UserError
from mtt_fast.rundir import mark_complete, open_run


def prepare_out(out, config, **kw) -> str:
    """What a stage finds in ``out`` (and the lock released again)."""
    with open_run(out, config, **kw) as run:
        return run.state


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


def test_open_run_removes_stale_temporaries_and_keeps_results(tmp_path):
    from mtt_fast.rundir import open_run

    out = tmp_path / "run"
    with open_run(out, {"command": "distill", "ipc": 1}):
        pass
    (out / "synset").mkdir()
    planted = [out / ".checkpoint.safetensors.x1.tmp", out / "synset" / ".grid.png.y2.tmp", out / ".tmpAb12Cd"]
    kept = [out / "synset" / "grid.png", out / "metrics.jsonl"]
    for p in planted + kept:
        p.write_text("x")
    with open_run(out, {"command": "distill", "ipc": 1}) as run:
        assert run.state == "resume"
    assert not any(p.exists() for p in planted) and all(p.exists() for p in kept)


def test_second_owner_is_refused_naming_the_first(tmp_path):
    import os

    from mtt_fast.rundir import open_run

    out = tmp_path / "run"
    with open_run(out, {"command": "x"}), \
            pytest.raises(UserError, match=f"--out {out} is in use by PID {os.getpid()}"):
        open_run(out, {"command": "x"})
    with open_run(out, {"command": "x"}):  # released with the first
        pass


def test_overwrite_gives_the_old_run_back_on_failure_and_drops_it_at_the_first_checkpoint(tmp_path):
    from mtt_fast.rundir import finished, open_run

    out = tmp_path / "run"
    with open_run(out, {"command": "x", "ipc": 1}) as run:
        (out / "result").write_text("old")
        run.complete()
    with pytest.raises(RuntimeError), open_run(out, {"command": "x", "ipc": 2}, overwrite=True):
        assert not (out / "result").exists() and (tmp_path / ".run.previous" / "result").is_file()
        raise RuntimeError("the new run failed before its first checkpoint")
    assert (out / "result").read_text() == "old" and finished(out, {"command": "x", "ipc": 1})
    with open_run(out, {"command": "x", "ipc": 2}, overwrite=True) as run:
        run.checkpointed()
        assert not (tmp_path / ".run.previous").exists()
    assert not (out / "result").exists() and not finished(out, {"command": "x", "ipc": 2})
