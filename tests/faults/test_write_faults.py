"""A full or read-only output directory, simulated (no small tmpfs in CI): the Nth write into
``--out`` fails with ENOSPC or EROFS, in-process, for distill, buffer, gan train and eval.

Three writers are wrapped, and counted in a clean run first so that N can be the first, a middle
and the last write of each kind:

* ``rename``: ``os.replace`` into ``--out`` raises EROFS (every atomic write ends with one);
* ``tensors``: safetensors' ``save_file`` writes HALF the file, then raises ENOSPC;
* ``append``: an append to ``metrics.jsonl`` writes half the line, then raises ENOSPC.

Each must give exit status 2 and the one line ``error: cannot write DIR: <reason>``, leave no
temporary file and no COMPLETE, and a rerun without the fault must give the uninterrupted result.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import mtt_fast.io
from tests.cli.conftest import run
from tests.faults._harness import assert_clean, assert_same_run, buffer_args, distill_args, eval_args, gan_args

REASON = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EROFS: os.strerror(errno.EROFS)}


def _inside(path, root: Path) -> bool:
    try:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(root)
    except TypeError:
        return False


class Faults:
    """Wrap the writers; count writes into ``root`` by kind; fail the ``n``-th of ``kind``."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path, kind: str | None = None, n: int = 0):
        self.root, self.kind, self.n = Path(os.path.abspath(root)), kind, n
        self.events: list[tuple[str, str]] = []
        self.fired = False
        real_replace, real_save, real_open = os.replace, mtt_fast.io.save_file, open

        def hit(kind: str, path) -> bool:
            if not _inside(path, self.root):
                return False
            self.events.append((kind, os.path.relpath(os.fspath(path), self.root)))
            if kind == self.kind and sum(k == kind for k, _ in self.events) == self.n:
                self.fired = True
                return True
            return False

        def replace(src, dst, *a, **k):
            if hit("rename", dst):
                raise OSError(errno.EROFS, REASON[errno.EROFS], os.fspath(src), None, os.fspath(dst))
            return real_replace(src, dst, *a, **k)

        def save_file(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            if hit("tensors", filename):
                with real_open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
                raise OSError(errno.ENOSPC, REASON[errno.ENOSPC], os.fspath(filename))

        class Torn:
            """A file whose write stores the first half, then finds the disk full."""

            def __init__(self, f):
                self.f = f

            def write(self, s):
                self.f.write(s[: len(s) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, REASON[errno.ENOSPC])

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def open_(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            if "a" in mode and hit("append", file):
                return Torn(f)
            return f

        mp.setattr(os, "replace", replace)
        mp.setattr(mtt_fast.io, "save_file", save_file)
        mp.setattr(mtt_fast.io, "open", open_, raising=False)


COMMANDS = {
    "distill": lambda f, out: distill_args(f["store"], out),
    "buffer": lambda f, out: buffer_args(f["crc_root"], f["fault_cache"], out),
    "gan": lambda f, out: gan_args(f["crc_root"], f["fault_cache"], out),
    "eval": lambda f, out: eval_args(f["fault_synset"], out),
}


def _args(name, request, out):
    needs = ("fault_synset",) if name == "eval" else ("store", "crc_root", "fault_cache")
    return COMMANDS[name]({k: request.getfixturevalue(k) for k in needs}, out)


_counted: dict[str, list] = {}


def _writes(name, request, tmp_path_factory) -> list[tuple[str, str]]:
    """The writes a clean run of ``name`` makes into its --out, in order (counted once per session)."""
    if name not in _counted:
        out = tmp_path_factory.mktemp("count") / name
        with pytest.MonkeyPatch.context() as mp:
            faults = Faults(mp, out)
            run(*_args(name, request, out))
        _counted[name] = faults.events
    return _counted[name]


#: (command, writer, which one of that writer's writes: an index, "mid" or -1 for the last)
CASES = [
    ("distill", "rename", 1), ("distill", "rename", "mid"), ("distill", "rename", -1),
    ("distill", "tensors", 1), ("distill", "tensors", -1), ("distill", "append", "mid"),
    ("buffer", "rename", 2),
    ("buffer", "rename", "mid"), ("buffer", "tensors", 2),
    ("gan", "rename", "mid"), ("gan", "append", "mid"),
    ("gan", "tensors", -1),
    ("eval", "rename", 1), ("eval", "rename", "mid"), ("eval", "rename", -1),
]
IDS = ["-".join(map(str, c.values if hasattr(c, "values") else c)) for c in CASES]


@pytest.mark.parametrize(("name", "kind", "which"), CASES, ids=IDS)
def test_full_or_read_only_out_is_one_line_and_resumable(name, kind, which, request, tmp_path, tmp_path_factory):
    writes = [p for k, p in _writes(name, request, tmp_path_factory) if k == kind]
    assert writes, f"{name} made no {kind} write"
    n = {"mid": (len(writes) + 1) // 2, -1: len(writes)}.get(which, which)
    out = tmp_path / name
    args = _args(name, request, out)
    with pytest.MonkeyPatch.context() as mp:
        faults = Faults(mp, out, kind, n)
        r = run(*args, ok=False)
    assert faults.fired, f"write {n} of {kind} was never reached"
    target = writes[n - 1]
    lines = r.output.strip().splitlines()  # progress lines may come first; the error is one line, the last
    errors = [x for x in lines if x.startswith("error:")]
    assert r.exit_code == 2 and errors == lines[-1:] and "Traceback" not in r.output, \
        f"failing write {n} of {kind} ({target}):\n{r.output}"
    m = re.fullmatch(r"error: cannot write (.+): (.+)", lines[-1])
    assert m and m.group(2) in REASON.values(), f"failing {target}: {lines[-1]}"
    assert _inside(m.group(1), out.resolve()), lines[-1]
    assert not (out / "COMPLETE").exists(), f"COMPLETE after failing {target}"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")], f"temp files after failing {target}"
    run(*args)
    assert_clean(out)
    assert_same_run(out, request.getfixturevalue(f"{name}_ref"))


def test_gan_metrics_after_a_resume_between_two_records(request, tmp_path):
    def args(out):
        a = _args("gan", request, out)
        a[a.index("--log-every") + 1], a[a.index("--checkpoint-every") + 1] = "2", "3"
        return a

    run(*args(tmp_path / "ref"))
    out = tmp_path / "gan"
    with pytest.MonkeyPatch.context() as mp:
        faults = Faults(mp, out, "append", 2)  # the record of step 4; the last checkpoint is step 3's
        assert run(*args(out), ok=False).exit_code == 2 and faults.fired
    run(*args(out))
    assert_same_run(out, tmp_path / "ref")
