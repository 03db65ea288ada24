"""The auto engine equals full (float64 1e-9) at every split its memory budget can choose;
soft labels and the layer-restricted loss are exact in every exact engine; tesla at N = 1."""

from __future__ import annotations

import warnings

import pytest
import torch

from mtt_fast.augment import DSAConfig
from mtt_fast.match import (
    ENGINES,
    EXACT_ENGINES,
    Student,
    match_adjoint,
    match_auto,
    match_full,
    match_tesla,
    parse_memory_size,
    plan_steps,
)
from mtt_fast.match.auto import SavedBytes, choose_split
from mtt_fast.models import FlatParams, get_network

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _setup(n=7, res=8, classes=3, width=4, channels=2, soft=False, device="cpu", seed=0):
    torch.manual_seed(seed)
    net = get_network("convnetd2", channels, classes, res, width=width).to(dtype=torch.float64, device=device)
    student = Student.of(net, aug_impl="reference")
    start = FlatParams.of(net).flatten(net)
    g = torch.Generator().manual_seed(seed + 1)
    target = start + 0.05 * torch.randn(start.numel(), generator=g, dtype=torch.float64).to(device)
    x = torch.randn(n, channels, res, res, generator=g, dtype=torch.float64).to(device)
    if soft:
        y = torch.randn(n, classes, generator=g, dtype=torch.float64).to(device)
    else:
        y = (torch.arange(n) % classes).to(device)
    return student, start, target, x, y


def _plan(x, steps, batch=3, seed=1, device="cpu"):
    # 7 images in batches of 3: chunks of 3, 3, 1 -> steps of unequal size
    return plan_steps(len(x), tuple(x.shape[1:]), steps, batch, DSAConfig(mode="S"), torch.Generator().manual_seed(seed),
                      device=device, dtype=torch.float64)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _close(res, ref, tol=1e-9):
    assert _rel(res.loss, ref.loss) < 1e-12
    assert _rel(res.theta_end, ref.theta_end) < 1e-12
    assert _rel(res.grad_images, ref.grad_images) < tol
    assert _rel(res.grad_lr, ref.grad_lr) < tol
    if ref.grad_labels is not None:
        assert _rel(res.grad_labels, ref.grad_labels) < tol


def _budget_for(info, plan, kept):
    """The smallest budget at which auto keeps ``kept`` steps, from the per-step estimate."""
    b0 = len(plan[0].indices)
    step = [int(info["step_graph_bytes"] * len(s.indices) / b0) for s in plan]
    n = len(plan)
    k = n - kept
    return sum(step[k:]) + k * info["history_bytes_per_step"] + max(step)


def test_parse_memory_size():
    assert parse_memory_size("1GiB") == 2**30
    assert parse_memory_size("512 MiB") == 512 * 2**20
    assert parse_memory_size("2.5GB") == 2_500_000_000
    assert parse_memory_size("1e6") == 10**6
    assert parse_memory_size(123) == 123
    for bad in ("", "1 parsec", "-1GiB", "GiB"):
        with pytest.raises(ValueError, match="memory size"):
            parse_memory_size(bad)


def test_choose_split_keeps_the_longest_tail_that_fits():
    step, hist = [10, 10, 10, 10], 1
    assert choose_split(step, hist, 10**6) == (0, 50, False)      # everything fits
    assert choose_split(step, hist, 4 + 10) == (4, 14, False)     # the adjoint: history + one step
    assert choose_split(step, hist, 3 + 10 + 10) == (3, 23, False)
    assert choose_split(step, hist, 3 + 10 + 10 - 1) == (4, 14, False)
    assert choose_split(step, hist, 13) == (4, 14, True)          # not even the adjoint fits


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kept", [0, 1, 2, 3, 5])
def test_auto_equals_full_at_every_split(soft, kept):
    steps = 5
    student, start, target, x, y = _setup(soft=soft)
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, steps)
    full = match_full(student, start, target, x, y, lr, plan)
    probe = match_auto(student, start, target, x, y, lr, plan, memory_budget=10**12)
    assert probe.info["kept_steps"] == steps and probe.info["split"] == 0 and not probe.info["over_budget"]
    budget = _budget_for(probe.info, plan, kept)
    res = match_auto(student, start, target, x, y, lr, plan, memory_budget=budget)
    assert res.info["kept_steps"] == kept and res.info["split"] == steps - kept
    assert res.info["estimate_bytes"] <= budget == res.info["memory_budget"] and res.info["budget_rule"] == "given"
    if kept > 0:  # one byte less keeps one step fewer
        assert match_auto(student, start, target, x, y, lr, plan, memory_budget=budget - 1).info["kept_steps"] == kept - 1
    _close(res, full)
    assert (res.grad_labels is None) == (not soft)


def test_auto_below_the_adjoints_memory_warns_and_runs_as_the_adjoint():
    student, start, target, x, y = _setup()
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 4)
    with pytest.warns(UserWarning, match="memory budget"):
        res = match_auto(student, start, target, x, y, lr, plan, memory_budget="1KiB")
    assert res.info["over_budget"] and res.info["kept_steps"] == 0
    _close(res, match_full(student, start, target, x, y, lr, plan))


