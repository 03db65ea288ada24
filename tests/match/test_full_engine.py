import torch

from mtt_fast.augment import DSAConfig
from mtt_fast.match import Student, match_full, plan_steps
from mtt_fast.models import FlatParams, get_network
from mtt_fast.ops.reference import trajectory_loss_ref


def _setup(dtype=torch.float64, n=6, res=8, classes=3):
    torch.manual_seed(0)
    net = get_network("convnetd1", 1, classes, res, width=4).to(dtype)
    student = Student.of(net, aug_impl="reference")
    P = student.layout.size
    start = FlatParams.of(net).flatten(net)
    target = start + 0.05 * torch.randn(P, dtype=dtype)
    x = torch.randn(n, 1, res, res, dtype=dtype)
    y = torch.arange(n) % classes
    return student, start, target, x, y


def _unrolled_loss(student, start, target, x, y, lr, plan):
    theta = start
    for step in plan:
        (g,) = torch.autograd.grad(student.step_loss(theta, x, y, step), theta, create_graph=True)
        theta = theta - lr * g
    return trajectory_loss_ref(theta, target, start)


def test_plan_is_deterministic_and_covers_the_set():
    dsa = DSAConfig()
    a = plan_steps(10, (1, 8, 8), 5, 4, dsa, torch.Generator().manual_seed(3))
    b = plan_steps(10, (1, 8, 8), 5, 4, dsa, torch.Generator().manual_seed(3))
    assert all(torch.equal(p.indices, q.indices) and p.aug.equal(q.aug) for p, q in zip(a, b))
    # the first ceil(10/4) = 3 steps are the chunks of one permutation
    assert sorted(torch.cat([p.indices for p in a[:3]]).tolist()) == list(range(10))


def test_full_engine_gradients_match_gradcheck_of_the_unroll():
    student, start, target, x, y = _setup()
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = plan_steps(len(y), (1, 8, 8), 3, 4, DSAConfig(mode="M"), torch.Generator().manual_seed(1),
                      dtype=torch.float64)
    res = match_full(student, start, target, x, y, lr, plan)

    xr, lrr = x.clone().requires_grad_(True), lr.clone().requires_grad_(True)
    st = start.clone().requires_grad_(True)
    ref = _unrolled_loss(student, st, target, xr, y, lrr, plan)
    gx, glr = torch.autograd.grad(ref, (xr, lrr))
    assert torch.allclose(res.loss, ref.detach(), rtol=1e-12)
    assert torch.allclose(res.grad_images, gx, rtol=1e-10, atol=1e-14)
    assert torch.allclose(res.grad_lr, glr, rtol=1e-10)
    assert res.grad_images.abs().sum() > 0 and glr.abs() > 0


def test_unrolled_loss_passes_gradcheck_in_float64():
    student, start, target, x, y = _setup(n=3, res=6)
    plan = plan_steps(3, (1, 6, 6), 2, 3, DSAConfig(strategy="color_flip_scale"), torch.Generator().manual_seed(2),
                      dtype=torch.float64)

    def f(images, lr):
        st = start.clone().requires_grad_(True)
        return _unrolled_loss(student, st, target, images, y, lr, plan)

    assert torch.autograd.gradcheck(
        f, (x.clone().requires_grad_(True), torch.tensor(0.05, dtype=torch.float64, requires_grad=True)),
        eps=1e-6, atol=1e-6, rtol=1e-4)
