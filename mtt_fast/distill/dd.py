"""DD: Dataset Distillation (Wang et al. 2018), the paper's Algorithm 2 and its "DD" column.

Each iteration samples ``dd_models`` fresh initializations ``theta_0 ~ p(theta_0)`` of the
store's architecture (the experts' own initializer, seeded from the run's generator), takes
``syn_steps`` gradient steps with the learnable step size ``eta`` on (DSA-augmented)
synthetic batches, and measures the cross-entropy of each updated network on a fresh
minibatch of ``batch_real`` real training images. The summed loss is differentiated through
the unrolled steps (full autograd: DD's unroll is short) w.r.t. the pixels and ``eta``.

Optimizers: Adam on the pixels (``lr_img``) and on ``eta`` (``lr_lr``), as in Wang et al.'s
code; the MTT defaults (SGD, lr_img 1000) do not apply, so the CLI's DD defaults are
lr_img 0.01 and lr_lr 1e-4. The loop, evaluation on the validation split, checkpoints and
resume are MTT's (:class:`mtt_fast.distill.mtt.MTTDistiller`).
"""

from __future__ import annotations

import math
import time

import torch
from torch.nn import functional as F

from mtt_fast.distill.mtt import MTTDistiller
from mtt_fast.errors import UserError
from mtt_fast.experts.train import seeded_network
from mtt_fast.match import plan_steps
from mtt_fast.memory import peak_memory
from mtt_fast.models import FlatParams
from mtt_fast.synth.params import Parameterization, PixelParam

#: CLI defaults for --method dd (Adam learning rates; see the module docstring)
DD_DEFAULTS = {"lr_img": 0.01, "lr_lr": 1e-4}


def dd_objective(student, thetas: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                 plans: list, reals: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The DD loss, differentiable w.r.t. ``images`` and ``lr``.

    Args:
        student: the architecture as a function of flat parameters.
        thetas: initial parameters ``[P]``, one per sampled network.
        images, labels: the synthetic set ``[n, C, H, W]``, ``[n]``.
        lr: the learnable step size (0-dim).
        plans: per network, the ``StepPlan`` list of its unrolled steps.
        reals: per network, the real minibatch ``(x, y)`` it is scored on.

    Returns:
        mean over networks of ``CE(f(theta_N; x_real), y_real)`` with
        ``theta_{i+1} = theta_i - lr * grad CE(f(theta_i; aug(x_syn)), y_syn)``.
    """
    total = images.new_zeros(())
    for theta, plan, (xr, yr) in zip(thetas, plans, reals):
        th = theta.detach().requires_grad_(True)
        for step in plan:
            g = torch.autograd.grad(student.step_loss(th, images, labels, step), th, create_graph=True)[0]
            th = th - lr * g
        total = total + F.cross_entropy(student(th, xr), yr)
    return total / len(thetas)


class DDDistiller(MTTDistiller):
    """Wang et al.'s dataset distillation with a learnable step size, through the MTT loop."""

    uses_trajectories = False

    def __init__(self, store, bundle, cfg, out, **kwargs):
        super().__init__(store, bundle, cfg, out, **kwargs)
        if cfg.dd_models < 1 or cfg.batch_real < 1:
            raise UserError("--dd-models and --batch-real must be at least 1")
        self.train_split = bundle.split("train")
        self.layout = FlatParams.of(self.student.module)

    def _make_param(self) -> Parameterization:
        param = super()._make_param()
        return PixelParam(param.images(), self.cfg.lr_img, optimizer="adam")

    def _fresh_state(self) -> None:
        super()._fresh_state()
        self.opt_lr = torch.optim.Adam([self.syn_lr], lr=self.cfg.lr_lr)

    def _initial_theta(self, seed: int) -> torch.Tensor:
        s = self.store.meta
        net = seeded_network(self.store.arch, self.bundle.channels, self.bundle.num_classes, self.bundle.res,
                             width=s["width"], depth=s["depth"], seed=seed)
        return self.layout.flatten(net).to(self.device)

    def step(self) -> dict:
        """One DD iteration; returns its metrics line."""
        cfg, t0 = self.cfg, time.perf_counter()
        images = self.param.images()
        x = images.detach().requires_grad_(True)
        lr = self.syn_lr.detach().requires_grad_(True)
        n = len(self.labels)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        thetas, plans, reals = [], [], []
        for _ in range(cfg.dd_models):
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
            thetas.append(self._initial_theta(seed))
            aug_device = "cpu" if self._fused_aug(images) else self.device
            plans.append(plan_steps(n, tuple(images.shape[1:]), cfg.syn_steps, cfg.batch_syn or n, self.dsa, self.gen,
                                    device=self.device, dtype=images.dtype, aug_device=aug_device))
            idx = torch.randint(len(self.train_split), (cfg.batch_real,), generator=self.gen)
            reals.append((self.train_split.get(idx).to(self.device), self.train_split.labels[idx].to(self.device)))
        loss = dd_objective(self.student, thetas, x, self.labels, lr, plans, reals)
        gx, glr = torch.autograd.grad(loss, [x, lr])
        value = float(loss.detach())
        if not math.isfinite(value) or not torch.isfinite(gx).all() or not math.isfinite(float(glr)):
            raise self._diverged(f"the DD loss became {value} at iteration {self.iteration}")
        self.param.backward(gx)
        self.syn_lr.grad = glr.reshape(()).to(self.syn_lr.dtype)
        self.param.step()
        self.opt_lr.step()
        self.syn_lr.grad = None
        if not self.param.all_finite() or not math.isfinite(self.syn_lr.item()):
            raise self._diverged(f"the synthetic set or the step size became NaN/inf at iteration {self.iteration}")
        rec = {"iteration": self.iteration, "loss": value, "syn_lr": float(self.syn_lr.item()),
               "seconds": time.perf_counter() - t0}
        rec.update(peak_memory(self.device))
        return rec

    def _fused_aug(self, images: torch.Tensor) -> bool:
        from mtt_fast.augment import uses_fused

        return uses_fused(images, self.student.aug_impl)
