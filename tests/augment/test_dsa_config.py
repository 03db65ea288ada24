"""DSAConfig and strategy parsing: defaults, validation, dict round trip, user errors."""

from __future__ import annotations

import pytest

from mtt_fast.augment import DEFAULT_STRATEGY, OP_GROUPS, DSAConfig, parse_strategy
from mtt_fast.errors import UserError


def test_defaults_are_the_paper_and_mtt_reference_values():
    cfg = DSAConfig()
    assert cfg.strategy == "color_crop_cutout_flip_scale_rotate" == DEFAULT_STRATEGY
    assert "noise" not in cfg.ops  # noise is opt-in
    assert cfg.mode == "S"
    assert (cfg.prob_flip, cfg.ratio_scale, cfg.ratio_rotate) == (0.5, 1.2, 15.0)
    assert (cfg.ratio_crop_pad, cfg.ratio_cutout, cfg.ratio_noise) == (0.125, 0.5, 0.05)
    assert (cfg.brightness, cfg.saturation, cfg.contrast) == (1.0, 2.0, 0.5)


def test_parse_strategy_keeps_order():
    assert parse_strategy("rotate_crop_color") == ("rotate", "crop", "color")
    assert parse_strategy("color_crop_cutout_flip_scale_rotate_noise") == (
        "color",
        "crop",
        "cutout",
        "flip",
        "scale",
        "rotate",
        "noise",
    )
    assert set(OP_GROUPS) == {"color", "crop", "cutout", "flip", "scale", "rotate", "noise"}


@pytest.mark.parametrize("text", ["none", "None", "NONE", "", "  ", None])
def test_none_disables(text):
    assert parse_strategy(text) == ()
    cfg = DSAConfig(strategy=text)
    assert not cfg.enabled and cfg.ops == ()


@pytest.mark.parametrize(
    "text", ["colour", "color_crop_", "color__crop", "crop,flip", "Flip", "crop_crop"]
)
def test_bad_strategy_is_user_error(text):
    with pytest.raises(UserError) as info:
        parse_strategy(text)
    assert "strategy" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):
        DSAConfig(strategy=text)


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "X"),
        ("prob_flip", 1.5),
        ("prob_flip", -0.1),
        ("ratio_scale", 0.8),
        ("ratio_rotate", -1.0),
        ("ratio_crop_pad", 2.0),
        ("ratio_cutout", -0.5),
        ("ratio_cutout", 1.5),
        ("ratio_noise", -0.01),
        ("ratio_noise", float("nan")),
        ("brightness", "bright"),
        ("saturation", float("inf")),
        ("contrast", -1.0),
    ],
)
def test_bad_option_is_user_error_naming_it(field, value):
    with pytest.raises(UserError) as info:
        DSAConfig(**{field: value})
    assert field in str(info.value)


def test_mode_is_normalized():
    assert DSAConfig(mode="m").mode == "M"
    assert DSAConfig(mode=" s ").mode == "S"


def test_dict_round_trip_and_partial_dicts():
    cfg = DSAConfig(strategy="crop_noise", mode="M", ratio_noise=0.1)
    d = cfg.to_dict()
    assert d["strategy"] == "crop_noise" and d["ratio_noise"] == 0.1
    assert DSAConfig.from_dict(d) == cfg
    assert DSAConfig.from_dict({"ratio_scale": 1.5}) == DSAConfig(ratio_scale=1.5)
    assert DSAConfig.from_dict(None) == DSAConfig()
    # numbers written as ints or strings in YAML are accepted
    assert DSAConfig.from_dict({"ratio_rotate": 10}).ratio_rotate == 10.0


def test_from_dict_unknown_key_is_user_error():
    with pytest.raises(UserError) as info:
        DSAConfig.from_dict({"ratio_scal": 1.1})
    assert "ratio_scal" in str(info.value)
    with pytest.raises(UserError):
        DSAConfig.from_dict(["strategy"])  # type: ignore[arg-type]
