"""Uniform uint8 access to a dataset's pixels, whether memmapped on disk or in RAM."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ImageStore:
    """uint8 images [N, C, H, W] that read out as [k, C, res, res] tensors.

    File datasets hand in the on-disk cache (already at res). Array datasets hand in their
    native arrays; when res differs these are resized per read with antialiased bilinear
    interpolation and rounded back to uint8 levels, so every read of an image is identical
    to what a precomputed resize would give.
    """

    def __init__(self, array: np.ndarray, res: int, path: str | None = None) -> None:
        assert array.ndim == 4 and array.dtype == np.uint8, (array.shape, array.dtype)
        self.array = array
        self.res = int(res)
        self.path = path
        self.channels = int(array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def needs_resize(self) -> bool:
        return tuple(self.array.shape[2:]) != (self.res, self.res)

    def read_numpy(self, idx: np.ndarray) -> np.ndarray:
        """uint8 [k, C, H, W] at the stored size, for int64 store indices `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return np.empty((0, *self.array.shape[1:]), dtype=np.uint8)
        if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
            return np.array(self.array[idx[0] : idx[-1] + 1])  # contiguous: one read
        order = np.argsort(idx, kind="stable")
        data = self.array[idx[order]]  # sorted fancy index: sequential reads of a memmap
        out = np.empty_like(data)
        out[order] = data
        return out

    def read(self, idx: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 tensor [k, C, res, res] on `device`."""
        x = torch.from_numpy(self.read_numpy(idx)).to(device, non_blocking=True)
        if self.needs_resize and x.shape[0] > 0:
            y = F.interpolate(
                x.float(),
                size=(self.res, self.res),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            x = y.round_().clamp_(0, 255).to(torch.uint8)
        return x
