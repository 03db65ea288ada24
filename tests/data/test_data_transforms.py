"""ExpertTransform: shapes, exact flips, determinism, ColorJitter semantics."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.data import ExpertTransform
from mtt_fast.data.transforms import adjust_hue, hsv_to_rgb, rgb_to_hsv
from mtt_fast.errors import UserError


def _x(n=6, c=3, h=9, w=7, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapes_range_and_default_config():
    t = ExpertTransform()
    assert t.to_config() == {
        "brightness": 0.2,
        "contrast": None,
        "saturation": [0.0, 0.2],
        "hue": 0.1,
        "hflip": 0.5,
        "vflip": 0.5,
    }
    for c in (1, 3):
        x = _x(c=c)
        y = t(x, _g())
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_deterministic_given_generator():
    t = ExpertTransform()
    x = _x()
    assert torch.equal(t(x, _g(3)), t(x, _g(3)))
    assert not torch.equal(t(x, _g(3)), t(x, _g(4)))
    p = t.sample(6, 3, _g(3))
    assert torch.equal(ExpertTransform.apply(x, p), t(x, _g(3)))


def test_flips_are_exact():
    x = _x(n=64)
    t = ExpertTransform(brightness=None, saturation=None, hue=None, hflip=0.5, vflip=0.5)
    p = t.sample(64, 3, _g(1))
    y = t.apply(x, p)
    assert 0 < int(p["hflip"].sum()) < 64 and 0 < int(p["vflip"].sum()) < 64
    for i in range(64):
        ref = x[i]
        if p["hflip"][i]:
            ref = ref.flip(-1)
        if p["vflip"][i]:
            ref = ref.flip(-2)
        assert torch.equal(y[i], ref)
    always = ExpertTransform(brightness=None, saturation=None, hue=None, hflip=1.0, vflip=0.0)
    assert torch.equal(always(x, _g()), x.flip(-1))


def test_disabled_is_identity():
    x = _x()
    t = ExpertTransform.disabled()
    assert t.sample(6, 3, _g()) == {}
    assert torch.equal(t(x, _g()), x)


def test_brightness_semantics():
    x = _x(n=200) * 0.5
    t = ExpertTransform(brightness=0.2, saturation=None, hue=None, hflip=0, vflip=0)
    p = t.sample(200, 3, _g())
    f = p["brightness"]
    assert float(f.min()) >= 0.8 and float(f.max()) <= 1.2
    assert torch.allclose(t.apply(x, p), x * f.view(-1, 1, 1, 1))


def test_saturation_pair_is_the_factor_range():
    t = ExpertTransform(brightness=None, saturation=(0.0, 0.2), hue=None, hflip=0, vflip=0)
    p = t.sample(100, 3, _g())
    assert float(p["saturation"].min()) >= 0.0 and float(p["saturation"].max()) <= 0.2
    x = _x(n=2)
    gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    y = t.apply(x, {"saturation": torch.zeros(2)})
    assert torch.allclose(y, gray.expand_as(x), atol=1e-6)  # factor 0 -> grayscale


def test_hue_roundtrip_and_shift():
    x = _x(n=4, h=16, w=16)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    t = ExpertTransform(brightness=None, saturation=None, hue=0.1, hflip=0, vflip=0)
    assert torch.allclose(t.apply(x, {"hue": torch.zeros(4)}), x, atol=1e-5)
    # a shift of 1/3 turn maps pure red to pure green
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    g = t.apply(red, {"hue": torch.tensor([1 / 3])})
    assert torch.allclose(g[:, 1], torch.ones(1, 2, 2), atol=1e-5)
    assert torch.allclose(g[:, 0] + g[:, 2], torch.zeros(1, 2, 2), atol=1e-5)
    # gray pixels have no hue: unchanged by any shift
    gray = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(t.apply(gray, {"hue": torch.tensor([0.3])}), gray, atol=1e-6)


def test_fast_hue_matches_hsv_reference():
    x = _x(n=16, h=12, w=12)
    x[:, :, :3] = 0.5  # some gray pixels
    x[:4, 0] = x[:4, 1]  # ties between channels
    shift = torch.rand(16, generator=_g(2)) - 0.5
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, :1] + shift.view(-1, 1, 1, 1), 1.0)
    ref = hsv_to_rgb(torch.cat((h, hsv[:, 1:]), 1))
    assert torch.allclose(adjust_hue(x, shift), ref, atol=1e-5)


def test_input_is_never_modified():
    x = _x()
    x0 = x.clone()
    ExpertTransform(brightness=None, saturation=None, hue=None, hflip=1.0, vflip=1.0)(x, _g())
    ExpertTransform()(x, _g())
    assert torch.equal(x, x0)


def test_one_channel_skips_saturation_and_hue():
    t = ExpertTransform(contrast=0.3)
    p = t.sample(5, 1, _g())
    assert set(p) == {"brightness", "contrast", "hflip", "vflip"}
    y = t.apply(_x(n=5, c=1), p)
    assert y.shape == (5, 1, 9, 7)


def test_bad_config():
    with pytest.raises(UserError, match="option hue"):
        ExpertTransform(hue=0.7)
    with pytest.raises(UserError, match="option brightness"):
        ExpertTransform(brightness=-1)
    with pytest.raises(UserError, match="option saturation"):
        ExpertTransform(saturation=(0.5, 0.1))
    with pytest.raises(UserError, match="option hflip"):
        ExpertTransform(hflip=2)
    with pytest.raises(UserError, match="option flip"):
        ExpertTransform.from_config({"flip": 0.5})
    assert ExpertTransform.from_config({"hue": None}).hue is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    t = ExpertTransform(contrast=0.2)
    x = _x(n=8)
    assert torch.allclose(t(x.cuda(), _g(5)).cpu(), t(x, _g(5)), atol=1e-5)
