"""Expert-training augmentation (paper section 2.4), hand-written in torch.

Colour jitter (brightness 0.2, saturation (0, 0.2), hue 0.1) and random horizontal and
vertical flips with p = 0.5, applied per sample to a batch of [0, 1] images before
normalization. As in `mtt_fast.augment`, parameters are drawn first (``sample``, from an
explicit ``torch.Generator``) and applied second (``apply``), so a batch can be replayed.

Jitter ranges follow torchvision's ``ColorJitter``: for brightness, contrast and saturation
a number v means factors uniform in [max(0, 1 - v), 1 + v] and a (min, max) pair is the
factor range itself, so the paper's saturation (0, 0.2) draws factors in [0, 0.2]; for hue
a number v means shifts uniform in [-v, v] (v <= 0.5). Unlike torchvision, which shuffles
the order of the four jitters once per call, the order here is fixed: brightness,
contrast, saturation, hue. Saturation and hue are skipped for 1-channel images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mtt_fast.errors import UserError

Range = tuple[float, float]
_GRAY = (0.2989, 0.587, 0.114)


def _factor_range(name: str, value: Any) -> Range | None:
    """torchvision ColorJitter semantics for brightness/contrast/saturation."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise UserError(f"option {name}: must be >= 0, got {value}")
        lo, hi = max(0.0, 1.0 - float(value)), 1.0 + float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if not 0 <= lo <= hi:
            raise UserError(f"option {name}: need 0 <= min <= max, got {tuple(value)}")
    else:
        raise UserError(f"option {name}: give a number or a (min, max) pair, got {value!r}")
    return None if lo == hi == 1.0 else (lo, hi)


def _hue_range(value: Any) -> Range | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        lo, hi = -float(value), float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise UserError(f"option hue: give a number or a (min, max) pair, got {value!r}")
    if not -0.5 <= lo <= hi <= 0.5:
        raise UserError(f"option hue: the range must lie within [-0.5, 0.5], got {(lo, hi)}")
    return None if lo == hi == 0.0 else (lo, hi)


def _uniform(n: int, rng: Range, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (rng[1] - rng[0]) + rng[0]


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] -> [n, 1, H, W] luma (ITU-R 601, as torchvision)."""
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] RGB in [0, 1] -> HSV with h, s, v in [0, 1]."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    mn, _ = x.min(1)
    delta = v - mn
    gray = delta == 0
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    d = torch.where(gray, torch.ones_like(delta), delta)
    h = torch.where(
        v == r,
        (g - b) / d,
        torch.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d),
    )
    h = torch.where(gray, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`: channel n in (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 h) mod 6."""
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of x [n, 3, H, W] in [0, 1] by shift [n] turns (value and saturation kept).

    Equal to ``hsv_to_rgb`` of ``rgb_to_hsv(x)`` with h += shift, in about half the passes:
    with v = max, c = max - min (= v s), channel n is v - c clamp(min(k, 4 - k), 0, 1).
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / c.clamp_min(1e-12)  # gray pixels (c = 0) come out as v for any hue
    h = torch.where(
        v == r,
        (g - b) * inv,
        torch.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0),
    )
    h += (6.0 * shift).view(-1, 1, 1)
    out = torch.empty_like(x)
    for i, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h + n, 6.0)
        k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(v, c * k, out=out[:, i])
    return out


@dataclass
class ExpertTransform:
    """Per-sample colour jitter and flips for expert training (paper section 2.4).

    Every part can be disabled with None (jitter) or 0 (flip probability).

    Attributes:
        brightness: factor spec (number v -> [1 - v, 1 + v]; pair -> range). Default 0.2.
        contrast: factor spec; default None (the paper does not jitter contrast).
        saturation: factor spec; default (0.0, 0.2) as in the paper (3-channel only).
        hue: shift spec in turns (number v -> [-v, v]); default 0.1 (3-channel only).
        hflip: probability of a horizontal flip. Default 0.5.
        vflip: probability of a vertical flip. Default 0.5.
    """

    brightness: Any = 0.2
    contrast: Any = None
    saturation: Any = (0.0, 0.2)
    hue: Any = 0.1
    hflip: float = 0.5
    vflip: float = 0.5

    def __post_init__(self) -> None:
        self._b = _factor_range("brightness", self.brightness)
        self._c = _factor_range("contrast", self.contrast)
        self._s = _factor_range("saturation", self.saturation)
        self._h = _hue_range(self.hue)
        for name in ("hflip", "vflip"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise UserError(f"option {name}: a probability in [0, 1], got {p!r}")

    @classmethod
    def disabled(cls) -> ExpertTransform:
        """A transform that changes nothing."""
        return cls(brightness=None, contrast=None, saturation=None, hue=None, hflip=0.0, vflip=0.0)

    @classmethod
    def from_config(cls, config: dict | None) -> ExpertTransform:
        """Build from a dict of the fields above (unknown keys are a UserError)."""
        config = dict(config or {})
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - fields)
        if unknown:
            raise UserError(
                f"option {unknown[0]}: not an expert augmentation option; valid: {sorted(fields)}"
            )
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        """JSON-serializable fields (pairs become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def sample(self, n: int, channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw per-sample parameters (CPU tensors of shape [n]) from `generator`.

        Draw order: brightness, contrast, saturation, hue, hflip, vflip (disabled parts
        draw nothing).
        """
        p: dict[str, torch.Tensor] = {}
        if self._b is not None:
            p["brightness"] = _uniform(n, self._b, generator)
        if self._c is not None:
            p["contrast"] = _uniform(n, self._c, generator)
        if channels == 3 and self._s is not None:
            p["saturation"] = _uniform(n, self._s, generator)
        if channels == 3 and self._h is not None:
            p["hue"] = _uniform(n, self._h, generator)
        if self.hflip > 0:
            p["hflip"] = torch.rand(n, generator=generator) < self.hflip
        if self.vflip > 0:
            p["vflip"] = torch.rand(n, generator=generator) < self.vflip
        return p

    @staticmethod
    def apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply sampled parameters to x: float [n, C, H, W] in [0, 1] -> same shape."""
        dev = x.device
        owned = any(k in params for k in ("brightness", "contrast", "saturation", "hue"))

        def col(name: str) -> torch.Tensor:
            return params[name].to(dev, x.dtype).view(-1, 1, 1, 1)

        if "brightness" in params:
            x = (x * col("brightness")).clamp_(0.0, 1.0)
        if "contrast" in params:
            g = _grayscale(x) if x.shape[1] == 3 else x
            m = g.mean(dim=(1, 2, 3), keepdim=True)
            x = torch.lerp(m.expand_as(x), x, col("contrast")).clamp_(0.0, 1.0)
        if "saturation" in params and x.shape[1] == 3:
            g = _grayscale(x).expand_as(x)
            x = torch.lerp(g, x, col("saturation")).clamp_(0.0, 1.0)
        if "hue" in params and x.shape[1] == 3:
            x = adjust_hue(x, params["hue"].to(dev, x.dtype))
        for key, dim in (("hflip", -1), ("vflip", -2)):
            if key in params:
                idx = torch.nonzero(params[key], as_tuple=False).flatten().to(dev)
                if idx.numel():
                    if not owned:
                        x = x.clone()  # never write into the caller's tensor
                        owned = True
                    x[idx] = x[idx].flip(dim)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sample parameters for the batch x [n, C, H, W] in [0, 1] and apply them."""
        return self.apply(x, self.sample(x.shape[0], x.shape[1], generator))
