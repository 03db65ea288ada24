"""Small file helpers: atomic writes, JSON/YAML, safetensors, run-directory guards.

Nothing a user may receive from someone else is unpickled: tensors go through safetensors,
everything else through JSON/YAML. Every write goes to a temporary file in the same folder
and is renamed into place, so a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtt_fast.errors import UserError


def cannot_write(path: str | Path, e: BaseException) -> UserError:
    """The one-line error for a failed write (read-only or full disk, permissions, ...)."""
    reason = getattr(e, "strerror", None)
    if not reason:
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
    return UserError(f"cannot write {Path(path).parent}: {reason}")


@contextmanager
def atomic_target(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Any OSError (and a safetensors write error) becomes :func:`cannot_write`'s one line; the
    temporary file is removed, so a failed write leaves the old file or nothing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise cannot_write(path, e) from None
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates 0600; results are shared, so give them the usual 0666 & ~umask
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        raise cannot_write(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_yaml(path: str | Path, what: str = "config") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically (contiguous CPU copies)."""
    with atomic_target(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, what: str = "file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning any failure into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{what} {path} is corrupt or not a safetensors file: {e}") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (flushed; a torn last line is skipped by :func:`read_jsonl`)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    except OSError as e:
        raise cannot_write(path, e) from None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
