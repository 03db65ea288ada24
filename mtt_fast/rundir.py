"""Run directories: never overwrite a result, resume a killed run, refuse a mismatched one.

Every command writes into ``--out DIR``. The resolved settings go to ``DIR/config.yaml`` first;
a finished run leaves ``DIR/COMPLETE``. Running the same command again then

* on a finished run with the same settings: does nothing and says so;
* on an unfinished run with the same settings: resumes;
* on a run with other settings: refuses, naming the first differing setting;
* with ``--overwrite``: starts again from an empty directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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


def prepare_out(out: str | Path, config: dict, *, overwrite: bool = False, option: str = "--out",
                defaults: dict | None = None) -> str:
    """Make ``out`` ready for a run with ``config``.

    ``defaults`` holds the default value of settings that newer versions added: a run
    written before a setting existed matches when the setting is at its default now.

    Returns:
        ``"new"`` (fresh directory), ``"resume"`` (unfinished run with the same settings) or
        ``"complete"`` (finished run with the same settings: nothing to do).
    """
    out = Path(out)
    cfg_path = out / "config.yaml"
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if overwrite:
            if not cfg_path.is_file():
                raise UserError(f"{option} {out} is not an mtt-fast run directory; refusing to delete it even with --overwrite")
            shutil.rmtree(out)
        else:
            if not cfg_path.is_file():
                raise UserError(f"{option} {out} exists, is not empty and is not an mtt-fast run directory; choose another {option}")
            old = _stable(read_yaml(cfg_path))
            diff = _first_difference(old, _stable(_plain(config)), _plain(defaults or {}))
            if diff:
                raise UserError(f"{option} {out} holds a run with other settings ({diff}); choose another {option} or pass --overwrite")
            return "complete" if (out / "COMPLETE").exists() else "resume"
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg_path, _plain(config))
    return "new"


def mark_complete(out: str | Path) -> None:
    write_text(Path(out) / "COMPLETE", "")


def _plain(obj):
    """Config values as plain YAML types (tuples -> lists, Paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
