"""ConvNet with fused blocks (mtt_fast.ops.block) equals the native-op ConvNet, to second order."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mtt_fast.errors import UserError
from mtt_fast.models import ConvNet, FlatParams, forward_flat, get_network
from mtt_fast.ops import block as block_op

needs_fused = pytest.mark.skipif("cpu" not in block_op.COMPILED_DEVICES,
                                 reason="mtt_fast._C with convblock is not loaded")

# (channels, res, depth): the 28 px pad-3 layer (-> 32), RGB 32 px, and odd sizes (20 -> 10 -> 5 -> 2)
CASES = [(1, 28, 3), (3, 32, 3), (3, 20, 3)]


def _student_step(net, layout, theta, x, y, v):
    """Logits, the CE gradient (with a graph), and the Hessian-vector products w.r.t. (theta, x)."""
    logits = forward_flat(net, layout, theta, x)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), theta, create_graph=True)
    h_theta, h_x = torch.autograd.grad(torch.dot(v, g), (theta, x))
    return logits.detach(), g.detach(), h_theta, h_x


def test_block_impl_keeps_the_parameter_layout():
    layouts = [FlatParams.of(get_network("convnetd3", 3, 10, 32, width=8, block_impl=impl))
               for impl in ("auto", "fused", "reference")]
    assert layouts[0] == layouts[1] == layouts[2]
    with pytest.raises(UserError, match="block_impl"):
        ConvNet(3, 10, 32, width=8, block_impl="nope")


@needs_fused
@pytest.mark.parametrize("channels,res,depth", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_convnet_equals_native(channels, res, depth, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.manual_seed(0)
    net = ConvNet(channels, 5, res, width=6, depth=depth).to(dtype)
    layout = FlatParams.of(net)
    gen = torch.Generator().manual_seed(1)
    theta0 = layout.flatten(net)
    theta0 = theta0 + 0.05 * torch.randn(theta0.shape, generator=gen, dtype=torch.float64).to(dtype)
    x0 = torch.randn(4, channels, res, res, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.arange(4) % 5
    v = torch.randn(theta0.shape, generator=gen, dtype=torch.float64).to(dtype)
    out = {}
    for impl in ("fused", "reference"):
        net.block_impl = impl
        assert net.use_fused(x0) == (impl == "fused")
        theta = theta0.clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        out[impl] = _student_step(net, layout, theta, x, y, v)
    for a, r in zip(out["fused"], out["reference"]):
        torch.testing.assert_close(a, r, **tol)


@needs_fused
def test_auto_picks_fused_for_cpu_float_and_native_otherwise():
    net = ConvNet(3, 4, 16, width=4, depth=2)
    assert net.block_impl == "auto"
    assert net.use_fused(torch.randn(1, 3, 16, 16))
    assert not net.use_fused(torch.randn(1, 3, 16, 16).bfloat16())
    net.block_impl = "fused"
    with pytest.raises(RuntimeError, match="block_impl='fused'"):
        net.use_fused(torch.randn(1, 3, 16, 16).bfloat16())


@needs_fused
def test_fused_forward_is_the_module_forward_and_uses_the_op(monkeypatch):
    net = ConvNet(3, 4, 16, width=4, depth=2)
    calls = []
    real = block_op.convblock

    def spy(*args, **kwargs):
        calls.append(kwargs.get("impl"))
        return real(*args, **kwargs)

    monkeypatch.setattr(block_op, "convblock", spy)
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    assert calls == ["auto", "auto"]
    net.block_impl = "fused"
    torch.testing.assert_close(net(x), out, rtol=0, atol=0)
    assert calls[2:] == ["fused", "fused"]
    net.block_impl = "reference"
    torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
