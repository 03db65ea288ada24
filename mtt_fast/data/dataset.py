"""DatasetBundle (a loaded dataset with its split) and ImageSplit (one split's images).

Pixels stay uint8 in an `ImageStore` (a memmap of the on-disk cache, or an in-memory array)
until asked for: ``get_raw`` gives float [0, 1], ``get`` gives the model's input space
``(x - mean) / std``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mtt_fast.data.splits import SPLIT_NAMES
from mtt_fast.data.store import ImageStore
from mtt_fast.data.transforms import ExpertTransform
from mtt_fast.errors import UserError

Indices = torch.Tensor | np.ndarray | Sequence[int] | slice | int | None


class _Normalizer:
    """Shared normalize/denormalize helpers for bundles and splits."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _ms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return m, s

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images [n, C, H, W] -> model input space (x - mean) / std."""
        m, s = self._ms(x01)
        return (x01 - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input space -> [0, 1] pixel units (not clamped)."""
        m, s = self._ms(x)
        return x * s + m


class ImageSplit(_Normalizer):
    """One split (train, val or test) of a dataset.

    Attributes:
        name: "train", "val" or "test" (or "<name>[subset]").
        labels: LongTensor [n].
        bags: n bag names (slide / patient / image).
        classes: class names.
        channels, res: image shape is [channels, res, res].
        mean, std: per-channel normalization.
    """

    def __init__(
        self,
        name: str,
        store: ImageStore,
        index: np.ndarray,
        labels: np.ndarray,
        bags: Sequence[str],
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.name = name
        self._store = store
        self._index = np.asarray(index, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.bags = list(bags)
        self.classes = list(classes)
        self.channels = store.channels
        self.res = store.res
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        assert len(self._index) == len(self.labels) == len(self.bags)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"ImageSplit({self.name!r}, n={len(self)}, classes={len(self.classes)}, "
            f"shape=[{self.channels}, {self.res}, {self.res}])"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def store(self) -> ImageStore:
        """The uint8 pixel store this split reads from (shared by all splits of a bundle)."""
        return self._store

    @property
    def store_index(self) -> np.ndarray:
        """Positions of this split's images in the underlying store (read-only view)."""
        v = self._index.view()
        v.flags.writeable = False
        return v

    def _positions(self, indices: Indices) -> np.ndarray:
        n = len(self)
        if indices is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(indices, slice):
            return np.arange(n, dtype=np.int64)[indices]
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {idx.shape} for a split of {n}")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.max() >= n or idx.min() < -n):
            raise IndexError(f"index out of range for split {self.name!r} of size {n}")
        return np.where(idx < 0, idx + n, idx)

    def get_uint8(
        self, indices: Indices = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """uint8 [k, C, res, res] images (the stored pixels) on `device`."""
        return self._store.read(self._index[self._positions(indices)], device)

    def get_raw(self, indices: Indices = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 [k, C, res, res] images in [0, 1] on `device`."""
        return self.get_uint8(indices, device).float().div_(255.0)

    def get(self, indices: Indices = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 [k, C, res, res] normalized images ((x - mean) / std) on `device`."""
        return self.normalize(self.get_raw(indices, device))

    def class_indices(self, c: int | str) -> torch.Tensor:
        """LongTensor of the positions (in this split) of the images of class c (index or name)."""
        if isinstance(c, str):
            if c not in self.classes:
                raise UserError(f"unknown class {c!r}; classes: {', '.join(self.classes)}")
            c = self.classes.index(c)
        return torch.nonzero(self.labels == int(c), as_tuple=False).flatten()

    def class_counts(self) -> list[int]:
        """Number of images per class."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Indices, name: str | None = None) -> ImageSplit:
        """A new split holding the given positions of this one (same store, no copy)."""
        pos = self._positions(indices)
        return ImageSplit(
            name or f"{self.name}[subset]",
            self._store,
            self._index[pos],
            self.labels.numpy()[pos],
            [self.bags[i] for i in pos.tolist()],
            self.classes,
            self.mean,
            self.std,
        )

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        transform: ExpertTransform | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over (x, y) mini-batches for one epoch.

        Args:
            batch_size: images per batch.
            generator: CPU torch.Generator for the shuffle and the augmentation parameters.
            shuffle: visit the images in a random order (else in split order).
            drop_last: skip a final short batch.
            device: where x and y are put.
            transform: optional augmentation applied to [0, 1] images before normalizing.

        Yields:
            x float32 [b, C, res, res] normalized, y LongTensor [b], both on `device`.
        """
        if batch_size < 1:
            raise UserError(f"option batch_size: must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order_np = order.numpy()
        stop = n - (n % batch_size) if drop_last else n
        for s in range(0, stop, batch_size):
            pos = order_np[s : s + batch_size]
            x = self.get_raw(pos, device)
            if transform is not None:
                x = transform(x, generator)
            y = self.labels[torch.from_numpy(pos)].to(device, non_blocking=True)
            yield self.normalize(x), y


def _split_fingerprint(bag_split: dict[str, str], counts: dict[str, int]) -> str:
    h = hashlib.sha256(json.dumps([sorted(bag_split.items()), counts], sort_keys=True).encode())
    return h.hexdigest()[:16]


class DatasetBundle(_Normalizer):
    """A loaded dataset: its class names, image shape, normalization and three splits.

    Build it with `mtt_fast.data.load_dataset`, or `load_dataset_from_meta` to reload the
    exact same data and split from `meta()`.
    """

    def __init__(
        self,
        *,
        name: str,
        root: str,
        res: int,
        classes: Sequence[str],
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        splits: dict[str, ImageSplit],
        options: dict[str, Any],
        seed: int,
        normalization: str,
        left_out: dict[str, Any] | None = None,
        cache_path: str | None = None,
        preset: str | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.res = int(res)
        self.classes = list(classes)
        self.channels = int(channels)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.options = options
        self.seed = int(seed)
        self.normalization = normalization
        self.left_out = dict(left_out or {})
        self.cache_path = cache_path
        self.preset = preset
        self._splits = splits

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"DatasetBundle({self.name!r}, classes={self.classes}, res={self.res}, {sizes})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> dict[str, ImageSplit]:
        """{"train": ..., "val": ..., "test": ...}."""
        return dict(self._splits)

    def split(self, name: str) -> ImageSplit:
        """The "train", "val" or "test" split."""
        if name not in self._splits:
            raise UserError(
                f"option split: unknown split {name!r}; valid: {', '.join(SPLIT_NAMES)}"
            )
        return self._splits[name]

    def split_assignment(self) -> dict[str, str]:
        """bag -> split name."""
        out: dict[str, str] = {}
        for sname, sp in self._splits.items():
            for b in sp.bags:
                out[b] = sname
        return out

    def split_counts(self) -> dict[str, dict[str, Any]]:
        """Per split: images, bags, images per class."""
        return {
            s: {
                "images": len(sp),
                "bags": len(set(sp.bags)),
                "per_class": dict(zip(self.classes, sp.class_counts())),
            }
            for s, sp in self._splits.items()
        }

    def split_fingerprint(self) -> str:
        """Short hash of the bag -> split assignment and the split sizes."""
        return _split_fingerprint(
            self.split_assignment(), {s: len(sp) for s, sp in self._splits.items()}
        )

    def meta(self) -> dict[str, Any]:
        """JSON-serializable description from which `load_dataset_from_meta` reloads the
        same data, split and normalization."""
        return {
            "name": self.name,
            "root": os.path.abspath(self.root),
            "res": self.res,
            "options": json.loads(json.dumps(self.options)),
            "seed": self.seed,
            "normalization": self.normalization,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
            "channels": self.channels,
            "split_sizes": {s: len(sp) for s, sp in self._splits.items()},
            "split_fingerprint": self.split_fingerprint(),
        }

    def write_split(self, path: str | os.PathLike) -> None:
        """Write the split assignment (bag -> split) and its counts as JSON, atomically."""
        path = str(path)
        doc = {
            "dataset": self.name,
            "root": os.path.abspath(self.root),
            "seed": self.seed,
            "options": json.loads(json.dumps(self.options)),
            "fingerprint": self.split_fingerprint(),
            "counts": self.split_counts(),
            "bags": dict(sorted(self.split_assignment().items())),
        }
        from mtt_fast.io import write_text

        write_text(path, json.dumps(doc, indent=1))
