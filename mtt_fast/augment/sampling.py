"""DSA parameter sampling: every random choice of one augmentation call, as tensors.

All randomness of DSA lives here and comes from an explicit ``torch.Generator`` (never the
global RNG). Draws happen on the generator's device; derived values (scale/rotation
matrices, color factors, integer shifts) are computed there too, then moved to the target
device. A CPU generator therefore gives bit-identical parameters whether the images live on
the CPU or a GPU.

Draw order (part of the spec, so a seed replays exactly):

1. mode "S" only: one ``randint(0, len(ops), (1,))`` picks the op group;
2. then, for each group applied, in strategy order, the reference's draws, in its order,
   each a float32 ``rand`` (or int64 ``randint``) of size ``[B]``:

   - ``scale``:  sx = u * (r - 1/r) + 1/r, then sy likewise (r = ratio_scale);
   - ``rotate``: a = (u - 0.5) * 2 * ratio_rotate / 180 * pi;
   - ``flip``:   flip = u < prob_flip;
   - ``color``:  brightness (u - 0.5) * brightness, saturation u * saturation,
     contrast u + contrast (three draws, in that order);
   - ``crop``:   row shift randint(-sh, sh + 1), then column shift randint(-sw, sw + 1),
     sh = int(H * ratio_crop_pad + 0.5), sw = int(W * ratio_crop_pad + 0.5);
   - ``cutout``: row center randint(0, H + 1 - kh % 2), then column center
     randint(0, W + 1 - kw % 2), kh = int(H * ratio_cutout + 0.5), kw likewise;
   - ``noise``:  ratio_noise * randn(B, C, H, W).

Uniforms are always drawn in float32 (as the reference's ``torch.rand`` default) and the
derived float parameters cast to ``dtype`` at the end, so the parameters do not depend on
the dtype asked for beyond that final cast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from mtt_fast.augment.config import DSAConfig
from mtt_fast.augment.functional import rotate_theta, scale_theta

__all__ = ["TENSOR_FIELDS", "AugParams", "sample_params"]

#: The tensor fields of :class:`AugParams`, and the op group each belongs to.
TENSOR_FIELDS: dict[str, str] = {
    "theta_scale": "scale",
    "theta_rot": "rotate",
    "flip": "flip",
    "brightness": "color",
    "saturation": "color",
    "contrast": "color",
    "crop_shift": "crop",
    "cutout_center": "cutout",
    "cutout_size": "cutout",
    "noise": "noise",
}


@dataclass(frozen=True, eq=False)
class AugParams:
    """Every random choice of one DSA call. Apply it to any batch of ``shape`` (Siamese).

    Fields of groups not in ``ops`` are ``None``.

    Attributes:
        ops: op groups applied, in order (one group in mode "S"; ``()`` = identity).
        shape: the ``(B, C, H, W)`` the parameters were drawn for.
        theta_scale: ``[B, 2, 3]`` float, ``[[sx, 0, 0], [0, sy, 0]]``.
        theta_rot: ``[B, 2, 3]`` float, ``[[cos a, -sin a, 0], [sin a, cos a, 0]]``.
        flip: ``[B]`` bool, flip horizontally where true.
        brightness: ``[B, 1, 1, 1]`` float, additive offset.
        saturation: ``[B, 1, 1, 1]`` float, factor about the per-pixel channel mean.
        contrast: ``[B, 1, 1, 1]`` float, factor about the per-sample mean.
        crop_shift: ``[B, 2]`` int64, (row, column) translation; zero fill.
        cutout_center: ``[B, 2]`` int64, (row, column) box centers.
        cutout_size: ``[2]`` int64, (rows, columns) of the box.
        noise: ``[B, C, H, W]`` float, added to the images (already times ratio_noise).
    """

    ops: tuple[str, ...]
    shape: tuple[int, int, int, int]
    theta_scale: Tensor | None = None
    theta_rot: Tensor | None = None
    flip: Tensor | None = None
    brightness: Tensor | None = None
    saturation: Tensor | None = None
    contrast: Tensor | None = None
    crop_shift: Tensor | None = None
    cutout_center: Tensor | None = None
    cutout_size: Tensor | None = None
    noise: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The tensor fields that are set, by name."""
        out = {}
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.tensors().items())

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AugParams:
        """A copy on ``device``; ``dtype`` (if given) casts the float tensors only."""
        changes = {}
        for name, value in self.tensors().items():
            if dtype is not None and value.is_floating_point():
                changes[name] = value.to(device=device, dtype=dtype)
            else:
                changes[name] = value.to(device=device)
        return replace(self, **changes)

    @property
    def device(self) -> torch.device | None:
        """Device of the tensors (``None`` when there are none)."""
        for value in self.tensors().values():
            return value.device
        return None

    def equal(self, other: AugParams) -> bool:
        """Bitwise equality of ops, shape and every tensor (compared on the CPU)."""
        if self.ops != other.ops or tuple(self.shape) != tuple(other.shape):
            return False
        for f in fields(self):
            if f.name in ("ops", "shape"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                return False
            if a is not None and (a.dtype != b.dtype or not torch.equal(a.cpu(), b.cpu())):
                return False
        return True


def _check_shape(shape) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be (B, C, H, W), got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"shape must be four positive ints (B, C, H, W), got {shape!r}")
    return dims  # type: ignore[return-value]


