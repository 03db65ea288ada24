"""The DSA ops as pure, differentiable functions of an image batch and parameter tensors.

These are the augmentation itself, one function per op group, as MTT defines it: what
``apply(..., impl="reference")`` runs, group after group. They are not the spec of the
compiled DSA op: that is :func:`mtt_fast.ops.reference.dsa`, a function of the packed
parameters. The fused path packs a call (:mod:`mtt_fast.augment.fused`) and reproduces
these functions exactly in mode "S" (to float rounding); tests/augment holds it to them.
Nothing here draws random numbers: every random choice was made by :func:`mtt_fast.augment.sample_params` and is
passed in as a tensor. Every function takes ``x`` of shape ``[B, C, H, W]`` and returns a
tensor of the same shape, differentiable (twice) with respect to ``x``.

Semantics follow the MTT reference (GeorgeCazenavette/mtt-distillation, utils.py,
``rand_*``) with per-sample parameters (the reference's ``batchmode=False`` path, which is
what MTT's distill.py uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "apply_brightness",
    "apply_color",
    "apply_contrast",
    "apply_crop",
    "apply_cutout",
    "apply_flip",
    "apply_noise",
    "apply_rotate",
    "apply_saturation",
    "apply_scale",
    "cutout_mask",
    "rotate_theta",
    "scale_theta",
]


def _per_sample(t: Tensor, x: Tensor) -> Tensor:
    """View a per-sample float parameter ([B] or [B,1,1,1]) as [B,1,1,1] in x's dtype/device."""
    return t.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], 1, 1, 1)


def apply_brightness(x: Tensor, brightness: Tensor) -> Tensor:
    """``x + b``; ``b = (u - 0.5) * cfg.brightness`` per sample ([B] or [B,1,1,1])."""
    return x + _per_sample(brightness, x)


def apply_saturation(x: Tensor, saturation: Tensor) -> Tensor:
    """``(x - m) * s + m`` with m the mean over channels per pixel; ``s = u * cfg.saturation``."""
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * _per_sample(saturation, x) + x_mean


def apply_contrast(x: Tensor, contrast: Tensor) -> Tensor:
    """``(x - m) * c + m`` with m the mean over (C, H, W) per sample; ``c = u + cfg.contrast``."""
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * _per_sample(contrast, x) + x_mean