def test_auto_default_budget_keeps_everything_on_a_tiny_net():
    student, start, target, x, y = _setup()
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = match_auto(student, start, target, x, y, lr, plan)
    assert res.info["budget_rule"].startswith("default") and res.info["memory_budget"] > 0
    assert res.info["kept_steps"] == 3


def test_saved_bytes_counts_distinct_storages_once():
    a = torch.randn(100, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad(), SavedBytes() as saved:
        b = a.exp()        # saves its output (800 bytes)
        c = (b * b).sum()  # saves b twice: counted once
    assert saved.total == 800
    with torch.enable_grad(), SavedBytes(exclude=(a,)) as saved:
        (a * a).sum()
    assert saved.total == 0
    del c


@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_soft_label_gradient_is_exact(name):
    student, start, target, x, y = _setup(soft=True)
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 4)
    full = match_full(student, start, target, x, y, lr, plan)
    assert full.grad_labels.shape == y.shape and full.grad_labels.abs().sum() > 0
    # full's label gradient is autograd's: check it against a finite difference of the loss
    d = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eps = 1e-6
    lp = match_full(student, start, target, x, y + eps * d, lr, plan).loss
    lm = match_full(student, start, target, x, y - eps * d, lr, plan).loss
    assert abs(((lp - lm) / (2 * eps)).item() - (full.grad_labels * d).sum().item()) < 1e-6 * full.grad_labels.norm().item()
    _close(ENGINES[name](student, start, target, x, y, lr, plan), full)


def test_hard_labels_have_no_label_gradient():
    student, start, target, x, y = _setup()
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 2)
    assert all(fn(student, start, target, x, y, lr, plan).grad_labels is None for fn in ENGINES.values())


def test_soft_labels_of_one_hot_logits_match_hard_labels_in_the_limit():
    student, start, target, x, y = _setup()
    soft = 60.0 * torch.nn.functional.one_hot(y, 3).to(torch.float64)  # softmax ~ one-hot to e^-60
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 3)
    hard = match_full(student, start, target, x, y, lr, plan)
    sft = match_full(student, start, target, x, soft, lr, plan)
    assert _rel(sft.grad_images, hard.grad_images) < 1e-12


@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_loss_mask_is_exact(name):
    student, start, target, x, y = _setup(soft=True)
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 4)
    P = start.numel()
    mask = torch.zeros(P, dtype=torch.bool)
    mask[P // 2:] = True  # the deeper half of the parameters
    full = match_full(student, start, target, x, y, lr, plan, loss_mask=mask)
    unmasked = match_full(student, start, target, x, y, lr, plan)
    assert _rel(full.grad_images, unmasked.grad_images) > 1e-3  # the mask changes the objective
    th = full.theta_end
    ref = ((th - target)[mask].square().sum() / (start - target)[mask].square().sum())
    assert _rel(full.loss, ref) < 1e-12
    kw = {"memory_budget": 10**12} if name == "auto" else {}
    _close(ENGINES[name](student, start, target, x, y, lr, plan, loss_mask=mask, **kw), full)
    if name == "auto":  # and at a split
        probe = match_auto(student, start, target, x, y, lr, plan, loss_mask=mask, memory_budget=10**12)
        res = match_auto(student, start, target, x, y, lr, plan, loss_mask=mask,
                         memory_budget=_budget_for(probe.info, plan, 1))
        assert res.info["kept_steps"] == 1
        _close(res, full)


def test_loss_mask_is_checked():
    student, start, target, x, y = _setup()
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = _plan(x, 1)
    with pytest.raises(ValueError, match="loss_mask"):
        match_adjoint(student, start, target, x, y, lr, plan, loss_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no"):
        match_full(student, start, target, x, y, lr, plan, loss_mask=torch.zeros(start.numel(), dtype=torch.bool))


def test_tesla_soft_labels_and_mask_exact_at_one_step():
    student, start, target, x, y = _setup(soft=True)
    lr = torch.tensor(0.3, dtype=torch.float64)
    plan = _plan(x, 1)
    mask = torch.rand(start.numel(), generator=torch.Generator().manual_seed(5)) < 0.5
    full = match_full(student, start, target, x, y, lr, plan, loss_mask=mask)
    _close(match_tesla(student, start, target, x, y, lr, plan, loss_mask=mask), full)


@CUDA
@pytest.mark.parametrize("offload", [False, True])
def test_auto_on_cuda_equals_full_and_its_estimate_covers_the_allocator(offload):
    student, start, target, x, y = _setup(device="cuda", soft=True)
    lr = torch.tensor(0.05, dtype=torch.float64, device="cuda")
    plan = _plan(x, 5, device="cuda")
    full = match_full(student, start, target, x, y, lr, plan)
    probe = match_auto(student, start, target, x, y, lr, plan, memory_budget=10**12, offload=offload)
    budget = _budget_for(probe.info, plan, 2)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = match_auto(student, start, target, x, y, lr, plan, offload=offload, memory_budget=budget)
    torch.cuda.synchronize()
    assert res.info["kept_steps"] == 2
    # the engine's own peak stays within its budget, up to the estimate's margin and the results it returns
    returned = sum(t.numel() * t.element_size() for t in (res.grad_images, res.grad_labels, res.theta_end))
    assert torch.cuda.max_memory_allocated() - base <= 1.1 * budget + returned + 64 * 1024
    _close(res, full)
