"""DD (Wang et al. 2018): the objective and its gradients (the CLI run is in tests/cli/test_methods.py)."""

from __future__ import annotations

import torch

from mtt_fast.augment import DSAConfig
from mtt_fast.distill.objectives import dd_objective
from mtt_fast.match import Student, plan_steps
from mtt_fast.models import ConvNet, FlatParams


def _problem(seed=0):
    torch.manual_seed(seed)
    net = ConvNet(2, 3, 8, width=4, depth=2).double()
    student = Student.of(net, aug_impl="reference")
    layout = FlatParams.of(net)
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    gen = torch.Generator().manual_seed(seed)
    thetas = [layout.flatten(ConvNet(2, 3, 8, width=4, depth=2).double()) for _ in range(2)]
    plans = [plan_steps(6, (2, 8, 8), 2, 4, DSAConfig(), gen, dtype=torch.float64) for _ in range(2)]
    reals = [(torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randint(3, (5,), generator=gen)) for _ in range(2)]
    return student, thetas, x, y, plans, reals


def test_dd_gradients_match_finite_differences():
    student, thetas, x, y, plans, reals = _problem()
    x = x.requires_grad_(True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dd_objective(student, thetas, a, y, b, plans, reals), (x, lr),
                                    eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_dd_objective_is_the_updated_networks_real_loss():
    """Written out by hand for one network and one step without augmentation."""
    student, thetas, x, y, _, reals = _problem(1)
    plan = plan_steps(6, (2, 8, 8), 1, 6, None, torch.Generator().manual_seed(0), dtype=torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64)
    theta = thetas[0].clone().requires_grad_(True)
    g = torch.autograd.grad(torch.nn.functional.cross_entropy(student(theta, x[plan[0].indices]), y[plan[0].indices]), theta)[0]
    want = torch.nn.functional.cross_entropy(student(theta.detach() - lr * g, reals[0][0]), reals[0][1])
    got = dd_objective(student, thetas[:1], x, y, lr, [plan], reals[:1])
    torch.testing.assert_close(got, want)
