"""The generator follows the interface; TorchScript; the split at a block is exact."""

from __future__ import annotations

import warnings

import pytest
import torch

from mtt_fast.errors import UserError
from mtt_fast.generative import (
    Discriminator,
    Generator,
    check_generator,
    from_model_space,
    to_model_space,
)
from mtt_fast.generative.networks import start_resolution


def tiny(res: int = 16, classes: int = 3, channels: int = 1) -> Generator:
    torch.manual_seed(0)
    return Generator(classes, channels, res, z_dim=8, w_dim=16, channel_base=128, channel_max=16)


def script(g: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is "deprecated" in new torch
        return torch.jit.script(g)


@pytest.mark.parametrize("res,r0,u", [(16, 4, 2), (28, 7, 2), (32, 4, 3), (224, 7, 5), (256, 4, 6), (8, 4, 1), (4, 4, 0)])
def test_start_resolution(res, r0, u):
    assert start_resolution(res) == (r0, u)


def test_start_resolution_too_small():
    with pytest.raises(UserError):
        start_resolution(3)


@pytest.mark.parametrize("res,channels", [(16, 1), (28, 3)])
def test_check_generator_passes(res, channels):
    g = tiny(res, channels=channels)
    info = check_generator(g, "tiny")
    assert info["num_ws"] == start_resolution(res)[1] + 1
    assert info["img_resolution"] == res and info["img_channels"] == channels
    assert info["feature_shapes"][-1][1:] == [res, res]
    assert all(isinstance(getattr(g, k), int) for k in ("z_dim", "w_dim", "num_ws", "num_classes"))


def test_split_at_every_block_is_exact_float64():
    g = tiny(16).double()
    z = torch.randn(3, g.z_dim, dtype=torch.float64)
    ws = g.mapping(z, torch.tensor([0, 1, 2])).unsqueeze(1).repeat(1, g.num_ws, 1)
    ws = ws + 0.1 * torch.randn_like(ws)  # W+: distinct ws per block
    img = g.render(None, ws, -1)
    assert img.shape == (3, 1, 16, 16) and img.dtype == torch.float64
    for k in range(g.num_ws):
        f = g.features(ws, k)
        assert torch.equal(g.render(f, ws, k), img)
        # render reads only ws[:, k+1:] (and ws[:, -1], toRGB's w, which is also the last
        # block's): changing earlier ws leaves the image unchanged
        ws2 = ws.clone()
        ws2[:, : min(k + 1, g.num_ws - 1)] += 1.0
        assert torch.equal(g.render(f, ws2, k), img)
    assert torch.equal(g(ws), img)


def test_gradients_flow_to_ws_and_features_float64():
    g = tiny(16).double()
    for p in g.parameters():
        p.requires_grad_(False)
    ws = torch.randn(2, g.num_ws, g.w_dim, dtype=torch.float64, requires_grad=True)
    f = g.features(ws, 0).detach().requires_grad_(True)
    ws.grad = None
    g.render(f, ws, 0).square().sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert ws.grad[:, 0].abs().sum() == 0 and ws.grad[:, 1:].abs().sum() > 0
    # the gradient w.r.t. ws agrees with a central finite difference along a random direction
    w0 = ws.detach()[:1]
    v = torch.randn_like(w0)
    w1 = w0.clone().requires_grad_(True)
    out_dir = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    (grad,) = torch.autograd.grad((g.render(None, w1, -1) * out_dir).sum(), w1)
    eps = 1e-6
    fd = ((g.render(None, w0 + eps * v, -1) - g.render(None, w0 - eps * v, -1)) * out_dir).sum() / (2 * eps)
    assert torch.allclose((grad * v).sum(), fd, rtol=1e-6, atol=1e-8)


def test_config_roundtrip():
    g = tiny(28)
    h = Generator.from_config(g.to_config())
    assert h.to_config() == g.to_config()
    h.load_state_dict(g.state_dict())
    ws = torch.randn(2, g.num_ws, g.w_dim)
    assert torch.equal(g.render(None, ws, -1), h.render(None, ws, -1))
    with pytest.raises(UserError):
        Generator.from_config({**g.to_config(), "bogus": 1})


def test_torchscript_save_load_matches(tmp_path):
    g = tiny(16)
    s = script(g)
    path = tmp_path / "g.pt"
    s.save(str(path))
    loaded = torch.jit.load(str(path))
    info = check_generator(loaded, str(path))
    assert info["num_ws"] == g.num_ws and info["w_dim"] == g.w_dim
    z = torch.randn(4, g.z_dim)
    labels = torch.tensor([0, 1, 2, 0])
    ws = g.mapping(z, labels).unsqueeze(1).repeat(1, g.num_ws, 1)
    assert torch.allclose(loaded.mapping(z, labels), g.mapping(z, labels), atol=1e-6)
    assert torch.allclose(loaded.render(None, ws, -1), g.render(None, ws, -1), atol=1e-6)
    assert torch.allclose(loaded.render(loaded.features(ws, 1), ws, 1), g.render(None, ws, -1), atol=1e-6)


def test_unconditional_and_discriminator():
    g = tiny(16, classes=0)
    check_generator(g, "uncond")
    d = Discriminator(3, 1, 16, channel_base=128, channel_max=16)
    x = torch.randn(5, 1, 16, 16, requires_grad=True)  # 5: minibatch std with an odd batch
    out = d(x, torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == (5,)
    out.sum().backward()
    assert x.grad is not None
    # the projection term: the label changes the logit
    assert not torch.allclose(d(x, torch.zeros(5, dtype=torch.long)), d(x, torch.ones(5, dtype=torch.long)))


def test_model_space_roundtrip():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert torch.allclose(from_model_space(to_model_space(x, mean, std), mean, std), x, atol=1e-6)