def sample_params(
    cfg: DSAConfig,
    shape: tuple[int, int, int, int] | torch.Size,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AugParams:
    """Draw the parameters of one DSA call for a batch of ``shape``.

    Args:
        cfg: the DSA settings.
        shape: ``(B, C, H, W)`` of the batch the parameters will be applied to.
        generator: the ONLY source of randomness; draws happen on its device.
        device: where the returned tensors live.
        dtype: floating dtype of the float parameters.

    Returns:
        The parameters; see :class:`AugParams` and the module docstring for the draw order.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("sample_params needs an explicit torch.Generator (no global RNG)")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    b, c, h, w = _check_shape(shape)
    ops = cfg.ops
    gdev = generator.device
    g = generator

    def rand(*size: int) -> Tensor:
        return torch.rand(size, generator=g, device=gdev, dtype=torch.float32)

    def randint(lo: int, hi: int) -> Tensor:
        return torch.randint(lo, hi, (b,), generator=g, device=gdev, dtype=torch.long)

    if ops and cfg.mode == "S":
        pick = int(torch.randint(0, len(ops), (1,), generator=g, device=gdev).item())
        ops = (ops[pick],)

    values: dict[str, Tensor] = {}
    for op in ops:
        if op == "scale":
            r = cfg.ratio_scale
            sx = rand(b) * (r - 1.0 / r) + 1.0 / r
            sy = rand(b) * (r - 1.0 / r) + 1.0 / r
            values["theta_scale"] = scale_theta(sx, sy)
        elif op == "rotate":
            angle = (rand(b) - 0.5) * 2 * cfg.ratio_rotate / 180 * float(math.pi)
            values["theta_rot"] = rotate_theta(angle)
        elif op == "flip":
            values["flip"] = rand(b) < cfg.prob_flip
        elif op == "color":
            values["brightness"] = ((rand(b) - 0.5) * cfg.brightness).view(b, 1, 1, 1)
            values["saturation"] = (rand(b) * cfg.saturation).view(b, 1, 1, 1)
            values["contrast"] = (rand(b) + cfg.contrast).view(b, 1, 1, 1)
        elif op == "crop":
            sh = int(h * cfg.ratio_crop_pad + 0.5)
            sw = int(w * cfg.ratio_crop_pad + 0.5)
            dy = randint(-sh, sh + 1)
            dx = randint(-sw, sw + 1)
            values["crop_shift"] = torch.stack([dy, dx], dim=1)
        elif op == "cutout":
            kh = int(h * cfg.ratio_cutout + 0.5)
            kw = int(w * cfg.ratio_cutout + 0.5)
            cy = randint(0, h + (1 - kh % 2))
            cx = randint(0, w + (1 - kw % 2))
            values["cutout_center"] = torch.stack([cy, cx], dim=1)
            values["cutout_size"] = torch.tensor([kh, kw], dtype=torch.long, device=gdev)
        elif op == "noise":
            n = torch.randn((b, c, h, w), generator=g, device=gdev, dtype=torch.float32)
            values["noise"] = n * cfg.ratio_noise
        else:  # parse_strategy guards this
            raise AssertionError(f"unhandled DSA op {op!r}")

    params = AugParams(ops=tuple(ops), shape=(b, c, h, w), **values)
    return params.to(device=torch.device(device), dtype=dtype)
