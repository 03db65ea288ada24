"""DSA configuration: the strategy string and the ratios of every op.

The defaults are those of the MTT reference (``ParamDiffAug`` in
GeorgeCazenavette/mtt-distillation, utils.py) and of the paper (section 2.4, item 4):
flip 0.5, scale 1.2, rotate 15 degrees, crop 0.125, cutout 0.5, noise 0.05, brightness 1.0,
saturation 2.0, contrast 0.5.

The default strategy is the MTT distillation default ``color_crop_cutout_flip_scale_rotate``,
WITHOUT ``noise``: the reference has no noise op in DSA (``ParamDiffAug.ratio_noise`` is set
but never used), so adding it by default would change what "MTT" means in our tables.
Noise is opt-in: add ``noise`` to the strategy (e.g. ``color_crop_cutout_flip_scale_rotate_noise``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from mtt_fast.errors import UserError

#: Every op group the strategy string may name, with the functions each group runs.
OP_GROUPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate", "noise")

#: The MTT reference's default strategy (distill.py ``--dsa_strategy``); noise is opt-in.
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

_MODES = ("S", "M")


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """Split a strategy string such as ``"color_crop_flip"`` into its op groups.

    ``"none"`` (any case), ``""`` and ``None`` mean no augmentation and give ``()``.

    Args:
        strategy: op group names joined by ``_``, from :data:`OP_GROUPS`.

    Returns:
        The op groups, in the order written (that is the order mode "M" applies them).

    Raises:
        UserError: an unknown or repeated op name.
    """
    if strategy is None:
        return ()
    if not isinstance(strategy, str):
        raise UserError(f"DSA option strategy must be a string (got {strategy!r})")
    text = strategy.strip()
    if text == "" or text.lower() == "none":
        return ()
    ops = tuple(text.split("_"))
    for op in ops:
        if op not in OP_GROUPS:
            raise UserError(
                f"DSA option strategy {strategy!r}: unknown op {op!r}; "
                f"choose from {', '.join(OP_GROUPS)} joined by '_', or 'none'"
            )
    if len(set(ops)) != len(ops):
        raise UserError(f"DSA option strategy {strategy!r} names an op twice; name each op once")
    return ops


def _check_range(name: str, value: Any, lo: float, hi: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"DSA option {name} must be a number (got {value!r})") from None
    if not math.isfinite(v) or v < lo or v > hi:
        bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise UserError(f"DSA option {name} must be {bound} (got {value!r})")
    return v


@dataclass
class DSAConfig:
    """Differentiable Siamese Augmentation settings.

    Attributes:
        strategy: op groups joined by ``_`` (see :func:`parse_strategy`); ``"none"`` or
            ``""`` disables augmentation.
        mode: ``"S"`` (MTT default: each call applies ONE group, drawn uniformly from the
            strategy, the same group for the whole batch) or ``"M"`` (all groups in
            strategy order).
        prob_flip: probability of a horizontal flip, per sample.
        ratio_scale: per-axis scale factors are drawn from ``[1/ratio, ratio]``.
        ratio_rotate: rotation angles are drawn from ``[-ratio, ratio]`` degrees.
        ratio_crop_pad: integer translation of up to ``int(size * ratio + 0.5)`` pixels.
        ratio_cutout: the cutout box is ``int(size * ratio + 0.5)`` pixels per side.
        ratio_noise: standard deviation of the additive Gaussian noise (op ``noise``).
        brightness: brightness offset is ``(u - 0.5) * brightness``, u ~ U[0, 1).
        saturation: saturation factor is ``u * saturation``.
        contrast: contrast factor is ``u + contrast``.
    """

    strategy: str = DEFAULT_STRATEGY
    mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    ratio_noise: float = 0.05
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self) -> None:
        if self.strategy is None:
            self.strategy = "none"
        parse_strategy(self.strategy)  # validates
        mode = str(self.mode).strip().upper() if isinstance(self.mode, str) else self.mode
        if mode not in _MODES:
            raise UserError(f"DSA option mode must be 'S' or 'M' (got {self.mode!r})")
        self.mode = mode
        self.prob_flip = _check_range("prob_flip", self.prob_flip, 0.0, 1.0)
        self.ratio_scale = _check_range("ratio_scale", self.ratio_scale, 1.0)
        self.ratio_rotate = _check_range("ratio_rotate", self.ratio_rotate, 0.0, 180.0)
        self.ratio_crop_pad = _check_range("ratio_crop_pad", self.ratio_crop_pad, 0.0, 1.0)
        self.ratio_cutout = _check_range("ratio_cutout", self.ratio_cutout, 0.0, 1.0)
        self.ratio_noise = _check_range("ratio_noise", self.ratio_noise, 0.0)
        self.brightness = _check_range("brightness", self.brightness, 0.0)
        self.saturation = _check_range("saturation", self.saturation, 0.0)
        self.contrast = _check_range("contrast", self.contrast, 0.0)

    @property
    def ops(self) -> tuple[str, ...]:
        """The op groups of the strategy, in order."""
        return parse_strategy(self.strategy)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is applied."""
        return len(self.ops) > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, for config files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DSAConfig:
        """Build from a (possibly partial) mapping; missing keys take the defaults.

        Raises:
            UserError: an unknown key or a bad value.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise UserError(f"DSA config must be a mapping of options (got {type(data).__name__})")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise UserError(
                    f"unknown DSA option {key!r}; known options: {', '.join(sorted(known))}"
                )
        return cls(**dict(data))
