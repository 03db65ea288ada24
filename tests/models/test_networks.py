import pytest
import torch

from mtt_fast.errors import UserError
from mtt_fast.models import FlatParams, forward_flat, get_network


@pytest.mark.parametrize("arch", ["convnet", "convnetd2", "alexnet", "vgg11", "resnet18"])
@pytest.mark.parametrize("channels,res", [(1, 28), (3, 32)])
def test_flat_call_equals_module_call(arch, channels, res):
    torch.manual_seed(0)
    net = get_network(arch, channels, 5, res, width=16)
    x = torch.randn(3, channels, res, res)
    layout = FlatParams.of(net)
    flat = layout.flatten(net)
    assert flat.shape == (layout.size,)
    assert torch.equal(forward_flat(net, layout, flat, x), net(x))
    # a different flat vector changes the output, and the module itself is not mutated
    before = [p.clone() for p in net.parameters()]
    other = forward_flat(net, layout, flat + 0.01 * torch.randn_like(flat), x)
    assert not torch.allclose(other, net(x))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_flat_params_gradient_flows_to_flat_vector():
    net = get_network("convnet", 3, 4, 16, width=8, depth=2)
    layout = FlatParams.of(net)
    flat = layout.flatten(net).requires_grad_(True)
    loss = forward_flat(net, layout, flat, torch.randn(2, 3, 16, 16)).square().sum()
    (g,) = torch.autograd.grad(loss, flat)
    assert g.shape == flat.shape and g.abs().sum() > 0


def test_flatten_is_a_copy_not_a_view():
    net = get_network("convnet", 1, 3, 16, width=8, depth=2)
    layout = FlatParams.of(net)
    snap = layout.flatten(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert not torch.equal(snap, layout.flatten(net))


def test_load_into_roundtrip_and_json():
    net = get_network("alexnet", 3, 4, 32)
    layout = FlatParams.of(net)
    flat = torch.randn(layout.size)
    layout.load_into(net, flat)
    assert torch.equal(layout.flatten(net), flat)
    assert FlatParams.from_json(layout.to_json()) == layout


def test_convnet_matches_reference_parameter_count():
    # MTT reference ConvNet (width 128, depth 3) on CIFAR-10 has 320,010 parameters.
    assert FlatParams.of(get_network("convnet", 3, 10, 32)).size == 320010


def test_unknown_arch_and_too_small_res():
    with pytest.raises(UserError, match="unknown architecture"):
        get_network("lenet9", 3, 2, 32)
    with pytest.raises(UserError, match="--res"):
        get_network("convnet", 3, 2, 4, depth=3)
