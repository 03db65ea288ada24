"""Decoding image files into uint8 arrays, and reading MNIST-style idx files.

This module imports only numpy and Pillow (never torch), so that the worker processes of
the cache builder start quickly.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence

import numpy as np

from mtt_fast.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_ONE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "P;L"}


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image extensions we read (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def probe_image(path: str) -> tuple[int, int, int]:
    """Return (channels, width, height) of an image file without decoding all of it.

    Channels is 1 for grayscale modes and 3 for everything else (RGB, RGBA, palette, CMYK).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            channels = 1 if img.mode in _ONE_CHANNEL_MODES else 3
            return channels, img.width, img.height
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise UserError(f"cannot read image {path}: {exc}") from None


def decode_image(path: str, res: int, channels: int) -> np.ndarray:
    """Decode one image file, convert it and resize it to a square.

    Args:
        path: the image file.
        res: output side length; the image is resized to res x res with Pillow's bilinear
            filter, which antialiases when shrinking (JPEGs are first decoded at a reduced
            DCT scale when that is still at least res, which is faster and also smooth).
        channels: 1 (grayscale "L") or 3 ("RGB").

    Returns:
        uint8 array [channels, res, res].

    Raises:
        UserError: the file is missing, truncated or not an image.
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and (img.width > 2 * res or img.height > 2 * res):
                img.draft(mode, (res, res))
            img = img.convert(mode)
            if img.size != (res, res):
                img = img.resize((res, res), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise UserError(f"cannot read image {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def decode_many(paths: Sequence[str], res: int, channels: int) -> np.ndarray:
    """Decode a list of files into uint8 [len(paths), channels, res, res] (pool worker)."""
    out = np.empty((len(paths), channels, res, res), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, res, channels)
    return out


def _decode_chunk(args: tuple[int, list[str], int, int]) -> tuple[int, np.ndarray | str]:
    """Pool entry point: returns (start, array) or (start, error message)."""
    start, paths, res, channels = args
    try:
        return start, decode_many(paths, res, channels)
    except UserError as exc:
        return start, str(exc)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an MNIST-style idx file (optionally gzip-compressed) into a numpy array.

    Raises:
        UserError: the file is missing or is not a valid idx file.
    """
    path = str(path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise UserError(f"cannot read {path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"cannot read {path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[data[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != need:
        raise UserError(
            f"cannot read {path}: expected {need} bytes of data for shape {shape}, "
            f"found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).copy()
