"""Run directories: one owner at a time, never overwrite a result, resume a killed run.

Every command writes into ``--out DIR``. The resolved settings go to ``DIR/config.yaml`` first;
a finished run leaves ``DIR/COMPLETE``. Running the same command again then

* on a finished run with the same settings: does nothing and says so;
* on an unfinished run with the same settings: resumes;
* on a run with other settings: refuses, naming the first differing setting;
* with ``--overwrite``: moves the old run aside, starts again in an empty directory, and
  deletes the old run only once the new one has written its first checkpoint (or finished);
  until then a failure, an interrupt or a kill gives the old run back.

:func:`open_run` holds an exclusive lock for the run (``fcntl.flock`` on the hidden file
``.<name>.lock`` beside ``DIR``, which records the owner's PID and start time), so a second
command on the same ``--out`` stops at once with one line naming that PID.

Under torchrun (:mod:`mtt_fast.distributed`) rank 0 alone checks, locks and writes the run
directory; :func:`finished` broadcasts its answer and :func:`open_run` gives the other ranks a
bystander handle once rank 0 holds the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from mtt_fast import distributed
from mtt_fast.errors import UserError
from mtt_fast.io import read_yaml, write_text, write_yaml

# Settings that may change between a run and its resumption without changing the result.
VOLATILE_KEYS = {"device", "progress", "overwrite", "out", "config", "num_threads"}


def _stable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE_KEYS}


_MISSING = object()


def _first_difference(old: dict, new: dict, defaults: dict | None = None) -> str | None:
    defaults = defaults or {}
    for k in sorted(set(old) | set(new)):
        if k not in old and k in new and defaults.get(k, _MISSING) == new[k]:
            continue  # a setting added by a newer version, left at its default: the old run used that
        if old.get(k) != new.get(k):
            return f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
    return None


def check_out(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
              defaults: dict | None = None) -> str:
    """What :func:`open_run` would find in ``out``, without writing anything.

    Returns:
        ``"new"`` (absent or empty, or ``overwrite`` of an mtt-fast run), ``"resume"`` or ``"complete"``.

    Raises:
        UserError: ``out`` is a file, a foreign non-empty folder, or a run with other settings.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a directory")
    previous = _sibling(out, "previous")
    if previous.is_dir():  # a killed --overwrite: open_run puts this run back first
        out = previous
    if not out.exists() or not any(out.iterdir()):
        return "new"
    cfg_path = out / "config.yaml"
    if not cfg_path.is_file():
        if overwrite:
            raise UserError(f"{option} {out} is not an mtt-fast run directory; refusing to delete it even with --overwrite")
        raise UserError(f"{option} {out} exists, is not empty and is not an mtt-fast run directory; choose another {option}")
    if overwrite:
        return "new"
    old = _stable(read_yaml(cfg_path))
    diff = _first_difference(old, _stable(_plain(config)), _plain(defaults or {}))
    if diff:
        raise UserError(f"{option} {out} holds a run with other settings ({diff}); choose another {option} or pass --overwrite")
    return "complete" if (out / "COMPLETE").exists() else "resume"


def finished(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
             defaults: dict | None = None) -> bool:
    """True when ``out`` holds a finished run with these settings (nothing to do); raises like
    :func:`check_out`. Writes nothing, except that it first gives back a run that a killed
    ``--overwrite`` had moved aside (under the run's lock). Under torchrun rank 0 decides."""
    answer = _finished(out, config, overwrite=overwrite, option=option, defaults=defaults) \
        if distributed.is_main() else None
    return bool(distributed.broadcast_object(answer))


def _finished(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
             defaults: dict | None = None) -> bool:
    out = Path(out)
    if check_out(out, config, overwrite=overwrite, option=option, defaults=defaults) != "complete":
        return False
    if _sibling(out, "previous").is_dir() or _sibling(out, "discard").is_dir():
        with _open_run(out, config, overwrite=overwrite, option=option, defaults=defaults) as run:
            return run.state == "complete"
    return True


def mark_complete(out: str | Path) -> None:
    write_text(Path(out) / "COMPLETE", "")


