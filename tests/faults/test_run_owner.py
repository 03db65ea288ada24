"""One owner per --out, and --overwrite that never loses the old result before the new one exists."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.cli.conftest import run
from tests.faults._harness import (
    Zygote,
    assert_clean,
    assert_same_run,
    distill_args,
    jsonl,
    raw_hashes,
    wait_until,
    written_since,
)


def one_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


def test_second_process_on_the_same_out_is_refused(procs, store, distill_ref, tmp_path):
    out = tmp_path / "mtt"
    lock = tmp_path / ".mtt.lock"
    args = distill_args(store, out)
    first = procs.start(*args)
    # running: it owns the lock and has written a metrics line of its own
    wait_until(lambda: lock.is_file() and len(jsonl(out / "metrics.jsonl")) >= 2, first, what="the first distill")
    first.stop()  # hold it mid-run, lock held, whatever the machine's speed
    try:
        before = raw_hashes(out)
        t = time.monotonic()
        second = procs.start(*args)
        rc = second.wait(timeout=120)
        took = time.monotonic() - t
        assert rc == 2, second.output()
        line = one_line(second.output())
        assert line.startswith("error:") and f"is in use by PID {first.pid}" in line, line
        # forked from the pre-imported zygote it needs no imports; a fresh interpreter needs 15-25 s on a
        # loaded 2-core machine (torch, then torch._dynamo at the first optimizer) before it gets there
        assert took < (20 if isinstance(procs, Zygote) else 120), f"the refusal took {took:.1f} s"
        assert raw_hashes(out) == before, "the refused process changed the run directory"
    finally:
        first.cont()
    assert first.wait() == 0, first.output()
    assert_clean(out)
    assert_same_run(out, distill_ref)


def _finished_copy(distill_ref, out):
    shutil.copytree(distill_ref, out)
    return raw_hashes(out)


def test_overwrite_with_an_invalid_setting_leaves_the_old_run(store, distill_ref, tmp_path):
    out = tmp_path / "mtt"
    before = _finished_copy(distill_ref, out)
    r = run(*distill_args(store, out, "--overwrite", "--lr-img", "-1"), ok=False)
    assert r.exit_code == 2, r.output
    assert "--lr-img" in one_line(r.output)
    assert raw_hashes(out) == before
    assert (out / "COMPLETE").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mtt.")) in ([], [".mtt.lock"])


@pytest.mark.parametrize("new_settings", [False, True], ids=["same-settings", "other-settings"])
def test_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(
        procs, store, distill_ref, tmp_path, new_settings):
    out = tmp_path / "mtt"
    previous = tmp_path / ".mtt.previous"
    before = _finished_copy(distill_ref, out)
    extra = ["--seed", "4"] if new_settings else []
    p = procs.start(*distill_args(store, out, "--overwrite", *extra))
    wait_until(lambda: previous.is_dir() and (out / "config.yaml").is_file(), p, what="the old run moved aside")
    p.kill()
    assert previous.is_dir() and not (out / "checkpoint.safetensors").exists(), \
        "the kill came after the first checkpoint: the test did not test what it should"
    # the ORIGINAL command, without --overwrite: the old finished run is still the result
    r = run(*distill_args(store, out))
    assert "nothing to do" in r.output, r.output
    assert raw_hashes(out) == before
    assert not previous.exists()


def test_overwrite_killed_after_its_first_checkpoint_resumes_the_new_run(procs, store, distill_ref, tmp_path):
    out = tmp_path / "mtt"
    previous = tmp_path / ".mtt.previous"
    _finished_copy(distill_ref, out)  # copytree keeps the old files' times
    t0 = time.time_ns()
    p = procs.start(*distill_args(store, out, "--overwrite"))
    wait_until(lambda: written_since(out / "checkpoint.safetensors", t0) and not previous.exists(), p,
               what="the new run's first checkpoint")
    p.kill()
    assert p.poll() == -9, f"the overwriting run ended before the kill:\n{p.output()}"
    assert not previous.exists()  # (.mtt.discard may remain: a kill while the old run was being deleted)
    assert not (out / "COMPLETE").exists(), "the old run is still there"
    r = run(*distill_args(store, out))
    assert re.search(r"resuming from iteration [1-9]", r.output), r.output
    assert_clean(out)
    assert_same_run(out, distill_ref)


def test_stale_temp_files_in_sub_folders_are_removed(store, distill_ref, tmp_path):
    """What a kill inside Synset.save leaves, planted in an unfinished run; the rerun must remove it."""
    out = tmp_path / "mtt"
    shutil.copytree(distill_ref, out)
    (out / "COMPLETE").unlink()
    stale = [out / ".summary.json.k1ll3d.tmp", out / "synset" / ".grid.png.k1ll3d.tmp",
             out / "synset_last" / ".synset.safetensors.k1ll3d.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    run(*distill_args(store, out))
    left = [str(f.relative_to(out)) for f in stale if f.exists()]
    assert not left, f"left behind: {left}"
