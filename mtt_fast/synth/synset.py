"""A distilled (synthetic) set on disk: ``synset.safetensors`` + ``meta.json`` + ``grid.png``.

Images are stored in the model's input space (normalized), so ``eval`` trains on them as
they are; the normalization in ``meta.json`` turns them back into pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mtt_fast.errors import UserError
from mtt_fast.io import atomic_target, load_tensors, read_json, save_tensors, write_json

SYNSET_FORMAT = "mtt-fast/synset"


@dataclass
class Synset:
    """A synthetic set.

    Attributes:
        images: ``[n, C, H, W]`` float32, normalized (model input space).
        labels: ``[n]`` int64 class indices.
        syn_lr: the learned student learning rate, or None (random-real baseline).
        meta: JSON-able description: method, ipc, classes, dataset meta, normalization,
            distillation settings, the iteration it was taken at, its validation score.
    """

    images: torch.Tensor
    labels: torch.Tensor
    syn_lr: float | None
    meta: dict = field(default_factory=dict)

    def save(self, out: str | Path) -> None:
        """Write the three files into ``out`` (each atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images.float(), "labels": self.labels.long()}
        if self.syn_lr is not None:
            tensors["syn_lr"] = torch.tensor(float(self.syn_lr))
        save_tensors(out / "synset.safetensors", tensors)
        write_json(out / "meta.json", {"format": SYNSET_FORMAT, **self.meta})
        save_grid(self.images, self.labels, self.meta["normalization"], out / "grid.png",
                  num_classes=len(self.meta["classes"]))

    @classmethod
    def load(cls, path: str | Path) -> Synset:
        """Load a synset from its directory (or from a distill run dir holding ``synset/``)."""
        path = Path(path)
        if (path / "synset" / "synset.safetensors").is_file():
            path = path / "synset"
        if not path.is_dir():
            raise UserError(f"--synset {path}: no such directory")
        if not (path / "synset.safetensors").is_file():
            raise UserError(f"--synset {path}: no synset.safetensors there (is the distill run finished?)")
        meta = read_json(path / "meta.json", what="synset metadata")
        if meta.get("format") != SYNSET_FORMAT:
            raise UserError(f"--synset {path}: meta.json is not an mtt-fast synset")
        t = load_tensors(path / "synset.safetensors", what="synset")
        if "images" not in t or "labels" not in t:
            raise UserError(f"--synset {path}/synset.safetensors lacks images or labels")
        images, labels = t["images"], t["labels"]
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise UserError(f"--synset {path}/synset.safetensors: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not fit")
        if not torch.isfinite(images).all():
            raise UserError(f"--synset {path}/synset.safetensors holds NaN or infinite pixels")
        syn_lr = float(t["syn_lr"]) if "syn_lr" in t else None
        meta.pop("format", None)
        return cls(images, labels, syn_lr, meta)


def to_pictures(images: torch.Tensor, normalization: dict) -> torch.Tensor:
    """Undo the normalization: ``[n, C, H, W]`` normalized -> ``[n, C, H, W]`` in [0, 1]."""
    mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().cpu().float() * std + mean).clamp(0, 1)


def save_grid(images: torch.Tensor, labels: torch.Tensor, normalization: dict, path: str | Path,
              *, num_classes: int, max_per_class: int = 10, pad: int = 2) -> None:
    """One row per class, up to ``max_per_class`` images each, as a PNG."""
    pics = to_pictures(images, normalization)
    _, c, h, w = pics.shape
    cols = max(1, min(max_per_class, max((int((labels == k).sum()) for k in range(num_classes)), default=1)))
    scale = max(1, math.ceil(64 / max(h, w)))
    H, W = h * scale, w * scale
    canvas = np.ones((num_classes * (H + pad) + pad, cols * (W + pad) + pad, 3), dtype=np.uint8) * 255
    for k in range(num_classes):
        for j, i in enumerate((labels == k).nonzero().flatten()[:cols].tolist()):
            img = pics[i]
            img = img.expand(3, h, w) if c == 1 else img[:3]
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            arr = np.kron(arr, np.ones((scale, scale, 1), dtype=np.uint8))
            y0, x0 = pad + k * (H + pad), pad + j * (W + pad)
            canvas[y0 : y0 + H, x0 : x0 + W] = arr
    with atomic_target(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def init_real(train_split, ipc: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real training images per class (normalized) and their labels.

    Raises:
        UserError: when a class has fewer than ``ipc`` training images.
    """
    xs, ys = [], []
    for c, name in enumerate(train_split.classes):
        idx = train_split.class_indices(c)
        if len(idx) < ipc:
            raise UserError(f"--ipc {ipc}: class {name!r} has only {len(idx)} training images")
        pick = idx[torch.randperm(len(idx), generator=generator)[:ipc]]
        xs.append(train_split.get(pick))
        ys.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def init_noise(num_classes: int, ipc: int, shape: tuple[int, int, int], generator: torch.Generator):
    """Gaussian-noise images (standard normal in the normalized space) and their labels."""
    x = torch.randn((num_classes * ipc, *shape), generator=generator)
    y = torch.arange(num_classes).repeat_interleave(ipc)
    return x, y
