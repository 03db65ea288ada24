"""What a dataset reader hands to the loader: the index of a dataset, before any decoding.

A reader (pg, crc, folder, npz, fashion-mnist) returns a :class:`SourceIndex`: either a
sorted list of image files (decoded later into the on-disk cache) or in-memory uint8
arrays, plus per-item labels, bags and official split codes (see `splits`), the class
names, and counts of what was left out.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtt_fast.data.imageio import is_image_name
from mtt_fast.errors import UserError


class DataWarning(UserWarning):
    """Something about a dataset the user should know, but that does not stop the run
    (e.g. one subtype of a merged PatchGastricADC22 class has no rows). The message is
    one line."""


#: where DataWarnings already shown are recorded (the "default" filter shows each once)
_REGISTRY: dict = {}


def warn(message: str, path: str) -> None:
    """Issue a one-line :class:`DataWarning` about the data file `path`.

    The warning is attributed to `path` (line 0), not to the library line that raises it:
    Python's default display is then the single line ``<path>:0: DataWarning: <message>``
    (no source line follows, since line 0 has none), in a script as on the command line.
    """
    text = " ".join(str(message).split())
    warnings.warn_explicit(
        text, DataWarning, filename=str(path), lineno=0, module="mtt_fast.data", registry=_REGISTRY
    )


@dataclass
class SourceIndex:
    """The index of one dataset.

    Attributes:
        root: absolute path of the dataset (directory or file).
        classes: class names; label i is classes[i].
        channels: 1 or 3.
        native_res: default side length when no --res is given.
        preset: normalization preset used by normalization="auto" (None = compute).
        labels: int64 [N].
        bags: N bag names.
        official: int64 [N] split codes (splits.TRAIN/VAL/TEST/TRAINVAL/UNASSIGNED).
        files: N paths relative to root (file datasets), sorted; None for arrays.
        file_stats: N (size, mtime_ns) pairs for the cache key; None for arrays.
        images: uint8 [N, C, H, W] (array datasets); None for files.
        left_out: JSON-serializable counts of what the reader skipped, by reason.
    """

    root: str
    classes: list[str]
    channels: int
    native_res: int
    preset: str | None
    labels: np.ndarray
    bags: list[str]
    official: np.ndarray
    files: list[str] | None = None
    file_stats: list[tuple[int, int]] | None = None
    images: np.ndarray | None = None
    left_out: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def check_classes_nonempty(self, what: str) -> None:
        """Raise UserError naming `what` when some class has no image."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise UserError(f"{what}: class(es) {', '.join(map(repr, empty))} have no images")


def check_options(name: str, options: dict | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge user options over a dataset's defaults; unknown keys are a UserError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise UserError(f"option {unknown[0]}: not an option of dataset {name}; valid: {valid}")
    merged = dict(defaults)
    merged.update(options)
    return merged


def require_dir(path: str, what: str) -> None:
    """Raise UserError naming `what` unless `path` is a directory."""
    if not os.path.isdir(path):
        raise UserError(f"{what}: {path} is not a directory")


def scan_images(directory: str, root: str, recursive: bool = False) -> list[tuple[str, int, int]]:
    """List image files under `directory` as (path relative to root, size, mtime_ns), sorted.

    One os.scandir per directory; non-image files and hidden files are ignored.
    """
    out: list[tuple[str, int, int]] = []
    stack = [directory]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    if recursive:
                        stack.append(e.path)
                    continue
                if is_image_name(e.name):
                    st = e.stat()
                    out.append((os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns))
    out.sort()
    return out
