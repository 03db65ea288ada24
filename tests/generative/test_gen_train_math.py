"""EMA, R1 and class-balanced sampling of the GAN trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtt_fast.generative.train import BalancedSampler, ema_beta, r1_penalty, update_ema


def test_ema_beta_half_life_and_rampup():
    # without rampup: after ema_kimg * 1000 images the old weights count one half
    b = ema_beta(64, 10**9, 10.0, None)
    assert b ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)
    # rampup: the half-life is at most rampup * cur_nimg images
    b_early = ema_beta(64, 6400, 10.0, 0.05)  # half-life 320 images
    assert b_early == pytest.approx(0.5 ** (64 / 320))
    assert ema_beta(64, 10**9, 10.0, 0.05) == pytest.approx(b)
    assert ema_beta(64, 0, 10.0, 0.05) == 0.0  # first step: copy G


def test_update_ema_is_the_exponential_average():
    torch.manual_seed(0)
    g, ge = nn.Linear(3, 2), nn.Linear(3, 2)
    old = [p.detach().clone() for p in ge.parameters()]
    beta = 0.9
    update_ema(ge, g, beta)
    for pe, p, o in zip(ge.parameters(), g.parameters(), old):
        assert torch.allclose(pe, beta * o + (1 - beta) * p, atol=1e-7)
    # repeated updates with a fixed G converge to G: distance shrinks by beta per step
    d0 = float((ge.weight - g.weight).detach().abs().max())
    update_ema(ge, g, beta)
    assert float((ge.weight - g.weight).detach().abs().max()) == pytest.approx(beta * d0, rel=1e-5)
    update_ema(ge, g, 0.0)
    assert torch.equal(ge.weight, g.weight)


class LinearD(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(n))

    def forward(self, x, labels):
        return (x.flatten(1) * self.a).sum(1) + (x.flatten(1) ** 2).sum(1) * 0.0


def test_r1_penalty_of_a_linear_discriminator():
    torch.manual_seed(0)
    d = LinearD(2 * 3 * 3)
    x = torch.randn(4, 2, 3, 3)
    logits, pen = r1_penalty(d, x, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(logits, (x.flatten(1) * d.a).sum(1))
    assert torch.allclose(pen, d.a.detach().square().sum().expand(4))
    # the penalty trains D: d mean(pen) / d a = 2 a
    (g,) = torch.autograd.grad(pen.mean(), d.a)
    assert torch.allclose(g, 2 * d.a.detach())


class _Split:
    def __init__(self, labels, k):
        self.labels = torch.tensor(labels)
        self.num_classes = k


def test_balanced_sampler_is_class_uniform_on_imbalanced_data():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    s = BalancedSampler(_Split(labels, 3))
    pos, cls = s.sample(30000, torch.Generator().manual_seed(0))
    assert torch.equal(torch.tensor(labels)[pos], cls)
    frac = torch.bincount(cls, minlength=3).float() / len(cls)
    assert torch.allclose(frac, torch.full((3,), 1 / 3), atol=0.02)
    assert len(torch.unique(pos[cls == 2])) == 10  # every image of the rare class is drawn