def apply_color(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """The ``color`` group: brightness, then saturation, then contrast (reference order).

    Args:
        x: images ``[B, C, H, W]``.
        brightness: additive offset per sample, ``[B,1,1,1]`` (or ``[B]``).
        saturation: saturation factor per sample, ``[B,1,1,1]`` (or ``[B]``).
        contrast: contrast factor per sample, ``[B,1,1,1]`` (or ``[B]``).
    """
    x = apply_brightness(x, brightness)
    x = apply_saturation(x, saturation)
    return apply_contrast(x, contrast)


def apply_crop(x: Tensor, shift: Tensor) -> Tensor:
    """The ``crop`` group: integer translation with zero fill.

    ``out[b, :, i, j] = x[b, :, i + shift[b, 0], j + shift[b, 1]]`` where that index is
    inside the image, else 0. Computed with the reference's arithmetic: pad by one zero
    pixel, index ``clamp(i + shift + 1, 0, H + 1)`` (clamped indices land on the zero pad).

    Args:
        x: images ``[B, C, H, W]``.
        shift: ``[B, 2]`` int64, (row shift along H, column shift along W); the reference's
            ``translation_x`` (along H) and ``translation_y`` (along W).
    """
    b, c, h, w = x.shape
    shift = shift.to(device=x.device, dtype=torch.long).reshape(b, 2)
    rows = torch.arange(h, device=x.device, dtype=torch.long)
    cols = torch.arange(w, device=x.device, dtype=torch.long)
    idx_h = torch.clamp(rows[None, :] + shift[:, 0:1] + 1, 0, h + 1)  # [B, H]
    idx_w = torch.clamp(cols[None, :] + shift[:, 1:2] + 1, 0, w + 1)  # [B, W]
    x_pad = F.pad(x, [1, 1, 1, 1])  # [B, C, H+2, W+2], zeros
    out = x_pad.gather(2, idx_h[:, None, :, None].expand(b, c, h, w + 2))
    return out.gather(3, idx_w[:, None, None, :].expand(b, c, h, w))


def cutout_mask(
    center: Tensor, size: Tensor | tuple[int, int], height: int, width: int, dtype: torch.dtype
) -> Tensor:
    """The cutout keep-mask ``[B, H, W]``: 0 inside each sample's box, 1 elsewhere.

    The box covers rows ``center_h - size_h // 2 .. center_h - size_h // 2 + size_h - 1``
    (and the same for columns), clipped to the image. This is the set the reference zeroes
    with ``clamp(arange(size) + offset - size // 2, 0, H - 1)``: clamped indices land on
    the image border, which the clipped box already contains.
    """
    center = center.to(dtype=torch.long)
    device = center.device
    size = torch.as_tensor(size, dtype=torch.long, device=device).reshape(1, 2)
    start = center - torch.div(size, 2, rounding_mode="floor")  # [B, 2]
    end = start + size  # exclusive
    rows = torch.arange(height, device=device, dtype=torch.long)[None, :]
    cols = torch.arange(width, device=device, dtype=torch.long)[None, :]
    in_h = (rows >= start[:, 0:1]) & (rows < end[:, 0:1])  # [B, H]
    in_w = (cols >= start[:, 1:2]) & (cols < end[:, 1:2])  # [B, W]
    box = in_h[:, :, None] & in_w[:, None, :]
    return (~box).to(dtype)


def apply_cutout(x: Tensor, center: Tensor, size: Tensor | tuple[int, int]) -> Tensor:
    """The ``cutout`` group: multiply each sample by a mask that is 0 on one box.

    Args:
        x: images ``[B, C, H, W]``.
        center: ``[B, 2]`` int64 box centers (row, column); the reference's ``offset_x``,
            ``offset_y``, drawn from ``[0, H + 1 - size_h % 2)`` and likewise for W.
        size: box size ``(size_h, size_w)``, a ``[2]`` int64 tensor or a pair of ints;
            ``int(H * ratio_cutout + 0.5)`` and ``int(W * ratio_cutout + 0.5)``.
    """
    b, _, h, w = x.shape
    center = center.to(device=x.device).reshape(b, 2)
    mask = cutout_mask(center, size, h, w, x.dtype)
    return x * mask.unsqueeze(1)


def apply_flip(x: Tensor, flip: Tensor) -> Tensor:
    """The ``flip`` group: ``x.flip(3)`` (horizontal) for samples where ``flip`` is true.

    Args:
        x: images ``[B, C, H, W]``.
        flip: ``[B]`` bool (a float/int tensor counts nonzero as true).
    """
    flip = flip.to(device=x.device).reshape(x.shape[0], 1, 1, 1)
    if flip.dtype != torch.bool:
        flip = flip != 0
    return torch.where(flip, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def apply_scale(x: Tensor, theta: Tensor) -> Tensor:
    """The ``scale`` group: ``grid_sample(x, affine_grid(theta))``, align_corners=True.

    Args:
        x: images ``[B, C, H, W]``.
        theta: ``[B, 2, 3]`` affine matrices ``[[sx, 0, 0], [0, sy, 0]]`` (see
            :func:`scale_theta`); sx acts on the width axis, sy on the height axis;
            ``s < 1`` enlarges the content.
    """
    return _affine(x, theta)


def apply_rotate(x: Tensor, theta: Tensor) -> Tensor:
    """The ``rotate`` group: ``grid_sample(x, affine_grid(theta))``, align_corners=True.

    Args:
        x: images ``[B, C, H, W]``.
        theta: ``[B, 2, 3]`` matrices ``[[cos a, -sin a, 0], [sin a, cos a, 0]]`` (see
            :func:`rotate_theta`); a = +90 degrees equals ``torch.rot90(x, 1, (2, 3))``.
    """
    return _affine(x, theta)


def apply_noise(x: Tensor, noise: Tensor) -> Tensor:
    """The ``noise`` group (the paper's op): ``x + noise``, noise ``[B, C, H, W]``.

    ``noise = ratio_noise * n`` with n ~ N(0, 1) per element, already scaled at sampling.
    """
    return x + noise.to(device=x.device, dtype=x.dtype)


def scale_theta(sx: Tensor, sy: Tensor) -> Tensor:
    """``[B, 2, 3]`` scale matrices ``[[sx, 0, 0], [0, sy, 0]]`` from ``[B]`` factors."""
    theta = torch.zeros(sx.shape[0], 2, 3, dtype=sx.dtype, device=sx.device)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = sy
    return theta


def rotate_theta(angle: Tensor) -> Tensor:
    """``[B, 2, 3]`` rotation matrices ``[[cos a, sin(-a), 0], [sin a, cos a, 0]]``, a in radians."""
    theta = torch.zeros(angle.shape[0], 2, 3, dtype=angle.dtype, device=angle.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = torch.sin(-angle)
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos
    return theta
