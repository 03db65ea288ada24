"""The feature-space quality numbers: the kernel distance against a direct computation, diversity, truncation."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.generative.quality import (
    feature_quality,
    kernel_distance,
    logits_and_features,
    mean_pairwise_distance,
    truncate,
)


def _direct_mmd2(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written as plain loops over the pairs."""
    d = len(x[0])
    k = lambda a, b: (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(a, b) for a in x for b in y) / (m * n)
    return sxx + syy - 2 * sxy


def test_kernel_distance_matches_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g) + 0.5
    assert kernel_distance(x, y) == pytest.approx(_direct_mmd2(x.double().tolist(), y.double().tolist()), rel=1e-12)
    # symmetric, and unbiased: near zero for two samples of one distribution, large for shifted ones
    assert kernel_distance(y, x) == pytest.approx(kernel_distance(x, y), rel=1e-12)
    a, b = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    assert abs(kernel_distance(a, b)) < 0.05 < kernel_distance(a, b + 1.0)
    with pytest.raises(ValueError):
        kernel_distance(x[:1], y)


def test_diversity_is_the_mean_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    pairs = [float((x[i] - x[j]).norm()) for i, j in itertools.combinations(range(3), 2)]
    assert mean_pairwise_distance(x) == pytest.approx(sum(pairs) / 3)


def test_feature_quality_per_class_and_a_collapsed_generator():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(400, 4, generator=g)
    rl = torch.tensor([0] * 200 + [1] * 200)
    gen = torch.cat([torch.randn(200, 4, generator=g), torch.zeros(200, 4) + 0.3])  # class 1: one image
    q = feature_quality(gen, rl, real, rl, 3)   # class 2 has no images: undefined, left out of the mean
    assert q["kid_per_class"][2] is None and q["diversity_gen"][2] is None
    assert q["kid"] == pytest.approx((q["kid_per_class"][0] + q["kid_per_class"][1]) / 2)
    assert q["kid_per_class"][1] > 10 * abs(q["kid_per_class"][0])
    assert q["diversity_gen"][1] == pytest.approx(0.0)
    assert q["diversity_ratio"] == pytest.approx(q["diversity_gen"][0] / q["diversity_real"][0] / 2)


def test_features_are_the_input_of_the_last_linear_layer():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(4, 3)
    logits, f = logits_and_features(net, x)
    assert torch.equal(f, net[1](net[0](x)).detach()) and torch.equal(logits, net(x))


def test_truncation_moves_w_toward_its_class_average():
    w = torch.tensor([[2.0, 2.0], [4.0, 0.0]])
    avg = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    labels = torch.tensor([0, 1])
    assert torch.equal(truncate(w, labels, avg, 1.0), w)
    assert torch.allclose(truncate(w, labels, avg, 0.5), torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    assert torch.equal(truncate(w, labels, avg, 0.0), avg)
    with pytest.raises(UserError, match="--truncation"):
        truncate(w, labels, None, 0.7)
