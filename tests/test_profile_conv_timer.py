"""benchmarks/profile_step.py's conv timer: it sees every convolution, ours and autograd's, and
charges each the FLOPs of its shapes (the conv rate it reports is FLOPs / timed seconds)."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import profile_step  # noqa: E402

from mtt_fast.ops.conv import conv2d  # noqa: E402


def _one():
    return 2 * 3 * 5 * 7 * 7 * 2 * 9  # one product: 2 * batch * Cout * H * W * Cin * 3 * 3 ("same" padding)


def test_forward_and_first_backward_are_counted():
    timer = profile_step._conv_timer()
    x = torch.randn(3, 2, 7, 7, requires_grad=True)
    w = torch.randn(5, 2, 3, 3, requires_grad=True)
    with timer() as mode:
        F.conv2d(x, w, padding=1).sum().backward()
    flops = [r[0] for r in mode.records]
    assert flops == [_one(), 2 * _one()]  # the forward; dX and dW in one convolution_backward
    assert all(r[1] == 2 and r[2] > 0 for r in mode.records)


def test_double_backward_of_ops_conv_is_counted_per_product():
    timer = profile_step._conv_timer()
    x = torch.randn(3, 2, 7, 7, requires_grad=True)
    w = torch.randn(5, 2, 3, 3, requires_grad=True)
    with timer() as mode:
        (gw,) = torch.autograd.grad(conv2d(x, w, padding=1).square().sum(), [w], create_graph=True)
        gw.square().sum().backward()
    # the forward; the first backward (dW only: x's gradient is not asked for); the double
    # backward: gy_bar = conv(x, ggw) and x_bar = dX(gy, ggw) (w_bar needs ggx, which is None);
    # then gy_bar flows back through square() into the forward conv: dX and dW in one call
    assert [r[0] for r in mode.records] == [_one(), _one(), _one(), _one(), 2 * _one()]
