"""Per-channel normalization presets: (x / 255 - mean) / std, in [0, 1] pixel units."""

from __future__ import annotations

from typing import Any

from mtt_fast.errors import UserError

#: name -> (mean, std). "crc" and "pg" are the values of the paper, section 2.3.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "crc": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "pg": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

#: normalization modes that are not presets
NORMALIZATION_MODES = ("auto", "compute", "none")


def valid_normalizations() -> list[str]:
    """All accepted values of the `normalization` argument."""
    return list(NORMALIZATION_MODES) + list(NORMALIZATION_PRESETS)


def check_normalization(normalization: Any) -> None:
    """Raise UserError unless `normalization` is a preset/mode name or {"mean", "std"}."""
    if isinstance(normalization, dict):
        if not {"mean", "std"} <= set(normalization):
            raise UserError(
                "option normalization: an explicit normalization needs 'mean' and 'std'"
            )
        return
    if normalization not in valid_normalizations():
        raise UserError(
            f"option normalization: unknown value {normalization!r}; "
            f"valid: {', '.join(valid_normalizations())}"
        )


def preset_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of a preset (or "none"), checked against the number of channels."""
    if name == "none":
        return (0.0,) * channels, (1.0,) * channels
    mean, std = NORMALIZATION_PRESETS[name]
    if len(mean) != channels:
        raise UserError(
            f"option normalization: preset {name!r} has {len(mean)} channel(s) "
            f"but the dataset has {channels}"
        )
    return tuple(mean), tuple(std)


def explicit_stats(
    normalization: dict, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate an explicit {"mean": [...], "std": [...]} normalization."""
    mean = tuple(float(v) for v in normalization["mean"])
    std = tuple(float(v) for v in normalization["std"])
    if len(mean) != channels or len(std) != channels:
        raise UserError(
            f"option normalization: mean/std have {len(mean)}/{len(std)} values "
            f"but the dataset has {channels} channel(s)"
        )
    if any(s <= 0 for s in std):
        raise UserError("option normalization: every std must be > 0")
    return mean, std
