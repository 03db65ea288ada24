"""mtt_fast.ops.conv.conv2d: the same values, gradients and second derivatives as F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtt_fast.ops.conv import conv2d

CASES = [  # (batch, cin, cout, size, kernel, stride, padding, bias)
    (3, 1, 4, 7, 3, 1, 1, True),
    (2, 3, 5, 6, 3, 1, 0, False),
    (2, 4, 3, 8, 3, 2, 1, True),
    (2, 2, 3, 5, 1, 1, 0, True),
]


def _tensors(case, dtype=torch.float64, seed=0):
    b, cin, cout, n, k, _, _, bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, n, n, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(cout, cin, k, k, generator=g, dtype=dtype) / k).requires_grad_()
    bb = torch.randn(cout, generator=g, dtype=dtype).requires_grad_() if bias else None
    return x, w, bb


def _second_order(f, x, w, b, case, seed=1):
    """A trajectory-matching-like quantity: the gradient (create_graph) of a nonlinear loss, a
    linear functional of it, differentiated again w.r.t. everything."""
    stride, pad = case[5], case[6]
    y = f(x, w, b, stride=stride, padding=pad)
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(y.shape, generator=g, dtype=y.dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad((y.square() * r).sum(), inputs, create_graph=True)
    out = sum((gr * torch.randn(gr.shape, generator=g, dtype=gr.dtype)).sum() for gr in grads)
    return torch.autograd.grad(out, inputs)


@pytest.mark.parametrize("case", CASES)
def test_second_derivatives_equal_autograd_in_float64(case):
    x, w, b = _tensors(case)
    ours = _second_order(conv2d, x, w, b, case)
    ref = _second_order(F.conv2d, x, w, b, case)
    for o, r in zip(ours, ref, strict=True):
        assert torch.allclose(o, r, rtol=1e-12, atol=1e-12), (o - r).abs().max()


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(case):
    x, w, b = _tensors(case)
    fn = lambda x, w, *b: conv2d(x, w, b[0] if b else None, stride=case[5], padding=case[6])
    args = (x, w) + ((b,) if b is not None else ())
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_float32_values_and_first_gradients_keep_autograds_bits():
    """The forward is F.conv2d and the first backward the same convolution_backward call autograd
    makes: expert training (first order only) gives the same bits with either."""
    case = (4, 3, 8, 10, 3, 1, 1, True)
    x, w, b = _tensors(case, dtype=torch.float32)
    y, yr = conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)
    assert torch.equal(y, yr)  # the forward is F.conv2d itself
    gy = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, w, b), gy)
    ref = torch.autograd.grad(yr, (x, w, b), gy)
    for o, r in zip(ours, ref, strict=True):
        assert torch.equal(o, r)


def test_partial_second_order_graphs():
    """Only the weight's gradient differentiated (what the student step does: the images come
    through DSA and need no first-order gradient), w.r.t. the input alone."""
    case = CASES[0]
    for f in (conv2d, F.conv2d):
        x, w, b = _tensors(case)
        y = f(x, w, b, padding=1)
        (gw,) = torch.autograd.grad(y.square().sum(), (w,), create_graph=True)
        (gx,) = torch.autograd.grad((gw * gw.detach()).sum(), (x,))
        if f is conv2d:
            ours = gx
    assert torch.allclose(ours, gx, rtol=1e-12, atol=1e-12)


def test_third_derivative_equals_autograd():
    """Not needed by trajectory matching, but never silently wrong."""
    res = []
    for f in (conv2d, F.conv2d):
        x, w, b = _tensors(CASES[0])
        y = f(x, w, b, padding=1)
        (gw,) = torch.autograd.grad(y.square().sum(), (w,), create_graph=True)
        (gx,) = torch.autograd.grad(gw.square().sum(), (x,), create_graph=True)
        res.append(torch.autograd.grad(gx.sum(), (x, w)))
    for o, r in zip(*res, strict=True):
        assert r.abs().max() > 0 and torch.allclose(o, r, rtol=1e-10, atol=1e-10)


def test_rejects_what_it_does_not_implement():
    with pytest.raises(ValueError, match="numeric padding"):
        conv2d(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3), padding="same")


def test_gradients_the_pass_does_not_use_are_not_computed(monkeypatch):
    """The student step asks only for the parameters' gradient: the first layer's input gradient
    (the images') is not computed, as autograd's own convolution node does not compute it."""
    import mtt_fast.ops.conv as conv_mod

    masks = []
    real = conv_mod._backward

    def spy(gy, x, w, stride, padding, dilation, mask, bias=False):
        masks.append(list(mask))
        return real(gy, x, w, stride, padding, dilation, mask, bias)

    monkeypatch.setattr(conv_mod, "_backward", spy)
    x, w, b = _tensors(CASES[0])
    y = conv2d(x, w, b, padding=1)
    torch.autograd.grad(y.square().sum(), (w, b), create_graph=True)
    assert masks == [[False, True, True]]
    masks.clear()
    y = conv2d(x, w, b, padding=1)
    torch.autograd.grad(y.square().sum(), (x, w, b))
    assert masks == [[True, True, True]]
