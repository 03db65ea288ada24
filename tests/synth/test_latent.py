"""GLaD parameterization: chunked render / backward == end-to-end autograd through G."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtt_fast.errors import UserError
from mtt_fast.synth.generator import check_generator, to_model_space
from mtt_fast.synth.latent import GeneratorParam

MEAN, STD = [0.3, 0.6], [0.2, 0.4]


class TinyG(nn.Module):
    """A 3-block conditional generator following mtt_fast/synth/generator.py (8x8x2)."""

    z_dim, w_dim, num_ws, num_classes, img_channels, img_resolution = 5, 6, 3, 3, 2, 8

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(3, 5)
        self.map = nn.Linear(10, 6)
        self.const = nn.Parameter(torch.randn(4, 2, 2))
        self.affine = nn.ModuleList([nn.Linear(6, 4) for _ in range(4)])
        self.conv = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
        self.torgb = nn.Conv2d(4, 2, 1)

    def mapping(self, z, labels):
        return torch.tanh(self.map(torch.cat([z, self.embed(labels)], 1)))

    def _block(self, i, x, w):
        if i > 0:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.leaky_relu(self.conv[i](x * (1 + self.affine[i](w))[:, :, None, None]), 0.2)

    def features(self, ws, layer):
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for i in range(layer + 1):
            x = self._block(i, x, ws[:, i])
        return x

    def render(self, f, ws, layer):
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1) if f is None else f
        for i in range(layer + 1, self.num_ws):
            x = self._block(i, x, ws[:, i])
        return self.torgb(x * (1 + self.affine[3](ws[:, -1]))[:, :, None, None])


def _setup(space, layer, learn_g=False, g_batch=3, avg_w=False):
    torch.manual_seed(0)
    g = TinyG().double()
    info = check_generator(g, "tiny")
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    p = GeneratorParam(g, info, labels, MEAN, STD, space=space, layer=layer, learn_g=learn_g, g_batch=g_batch,
                       avg_w=avg_w, rng=torch.Generator().manual_seed(1), avg_w_samples=20)
    with torch.no_grad():  # move away from the initialization so nothing is special
        for t in p.learnables().values():
            t.add_(0.1 * torch.randn_like(t))
    p.changed()
    return g, p, labels


def _reference_images(g, p, labels, space, layer):
    """The synthetic images written out by hand from the learnables, with a graph."""
    lat = p.latents
    if space == "z":
        ws = g.mapping(lat, labels).unsqueeze(1).expand(-1, g.num_ws, -1)
    elif space == "w":
        ws = lat.unsqueeze(1).expand(-1, g.num_ws, -1)
    else:
        ws = lat
    return to_model_space(g.render(p.f if layer >= 0 else None, ws, layer), MEAN, STD)


@pytest.mark.parametrize("space", ["z", "w", "wp"])
@pytest.mark.parametrize("layer", [-1, 0, 1])
@pytest.mark.parametrize("learn_g", [False, True])
def test_chunked_backward_equals_end_to_end_autograd(space, layer, learn_g):
    g, p, labels = _setup(space, layer, learn_g=learn_g)
    leaves = p.learnables()
    assert ("f_latents" in leaves) == (layer >= 0)
    assert any(k.startswith("G.") for k in leaves) == learn_g
    ref = _reference_images(g, p, labels, space, layer)
    torch.testing.assert_close(p.images(), ref.detach(), rtol=1e-12, atol=1e-12)
    grad_images = torch.randn_like(ref)
    want = torch.autograd.grad((ref * grad_images).sum(), list(leaves.values()), allow_unused=True)
    p.backward(grad_images)
    for (name, t), w in zip(leaves.items(), want):
        w = torch.zeros_like(t) if w is None else w
        assert t.grad is not None, name
        torch.testing.assert_close(t.grad, w, rtol=1e-10, atol=1e-12, msg=name)
        if name in ("latents", "f_latents"):
            assert t.grad.abs().sum() > 0, name


def test_step_changes_images_and_checkpoint_roundtrip():
    _, p, _ = _setup("wp", 0, learn_g=True)
    before = p.images().clone()
    p.backward(torch.randn_like(before))
    p.step()
    after = p.images()
    assert not torch.allclose(before, after)
    state = {k: v.clone() for k, v in p.state_tensors().items()}
    assert "momentum_w" in state and "momentum_img" in state and "momentum_g.0" in state
    _, q, _ = _setup("wp", 0, learn_g=True)
    q.load_state_tensors(state)
    torch.testing.assert_close(q.images(), after)


def test_space_p_renders_once_then_learns_pixels():
    _, p, _ = _setup("p", 1)
    assert set(p.learnables()) == {"images"}
    grad = torch.randn_like(p.images())
    p.backward(grad)
    torch.testing.assert_close(p.pixels.grad, grad)


def test_avg_w_starts_each_class_at_one_point():
    torch.manual_seed(0)
    g = TinyG().double()
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    q = GeneratorParam(g, check_generator(g, "tiny"), labels, MEAN, STD, space="w", avg_w=True,
                       rng=torch.Generator().manual_seed(1), avg_w_samples=20)
    w = q.latents.detach()
    torch.testing.assert_close(w[0], w[1])
    torch.testing.assert_close(w[2], w[4])
    assert not torch.allclose(w[1], w[2])
    zs = torch.randn(20, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert not torch.allclose(w[0], g.mapping(zs[:1], labels[:1])[0])  # a mean, not one sample


@pytest.mark.parametrize("kwargs, words", [
    ({"space": "q"}, "--space q"),
    ({"layer": 3}, "--layer 3"),
    ({"layer": -2}, "--layer -2"),
    ({"space": "z", "avg_w": True}, "--avg-w"),
    ({"space": "p", "learn_g": True}, "--learn-g"),
    ({"g_batch": 0}, "--g-batch"),
])
def test_bad_settings_are_one_clear_error(kwargs, words):
    g = TinyG().double()
    with pytest.raises(UserError, match=words.replace("-", r"\-")):
        GeneratorParam(g, check_generator(g, "tiny"), torch.tensor([0, 1]), MEAN, STD, **kwargs)


@pytest.mark.parametrize("space, layer", [("wp", -1), ("wp", 1), ("z", 0), ("w", 2)])
def test_chunked_backward_through_the_shipped_generator(space, layer):
    """The same equality with `mtt-fast gan train`'s Generator (16 px, 3 blocks), float64, G learned."""
    from mtt_fast.generative import Generator

    torch.manual_seed(0)
    g = Generator(3, 2, 16, z_dim=6, w_dim=8, channel_base=64, channel_max=8).double()
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    p = GeneratorParam(g, check_generator(g, "shipped"), labels, MEAN, STD, space=space, layer=layer, learn_g=True,
                       g_batch=3, rng=torch.Generator().manual_seed(1))
    leaves = p.learnables()
    ref = _reference_images(g, p, labels, space, layer)
    torch.testing.assert_close(p.images(), ref.detach(), rtol=1e-12, atol=1e-12)
    grad_images = torch.randn_like(ref)
    want = torch.autograd.grad((ref * grad_images).sum(), list(leaves.values()), allow_unused=True)
    p.backward(grad_images)
    for (name, t), w in zip(leaves.items(), want):
        w = torch.zeros_like(t) if w is None else w
        torch.testing.assert_close(t.grad, w, rtol=1e-9, atol=1e-12, msg=name)


def test_generative_interface_re_exports_the_contract():
    """``mtt_fast.generative.interface`` (named in the README and in old code) is the synth contract."""
    import mtt_fast.generative.interface as old
    import mtt_fast.synth.generator as new

    for name in ("INT_ATTRS", "METHODS", "check_generator", "describe", "from_model_space", "to_model_space"):
        assert getattr(old, name) is getattr(new, name), name
