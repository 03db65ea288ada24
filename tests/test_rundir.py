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


def test_lock_of_an_exited_owner_still_held_by_its_child_is_waited_for(tmp_path, monkeypatch):
    """A killed command's lock outlives it while a process that shares the lock's file (a forked
    child, or the killed process's last thread) is still dying: the next command waits for it
    instead of refusing; a live owner is still refused at once."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    from mtt_fast import rundir

    out = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    owner = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}
    lock.write_text(json.dumps(owner))
    # the "child" holds the flock for about a second, as a forked worker of the dead owner would
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with open_run(out, {"command": "x"}) as run:
        assert run.state == "new"
    assert time.monotonic() - t0 > 0.5  # it waited for the holder
    holder.wait()

    # the same record but the owner alive (this process): refused without waiting
    owner["pid"] = os.getpid()
    lock.write_text(json.dumps(owner))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(UserError, match=f"in use by PID {os.getpid()}"):
            open_run(out, {"command": "x"})
        assert time.monotonic() - t0 < 5
        # an exited owner whose lock is never released: refused after the bounded wait, saying why
        owner["pid"] = int(dead.stdout)
        lock.write_text(json.dumps(owner))
        monkeypatch.setattr(rundir, "DEAD_OWNER_WAIT_S", 0.3)
        with pytest.raises(UserError, match="has exited but whose lock is still held"):
            open_run(out, {"command": "x"})
    finally:
        holder.kill()
        holder.wait()


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
