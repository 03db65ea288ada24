"""The adjoint engine equals the full unroll (float64 1e-9, float32 1e-4); tesla only at N = 1."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.augment import DSAConfig
from mtt_fast.match import ENGINES, Student, match_adjoint, match_full, match_tesla, plan_steps
from mtt_fast.models import FlatParams, get_network

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _setup(arch="convnetd2", dtype=torch.float64, n=6, res=8, classes=3, width=4, channels=2, device="cpu",
           seed=0):
    torch.manual_seed(seed)
    net = get_network(arch, channels, classes, res, width=width).to(dtype=dtype, device=device)
    student = Student.of(net, aug_impl="reference")
    start = FlatParams.of(net).flatten(net)
    g = torch.Generator().manual_seed(seed + 1)
    target = start + 0.05 * torch.randn(start.numel(), generator=g, dtype=dtype).to(device)
    x = torch.randn(n, channels, res, res, generator=g, dtype=dtype).to(device)
    y = (torch.arange(n) % classes).to(device)
    return student, start, target, x, y


def _plan(n, shape, steps, batch, dtype, device="cpu", seed=1, mode="S"):
    return plan_steps(n, shape, steps, batch, DSAConfig(mode=mode), torch.Generator().manual_seed(seed),
                      device=device, dtype=dtype)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", ["convnetd2", "convnetd3"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_adjoint_equals_full_float64(arch, steps):
    student, start, target, x, y = _setup(arch)
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(len(y), tuple(x.shape[1:]), steps, 4, torch.float64)
    full = match_full(student, start, target, x, y, lr, plan)
    adj = match_adjoint(student, start, target, x, y, lr, plan)
    assert full.grad_images.abs().sum() > 0 and full.grad_lr.abs() > 0
    assert _rel(adj.loss, full.loss) < 1e-12
    assert _rel(adj.theta_end, full.theta_end) < 1e-12
    assert _rel(adj.grad_images, full.grad_images) < 1e-9
    assert _rel(adj.grad_lr, full.grad_lr) < 1e-9


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_adjoint_equals_full_float32(steps):
    student, start, target, x, y = _setup("convnetd3", dtype=torch.float32)
    lr = torch.tensor(0.05)
    plan = _plan(len(y), tuple(x.shape[1:]), steps, 4, torch.float32, mode="M")
    full = match_full(student, start, target, x, y, lr, plan)
    adj = match_adjoint(student, start, target, x, y, lr, plan)
    assert _rel(adj.grad_images, full.grad_images) < 1e-4
    assert _rel(adj.grad_lr, full.grad_lr) < 1e-4


def test_adjoint_without_augmentation_and_whole_set_batches():
    student, start, target, x, y = _setup("convnetd2")
    lr = torch.tensor(0.1, dtype=torch.float64)
    plan = plan_steps(len(y), tuple(x.shape[1:]), 5, len(y), None, torch.Generator().manual_seed(0))
    full = match_full(student, start, target, x, y, lr, plan)
    adj = match_adjoint(student, start, target, x, y, lr, plan)
    assert _rel(adj.grad_images, full.grad_images) < 1e-9
    assert _rel(adj.grad_lr, full.grad_lr) < 1e-9


def test_tesla_exact_at_one_step_and_biased_after():
    student, start, target, x, y = _setup("convnetd2")
    lr = torch.tensor(0.3, dtype=torch.float64)
    plan1 = _plan(len(y), tuple(x.shape[1:]), 1, 4, torch.float64)
    full1 = match_full(student, start, target, x, y, lr, plan1)
    tes1 = match_tesla(student, start, target, x, y, lr, plan1)
    assert _rel(tes1.grad_images, full1.grad_images) < 1e-9
    assert _rel(tes1.grad_lr, full1.grad_lr) < 1e-9

    errors = {}
    for steps in (3, 10):
        plan = _plan(len(y), tuple(x.shape[1:]), steps, 4, torch.float64)
        full = match_full(student, start, target, x, y, lr, plan)
        tes = match_tesla(student, start, target, x, y, lr, plan)
        assert _rel(tes.loss, full.loss) < 1e-12  # the forward is exact
        errors[steps] = _rel(tes.grad_images, full.grad_images)
    print(f"\ntesla relative image-gradient error vs full: {errors}")
    # dropping the Hessian terms must show at this step size: well above rounding
    assert errors[3] > 1e-6 and errors[10] > 1e-6


def test_every_engine_is_registered_and_agrees_on_the_loss():
    student, start, target, x, y = _setup("convnetd2")
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(len(y), tuple(x.shape[1:]), 3, 4, torch.float64)
    losses = {name: fn(student, start, target, x, y, lr, plan).loss for name, fn in ENGINES.items()}
    assert set(losses) == {"auto", "full", "adjoint", "tesla"}
    assert all(torch.allclose(v, losses["full"], rtol=1e-12) for v in losses.values())


def test_adjoint_inputs_are_not_modified():
    student, start, target, x, y = _setup("convnetd2")
    lr = torch.tensor(0.05, dtype=torch.float64)
    copies = [t.clone() for t in (start, target, x, lr)]
    plan = _plan(len(y), tuple(x.shape[1:]), 3, 4, torch.float64)
    match_adjoint(student, start, target, x, y, lr, plan)
    assert all(torch.equal(a, b) for a, b in zip(copies, (start, target, x, lr)))


@CUDA
@pytest.mark.parametrize("offload", [False, True])
def test_adjoint_equals_full_on_cuda(offload):
    student, start, target, x, y = _setup("convnetd3", device="cuda")
    lr = torch.tensor(0.05, dtype=torch.float64, device="cuda")
    plan = _plan(len(y), tuple(x.shape[1:]), 5, 4, torch.float64, device="cuda", mode="M")
    full = match_full(student, start, target, x, y, lr, plan)
    adj = match_adjoint(student, start, target, x, y, lr, plan, offload=offload)
    assert _rel(adj.grad_images, full.grad_images) < 1e-9
    assert _rel(adj.grad_lr, full.grad_lr) < 1e-9


@pytest.mark.parametrize("engine", ["full", "adjoint"])
def test_second_order_convs_equal_native_convs_float64(engine):
    """ConvNet's default conv (mtt_fast.ops.conv, double backward on the backward kernels) gives
    the engines the same gradients as nn.Conv2d (autograd's double backward), 1-channel first
    layer included."""
    res = {}
    for impl in ("second-order", "native"):
        student, start, target, x, y = _setup("convnetd3", channels=1)
        student.module.conv_impl = impl
        lr = torch.tensor(0.05, dtype=torch.float64)
        plan = _plan(len(y), tuple(x.shape[1:]), 4, 4, torch.float64)
        res[impl] = ENGINES[engine](student, start, target, x, y, lr, plan)
    a, b = res["second-order"], res["native"]
    assert b.grad_images.abs().sum() > 0
    assert _rel(a.grad_images, b.grad_images) < 1e-10
    assert _rel(a.grad_lr, b.grad_lr) < 1e-10