def _mkdir(path: Path, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {option} {path}: {e.strerror or e}") from None


def _sibling(out: Path, what: str) -> Path:
    return out.parent / f".{out.name}.{what}"


class RunDir:
    """An owned run directory; see :func:`open_run`.

    Attributes:
        path: the run directory.
        state: ``"new"``, ``"resume"`` or ``"complete"``.
    """

    def __init__(self, path: Path, state: str, lock_fd: int, previous: Path | None):
        self.path, self.state, self._fd, self._previous = path, state, lock_fd, previous

    def checkpointed(self) -> None:
        """The run wrote a resumable checkpoint: an old run replaced by ``--overwrite`` is deleted now."""
        if self._previous is not None:
            _discard(self._previous, _sibling(self.path, "discard"))
            self._previous = None

    def complete(self) -> None:
        """Mark the run finished (``COMPLETE``)."""
        if self._fd < 0:
            return  # a bystander rank (torchrun): rank 0 writes
        self.checkpointed()
        mark_complete(self.path)

    def close(self, failed: bool) -> None:
        try:
            if failed and self._previous is not None:
                _restore(self.path, self._previous)
                self._previous = None
        finally:
            if self._fd >= 0:
                os.close(self._fd)  # releases the flock
                self._fd = -1

    def __enter__(self) -> RunDir:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _discard(previous: Path, discard: Path) -> None:
    if discard.exists():
        shutil.rmtree(discard)
    os.replace(previous, discard)  # atomic: a kill from here on never "restores" a half-deleted run
    shutil.rmtree(discard)


def _restore(out: Path, previous: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(previous, out)


# How long a new command waits for the lock of an owner that has already exited: a killed
# process's lock is released only when its last thread (or a forked child sharing the lock's
# file) has finished dying, which on a loaded machine can lag the kill by seconds.
DEAD_OWNER_WAIT_S = 30.0


def _owner_gone(owner: dict) -> bool:
    """Whether the recorded owner is a process of this machine that has exited (or is exiting)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False  # another machine's lock (a shared file system), or an unreadable record
    try:
        state = Path(f"/proc/{owner['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return state in ("Z", "X")


def _lock(out: Path, option: str) -> int:
    lock = _sibling(out, "lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write {option} {out}: {e.strerror or e}") from None
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            pass
        try:
            owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            owner = {}
        if not isinstance(owner, dict):
            owner = {}
        if _owner_gone(owner):
            deadline = deadline if deadline is not None else time.monotonic() + DEAD_OWNER_WAIT_S
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
        os.close(fd)
        who = f"PID {owner.get('pid', '?')} (started {owner.get('started', '?')})"
        if deadline is not None:
            who += ", which has exited but whose lock is still held (by a child process it forked?)"
        raise UserError(f"{option} {out} is in use by {who}; wait for it or choose another {option}") from None
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    return fd


def open_run(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
             defaults: dict | None = None) -> RunDir:
    """Own ``out`` for a run with ``config``: lock it, recover an interrupted ``--overwrite``,
    remove stale temporary files, and write ``config.yaml`` for a new run.

    Use as a context manager; an exception inside gives back a run that ``--overwrite`` moved
    aside (unless the new run already wrote a checkpoint) and releases the lock. Under torchrun
    rank 0 owns the directory; the other ranks wait until it does and get a bystander handle
    (same ``state``; ``checkpointed`` and ``complete`` write nothing there).
    """
    if not distributed.active():
        return _open_run(out, config, overwrite=overwrite, option=option, defaults=defaults)
    run = _open_run(out, config, overwrite=overwrite, option=option, defaults=defaults) \
        if distributed.is_main() else None
    state = distributed.broadcast_object(run.state if run is not None else None)
    return run if run is not None else RunDir(Path(out), state, -1, None)


def _open_run(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
              defaults: dict | None = None) -> RunDir:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a directory")
    _mkdir(out.parent, option)
    fd = _lock(out, option)
    previous = None
    try:
        _recover(out)
        state = check_out(out, config, overwrite=overwrite, option=option, defaults=defaults)
        if state == "new" and overwrite and out.exists() and any(out.iterdir()):
            previous = _sibling(out, "previous")
            os.replace(out, previous)
        for tmp in _stale_temporaries(out):
            tmp.unlink(missing_ok=True)
        if state == "new":
            _mkdir(out, option)
            write_yaml(out / "config.yaml", _plain(config))
    except BaseException:
        RunDir(out, "new", fd, previous).close(failed=True)
        raise
    return RunDir(out, state, fd, previous)


def hold(out: str | Path, option: str = "--out") -> RunDir:
    """Only the lock (and the directory): for folders whose parts are runs of their own (a sweep)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a directory")
    _mkdir(out.parent, option)
    fd = _lock(out, option)
    try:
        _mkdir(out, option)
    except BaseException:
        os.close(fd)
        raise
    return RunDir(out, "resume", fd, None)


def _stale_temporaries(out: Path) -> list[Path]:
    """What killed atomic writes leave, here or in a subfolder (``synset/``): our ``.<name>.*.tmp``
    files, and the ``.tmpXXXXXX`` files safetensors itself writes beside its target before renaming."""
    if not out.is_dir():
        return []
    return [p for p in out.rglob(".*") if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith(".tmp"))]


def _recover(out: Path) -> None:
    """Finish what a killed ``--overwrite`` left: a discard in progress, or an old run to restore."""
    discard, previous = _sibling(out, "discard"), _sibling(out, "previous")
    if discard.exists():
        shutil.rmtree(discard)
    if previous.exists():
        _restore(out, previous)


def _plain(obj):
    """Config values as plain YAML types (tuples -> lists, Paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
