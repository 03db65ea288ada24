"""Every engine split over ranks (gloo, 2 and 3 CPU processes) equals one process in float64.

Each rank owns a slice of the synthetic set, computes its share of every step and sums the
ranks' gradients (:mod:`mtt_fast.match.parallel`); the images' and soft labels' gradients are
summed over ranks as the distill loop does. Against the one-process ``full`` engine: 1e-10.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtt_fast.augment import DSAConfig
from mtt_fast.match import ENGINES, Student, plan_steps
from mtt_fast.match.parallel import RankShare
from mtt_fast.models import FlatParams, get_network


def _setup(soft: bool, aug_impl: str, n=7, res=8, classes=3, width=4, channels=2):
    torch.manual_seed(0)
    net = get_network("convnetd2", channels, classes, res, width=width).to(dtype=torch.float64)
    student = Student.of(net, aug_impl=aug_impl)
    start = FlatParams.of(net).flatten(net)
    g = torch.Generator().manual_seed(1)
    target = start + 0.05 * torch.randn(start.numel(), generator=g, dtype=torch.float64)
    x = torch.randn(n, channels, res, res, generator=g, dtype=torch.float64)
    y = torch.randn(n, classes, generator=g, dtype=torch.float64) if soft else torch.arange(n) % classes
    # 7 images in batches of 3 (chunks 3, 3, 1): some steps have no image of some rank
    plan = plan_steps(n, tuple(x.shape[1:]), 5, 3, DSAConfig(mode="S"), torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    return student, start, target, x, y, torch.tensor(0.03, dtype=torch.float64), plan


def _run(engine: str, soft: bool, aug_impl: str, kw: dict):
    student, start, target, x, y, lr, plan = _setup(soft, aug_impl)
    if dist.is_initialized():
        student.share = RankShare(dist.get_rank(), dist.get_world_size())
    r = ENGINES[engine](student, start, target, x, y, lr, plan, **kw)
    gx, gy = r.grad_images.clone(), None if r.grad_labels is None else r.grad_labels.clone()
    if dist.is_initialized():
        RankShare.sum(gx)
        if gy is not None:
            RankShare.sum(gy)
    return {"loss": r.loss, "x": gx, "lr": r.grad_lr, "y": gy, "theta": r.theta_end}


def _worker(rank: int, world: int, port: int, cases: list, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = [_run(*c) for c in cases]
        if rank == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [
    ("full", False, "reference", {}),
    ("adjoint", False, "reference", {}),
    ("adjoint", True, "auto", {}),          # soft labels, fused DSA where built
    ("auto", True, "reference", {"memory_budget": 1}),       # auto split as the adjoint
    ("auto", False, "auto", {"memory_budget": 10**12}),       # auto keeping every graph (= full)
    ("tesla", False, "reference", {}),
]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("world", [2, 3])
def test_engines_split_over_ranks_equal_one_process(tmp_path, world):
    path = str(tmp_path / "out.pt")
    mp.start_processes(_worker, args=(world, _free_port(), CASES, path), nprocs=world, start_method="fork")
    got = torch.load(path, weights_only=True)
    for (engine, soft, aug_impl, kw), g in zip(CASES, got):
        # the one-process reference: full for the exact engines, tesla for tesla
        want = _run("tesla" if engine == "tesla" else "full", soft, aug_impl, {})
        assert _rel(g["loss"], want["loss"]) < 1e-12, engine
        assert _rel(g["theta"], want["theta"]) < 1e-12, engine
        for k in ("x", "lr", "y"):
            if want[k] is not None:
                assert _rel(g[k], want[k]) < 1e-10, (engine, soft, k)
