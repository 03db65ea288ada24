"""A distilled (synthetic) set on disk: ``synset.safetensors`` + ``meta.json`` + ``grid.png``.

Images are stored in the model's input space (normalized), so ``eval`` trains on them as
they are; the normalization in ``meta.json`` turns them back into pictures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mtt_fast.errors import UserError
from mtt_fast.io import atomic_target, load_tensors, read_json, save_tensors, write_json

SYNSET_FORMAT = "mtt-fast/synset"
#: PNG text chunk of a grid whose rows carry their class names (JSON list of the names).
GRID_LABELS_KEY = "mtt-fast:row-labels"


@dataclass
class Synset:
    """A synthetic set.

    Attributes:
        images: ``[n, C, H, W]`` float32, normalized (model input space).
        labels: ``[n]`` int64 class indices.
        syn_lr: the learned student learning rate, or None (random-real baseline).
        meta: JSON-able description: method, ipc, classes, dataset meta, normalization,
            distillation settings, the iteration it was taken at, its validation score.
        soft_labels: ``[n, K]`` float32 label logits (DATM-style learned or expert soft labels;
            a network trained on the set uses ``softmax(soft_labels)`` as its targets), or None.
            ``labels`` stays the hard class of each image (what grids and counts use).
    """

    images: torch.Tensor
    labels: torch.Tensor
    syn_lr: float | None
    meta: dict = field(default_factory=dict)
    soft_labels: torch.Tensor | None = None

    def save(self, out: str | Path) -> None:
        """Write the three files into ``out`` (each atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images.float(), "labels": self.labels.long()}
        if self.syn_lr is not None:
            tensors["syn_lr"] = torch.tensor(float(self.syn_lr))
        if self.soft_labels is not None:
            tensors["soft_labels"] = self.soft_labels.float()
        save_tensors(out / "synset.safetensors", tensors)
        write_json(out / "meta.json", {"format": SYNSET_FORMAT, **self.meta})
        save_grid(self.images, self.labels, self.meta["normalization"], out / "grid.png",
                  num_classes=len(self.meta["classes"]), classes=list(self.meta["classes"]))

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
        soft = t.get("soft_labels")
        if soft is not None:
            k = len(meta.get("classes", []))
            if soft.dim() != 2 or soft.shape[0] != images.shape[0] or (k and soft.shape[1] != k):
                raise UserError(f"--synset {path}/synset.safetensors: soft_labels {tuple(soft.shape)} do not fit "
                                f"{images.shape[0]} images of {k} classes")
            if not torch.isfinite(soft).all():
                raise UserError(f"--synset {path}/synset.safetensors holds NaN or infinite soft labels")
        meta.pop("format", None)
        return cls(images, labels, syn_lr, meta, soft_labels=soft)


def to_pictures(images: torch.Tensor, normalization: dict) -> torch.Tensor:
    """Undo the normalization: ``[n, C, H, W]`` normalized -> ``[n, C, H, W]`` in [0, 1]."""
    mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().cpu().float() * std + mean).clamp(0, 1)


def save_grid(images: torch.Tensor, labels: torch.Tensor, normalization: dict, path: str | Path,
              *, num_classes: int, max_per_class: int = 10, pad: int = 2,
              classes: list[str] | None = None) -> None:
    """One row per class, up to ``max_per_class`` images each, as a PNG.

    With ``classes`` (the ``num_classes`` names), each row's class name is written at its left
    (:func:`label_rows`) and the names are recorded in the PNG's ``GRID_LABELS_KEY`` text chunk.
    """
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
    info = None
    if classes is not None:
        if len(classes) != num_classes:
            raise ValueError(f"save_grid: {len(classes)} class names for {num_classes} classes")
        canvas = label_rows(canvas, classes, pad=pad)
        info = PngInfo()
        info.add_text(GRID_LABELS_KEY, json.dumps(list(classes)))
    with atomic_target(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info)


def grid_row_labels(path: str | Path) -> list[str] | None:
    """The class names written into a grid PNG's rows by :func:`save_grid`; None if unlabelled."""
    with Image.open(path) as im:
        text = getattr(im, "text", None) or {}
        raw = text.get(GRID_LABELS_KEY)
    try:
        names = json.loads(raw) if raw else None
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _font(row: int):
    """A font for names beside rows ``row`` px tall, and the whole factor to enlarge its text by.

    Pillow's default font at a size that suits the row (FreeType, Pillow >= 10.1), else its
    built-in bitmap font enlarged 1-4 times.
    """
    try:
        return ImageFont.load_default(size=max(12, min(36, row // 4))), 1
    except (TypeError, ImportError, OSError, AttributeError):  # old Pillow or no FreeType
        bitmap = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
        return bitmap, max(1, min(4, row // 32))


def _ink(text: str, font, scale: int) -> np.ndarray:
    """``text`` drawn in ``font``, enlarged ``scale`` times: ink coverage ``[height, width]`` uint8."""
    _, _, right, bottom = font.getbbox(text)
    img = Image.new("L", (max(1, int(right)), max(1, int(bottom))), 0)
    ImageDraw.Draw(img).text((0, 0), text, fill=255, font=font)
    ink = np.asarray(img)
    return np.kron(ink, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else ink


def _printable(name, max_chars: int) -> str:
    name = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    name = name.encode("latin-1", "replace").decode("latin-1")
    return (name[: max_chars - 2] + "..") if len(name) > max_chars else (name or "?")


def label_rows(canvas: np.ndarray, classes: list[str], *, pad: int = 2, max_chars: int = 24) -> np.ndarray:
    """A grid with each row's class name written, black on white, in a band at its left.

    The text is Pillow's default font, sized from the row height so that it reads beside
    tiles of 64 to 224 px (see :func:`_font`); names longer than ``max_chars`` are cut (ending
    in ``..``), characters outside Latin-1 become ``?``.

    Args:
        canvas: ``[k * (H + pad) + pad, width, 3]`` uint8: ``k = len(classes)`` rows of height
            ``H``, each starting ``pad`` px below the previous one (:func:`save_grid`'s layout).
        classes: the row names, top to bottom.

    Returns:
        ``[same height, band + width, 3]`` uint8; ``canvas`` itself when ``classes`` is empty.
    """
    k = len(classes)
    if k == 0:
        return canvas
    row = max(1, (canvas.shape[0] - pad) // k - pad)
    font, scale = _font(row)
    inks = [_ink(_printable(name, max_chars), font, scale) for name in classes]
    margin = max(4, row // 16)
    width = max(ink.shape[1] for ink in inks) + 2 * margin
    band = np.full((canvas.shape[0], width), 255, dtype=np.uint8)
    for i, ink in enumerate(inks):
        y0 = pad + i * (row + pad)
        h = min(ink.shape[0], row)
        top = y0 + (row - h) // 2
        band[top : top + h, margin : margin + ink.shape[1]] -= ink[:h]
    return np.concatenate([np.repeat(band[:, :, None], 3, axis=2), canvas], axis=1)


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
