"""The one train-a-classifier loop (mtt_fast.fit.fit_classifier)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mtt_fast.augment import DSAConfig, augment
from mtt_fast.errors import UserError
from mtt_fast.fit import fit_classifier


def tiny_net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def data(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(3, (n,), generator=g)


def shuffled(x, y, gen, batch_size):
    def batches(epoch):
        perm = torch.randperm(len(y), generator=gen)
        return ((x[b], y[b]) for b in perm.split(batch_size))
    return batches


def test_on_epoch_once_per_epoch_with_the_mean_loss():
    x, y = data()
    net = tiny_net()
    seen = []
    losses = fit_classifier(net, lambda e: [(x[:4], y[:4]), (x[4:], y[4:])], torch.optim.SGD(net.parameters(), lr=0.0),
                            epochs=3, on_epoch=lambda epoch, loss: seen.append((epoch, loss)))
    assert [e for e, _ in seen] == [0, 1, 2]
    assert [l for _, l in seen] == losses
    # lr 0: every epoch sees the same network; its mean loss is weighted by batch size
    want = F.cross_entropy(net(x), y).item()
    assert losses[0] == pytest.approx(want, rel=1e-6) and losses[0] == losses[2]


def test_nan_loss_raises_the_callers_message_before_stepping():
    x, y = data()
    net = tiny_net()
    before = [p.detach().clone() for p in net.parameters()]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match=r"^expert 7 training loss became nan \(lower --lr\)$"):
        fit_classifier(net, lambda e: [(bad, y)], torch.optim.SGD(net.parameters(), lr=0.1), epochs=2,
                       diverged=lambda loss: f"expert 7 training loss became {loss} (lower --lr)")
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)


def test_lr_schedule_is_set_before_every_step_and_the_scheduler_stepped_after():
    x, y = data()
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    used = []
    real_step = opt.step

    def step(*a, **k):
        used.append([g["lr"] for g in opt.param_groups])
        return real_step(*a, **k)

    opt.step = step
    fit_classifier(net, lambda e: [(x[:5], y[:5]), (x[5:], y[5:])], opt, epochs=3,
                   lr_schedule=lambda s: 0.5 / (s + 1))
    assert used == [[0.5 / (s + 1)] for s in range(6)]  # global step count, over epochs

    net2 = tiny_net()
    opt2 = torch.optim.SGD(net2.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    fit_classifier(net2, lambda e: [(x, y)], opt2, epochs=4, scheduler=sched)
    assert opt2.param_groups[0]["lr"] == 0.5 ** 4


def test_ema_is_updated_after_every_step():
    x, y = data()
    net = tiny_net()
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    fit_classifier(net, lambda e: [(x[:5], y[:5]), (x[5:], y[5:])], torch.optim.SGD(net.parameters(), lr=0.1),
                   epochs=2, ema=ema)
    assert int(ema.n_averaged) == 4
    assert not torch.equal(next(ema.module.parameters()), next(net.parameters()))


def test_dsa_needs_a_generator():
    x, y = data()
    net = tiny_net()
    with pytest.raises(ValueError, match="generator"):
        fit_classifier(net, lambda e: [(x, y)], torch.optim.SGD(net.parameters(), lr=0.1), epochs=1, dsa=DSAConfig())


def _hand_written_loop(net, x, y, *, epochs, batch_size, lr, dsa, seed):
    """The evaluation protocol's loop as it was written before fit_classifier (the reference)."""
    gen = torch.Generator().manual_seed(seed)
    total = epochs * math.ceil(len(y) / batch_size)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for b in perm.split(batch_size):
            for g in opt.param_groups:
                g["lr"] = lr * (1 - step / total)
            xb = x[b]
            if dsa.enabled:
                xb, _ = augment(xb, dsa, gen, impl="reference")
            loss = F.cross_entropy(net(xb), y[b])
            if not torch.isfinite(loss):
                raise UserError("diverged")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(net)
            step += 1
    return ema.module


def test_same_bits_as_the_hand_written_loop_with_dsa_schedule_and_ema():
    x, y = data(n=12)
    dsa = DSAConfig()
    want = _hand_written_loop(tiny_net(), x, y, epochs=3, batch_size=5, lr=0.05, dsa=dsa, seed=4)

    net = tiny_net()
    gen = torch.Generator().manual_seed(4)
    total = 3 * math.ceil(len(y) / 5)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit_classifier(net, shuffled(x, y, gen, 5), opt, epochs=3, dsa=dsa, dsa_impl="reference", generator=gen,
                   lr_schedule=lambda s: 0.05 * (1 - s / total), ema=ema)
    for a, b in zip(want.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)
    # and the augmentation really ran: without it the weights differ
    net3 = tiny_net()
    gen3 = torch.Generator().manual_seed(4)
    ema3 = AveragedModel(net3, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt3 = torch.optim.SGD(net3.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit_classifier(net3, shuffled(x, y, gen3, 5), opt3, epochs=3, lr_schedule=lambda s: 0.05 * (1 - s / total),
                   ema=ema3)
    assert not all(torch.equal(a, b) for a, b in zip(want.parameters(), ema3.module.parameters()))
