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


# -- sharpness-aware steps (SAM / GSAM) and soft targets ------------------------------------------------


def _linear(w: torch.Tensor) -> nn.Module:
    net = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
    with torch.no_grad():
        net.weight.copy_(w)
    return net


def _ce_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d mean-CE / dW of the linear classifier z = x W^T, by hand: (softmax(z) - onehot)^T x / B."""
    p = torch.softmax(x @ w.T, dim=1)
    return (p - F.one_hot(y, w.shape[0]).double()).T @ x / len(y)


def _two_hand_steps(w, x, y, *, lr, rho, alpha=0.0, adaptive=False):
    """Two SAM (alpha 0) or GSAM steps written out: g at w, ascent rho g/||g|| (adaptive: rho w^2 g/||w g||),
    g_p there, step from w."""
    for _ in range(2):
        g = _ce_grad(w, x, y)
        ascent = rho * w**2 * g / (w.abs() * g).norm() if adaptive else rho * g / g.norm()
        gp = _ce_grad(w + ascent, x, y)
        d = gp - alpha * (g - (g * gp).sum() / gp.norm() ** 2 * gp)
        w = w - lr * d
    return w


@pytest.mark.parametrize(("alpha", "adaptive"), [(0.0, False), (0.3, False), (0.3, True)])
def test_sam_and_gsam_steps_equal_the_hand_computed_two_steps(alpha, adaptive):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    want = _two_hand_steps(w0, x, y, lr=0.5, rho=0.2, alpha=alpha, adaptive=adaptive)
    if adaptive:  # the per-weight scaling changed the ascent
        assert (want - _two_hand_steps(w0, x, y, lr=0.5, rho=0.2, alpha=alpha)).abs().max() > 1e-6
    net = _linear(w0)
    fit_classifier(net, lambda e: [(x, y)], torch.optim.SGD(net.parameters(), lr=0.5), epochs=2,
                   sam_rho=0.2, gsam_alpha=alpha, sam_adaptive=adaptive)
    torch.testing.assert_close(net.weight.detach(), want, rtol=1e-10, atol=1e-12)
    # and the ascent mattered: two plain SGD steps end elsewhere
    plain = w0 - 0.5 * _ce_grad(w0, x, y)
    plain = plain - 0.5 * _ce_grad(plain, x, y)
    assert (want - plain).abs().max() > 1e-4


def test_sam_reports_the_loss_at_w_and_restores_w_exactly_before_the_step():
    x, y = data()
    net = tiny_net()
    w = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the step must leave w bit for bit
    losses = fit_classifier(net, lambda e: [(x, y)], opt, epochs=1, sam_rho=0.5)
    assert losses[0] == F.cross_entropy(tiny_net()(x), y).item()
    for p, q in zip(net.parameters(), w):
        assert torch.equal(p, q)


def test_sam_leaves_batch_norm_running_stats_to_the_pass_at_w():
    x, y = data()

    def bn_net():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 8 * 8, 3))

    a, b = bn_net(), bn_net()
    fit_classifier(a, lambda e: [(x, y)], torch.optim.SGD(a.parameters(), lr=0.1), epochs=1, sam_rho=0.5)
    fit_classifier(b, lambda e: [(x, y)], torch.optim.SGD(b.parameters(), lr=0.1), epochs=1)
    assert torch.equal(a[1].running_mean, b[1].running_mean) and torch.equal(a[1].running_var, b[1].running_var)
    assert a[1].momentum == 0.1  # put back


def test_sam_settings_are_checked():
    x, y = data()
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="gsam_alpha and sam_adaptive need sam_rho"):
        fit_classifier(net, lambda e: [(x, y)], opt, epochs=1, gsam_alpha=0.3)
    with pytest.raises(ValueError, match="gsam_alpha and sam_adaptive need sam_rho"):
        fit_classifier(net, lambda e: [(x, y)], opt, epochs=1, sam_adaptive=True)
    with pytest.raises(ValueError, match="finite"):
        fit_classifier(net, lambda e: [(x, y)], opt, epochs=1, sam_rho=float("nan"))


def test_one_hot_soft_targets_train_as_the_hard_labels_up_to_rounding():
    x, y = data(n=12)
    nets = []
    for target in (y, F.one_hot(y, 3).float()):
        net = tiny_net()
        gen = torch.Generator().manual_seed(4)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        fit_classifier(net, shuffled(x, target, gen, 5), opt, epochs=3, dsa=DSAConfig(), dsa_impl="reference",
                       generator=gen)
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a soft target that is not one-hot trains another network (same loop, same draws)
    a, b = tiny_net(), tiny_net()
    fit_classifier(a, lambda e: [(x, y)], torch.optim.SGD(a.parameters(), lr=0.05), epochs=1)
    fit_classifier(b, lambda e: [(x, F.one_hot(y, 3).float() * 0.7 + 0.1)], torch.optim.SGD(b.parameters(), lr=0.05),
                   epochs=1)
    assert (next(a.parameters()) - next(b.parameters())).abs().max() > 1e-4
