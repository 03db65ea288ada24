"""What a distillation iteration minimizes, and its gradient w.r.t. the synthetic images.

An objective is called once per iteration with the current images, labels and step size, and
draws its own randomness (expert, start epoch, batches, augmentations; DD's initializations and
real minibatch) from the run's generator, in a fixed order, so a resumed run replays exactly.
It returns an :class:`ObjectiveResult` (the loss, its gradients w.r.t. the images, syn_lr and,
for soft labels, the label logits; extra metrics).

* :class:`TrajectoryMatching`: MTT's normalized distance between the student after N steps and
  the expert M epochs later, through a matching engine (``mtt_fast/match``): mtt and glad.
* :class:`UnrolledCrossEntropy`: Wang et al.'s DD: the cross-entropy of freshly initialized
  networks on real images after N steps on the synthetic set (full autograd; short unrolls).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from mtt_fast.augment import uses_fused
from mtt_fast.distill.options import StartSchedule, layer_mask
from mtt_fast.errors import UserError
from mtt_fast.match.parallel import RankShare
from mtt_fast.match import ENGINES, Student, plan_steps
from mtt_fast.models import FlatParams, seeded_network


@dataclass
class ObjectiveResult:
    """One iteration's loss and gradients.

    Attributes:
        loss: 0-dim (the normalized matching loss for trajectory matching).
        grad_images: ``[n, C, H, W]``.
        grad_lr: 0-dim, d loss / d syn_lr.
        grad_labels: ``[n, K]`` d loss / d soft-label logits when the labels are soft, else None.
        extra: metrics for the iteration's line in ``metrics.jsonl``.
    """

    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    grad_labels: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def build_student(store, cfg, device: torch.device) -> Student:
    """The store's architecture as a function of flat parameters, with the run's op choices."""
    if cfg.block_impl == "fused":
        from mtt_fast.ops import block as fused_block

        if not fused_block.fused_available(device, torch.float32):
            raise UserError(f"--block-impl fused: {fused_block.unavailable_reason(device, torch.float32)}")
    student = Student.of(store.build_network(block_impl=cfg.block_impl).to(device), aug_impl=cfg.dsa_impl)
    student.share = RankShare.current()  # under torchrun: this rank's part of every step
    return student


def _takes(fn, name: str) -> bool:
    """Whether the callable ``fn`` (maybe a ``functools.partial``) accepts the keyword ``name``."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _cuda_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class TrajectoryMatching:
    """MTT's objective (the paper's eq. 2) through one of ``ENGINES``."""

    loss_name = "matching loss"

    def __init__(self, store, cfg, device: torch.device, dsa) -> None:
        t = cfg.trajectory
        if t.engine not in ENGINES:
            raise UserError(f"--engine {t.engine}: available engines are {', '.join(ENGINES)}")
        self.schedule = StartSchedule.parse(t.start_epoch_schedule) if t.start_epoch_schedule else None
        store.check_epochs(t.expert_epochs, self.schedule.hi if self.schedule else t.max_start_epoch)
        self.engine = ENGINES[t.engine]
        engine_kw: dict = {}
        if t.offload_history:
            if t.engine == "full":
                raise UserError("--offload-history needs --engine adjoint or tesla (full keeps no history)")
            engine_kw["offload"] = True
        if t.memory_budget is not None:
            if t.engine != "auto":
                raise UserError(f"--memory-budget is for --engine auto (got --engine {t.engine})")
            engine_kw["memory_budget"] = int(t.memory_budget)
        if engine_kw:
            self.engine = functools.partial(self.engine, **engine_kw)
        self.store, self.cfg, self.device, self.dsa = store, cfg, device, dsa
        self.student = build_student(store, cfg, device)
        self.loss_mask = layer_mask(self.student.layout, t.match_layers, device)
        if cfg.soft_labels and not _takes(self.engine, "loss_mask"):  # the engines of issue 18's contract take both
            raise UserError(f"--soft-labels: the matching engine {t.engine} cannot differentiate w.r.t. soft labels "
                            f"in this build (it predates issue 18's engine contract)")
        if self.loss_mask is not None and not _takes(self.engine, "loss_mask"):
            raise UserError(f"--match-layers {t.match_layers}: the matching engine {t.engine} cannot restrict the "
                            f"loss to some layers in this build (only --match-layers all)")

    def upper_start_epoch(self, iteration: int) -> int:
        """T+ at ``iteration``: fixed, or DATM's growing bound (``--start-epoch-schedule``)."""
        return self.schedule.upper(iteration) if self.schedule else self.cfg.trajectory.max_start_epoch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, gen: torch.Generator,
                 iteration: int = 0) -> ObjectiveResult:
        cfg, t = self.cfg, self.cfg.trajectory
        k = int(torch.randint(self.store.num_experts, (1,), generator=gen))
        upper = self.upper_start_epoch(iteration)
        start_epoch = int(torch.randint(upper, (1,), generator=gen))
        start, target = (s.to(self.device) for s in self.store.snapshots(k, [start_epoch, start_epoch + t.expert_epochs]))
        n = len(labels)
        aug_device = "cpu" if uses_fused(images, self.student.aug_impl) else self.device
        plan = plan_steps(n, tuple(images.shape[1:]), cfg.syn_steps, cfg.batch_syn or n, self.dsa, gen,
                          device=self.device, dtype=images.dtype, aug_device=aug_device)
        _cuda_reset(self.device)
        kw = {} if self.loss_mask is None else {"loss_mask": self.loss_mask}
        res = self.engine(self.student, start, target, images, labels, syn_lr, plan, **kw)
        grad_labels = None
        if labels.is_floating_point():
            grad_labels = getattr(res, "grad_labels", None)
            if grad_labels is None:
                raise UserError(f"--soft-labels: the matching engine {t.engine} returns no gradient for the labels "
                                f"(this build's engines support hard labels only)")
        extra = {"expert": k, "start_epoch": start_epoch}
        if self.schedule is not None:
            extra["upper_start_epoch"] = upper
        info = getattr(res, "info", None)
        if info:
            extra["engine_info"] = {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str, type(None)))}
        return ObjectiveResult(res.loss, res.grad_images, res.grad_lr, grad_labels, extra)


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
            g = student.step_grad(th, images, labels, step, create_graph=True)
            th = th - lr * g
        total = total + F.cross_entropy(student(th, xr), yr)
    return total / len(thetas)


class UnrolledCrossEntropy:
    """DD (Wang et al. 2018, the paper's Algorithm 2): ``dd_models`` fresh initializations of the
    store's architecture (the experts' own initializer, seeded from the run's generator) take
    ``syn_steps`` steps on the synthetic set and are scored on ``batch_real`` real images."""

    loss_name = "DD loss"

    def __init__(self, store, cfg, device: torch.device, dsa, train_split) -> None:
        if cfg.dd.dd_models < 1 or cfg.dd.batch_real < 1:
            raise UserError("--dd-models and --batch-real must be at least 1")
        self.store, self.cfg, self.device, self.dsa, self.train_split = store, cfg, device, dsa, train_split
        self.student = build_student(store, cfg, device)
        self.layout = FlatParams.of(self.student.module)

    def _initial_theta(self, seed: int, channels: int, num_classes: int, res: int) -> torch.Tensor:
        s = self.store.meta
        net = seeded_network(self.store.arch, channels, num_classes, res, width=s["width"], depth=s["depth"], seed=seed)
        return self.layout.flatten(net).to(self.device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, gen: torch.Generator,
                 iteration: int = 0) -> ObjectiveResult:
        cfg = self.cfg
        x = images.detach().requires_grad_(True)
        lr = syn_lr.detach().requires_grad_(True)
        n = len(labels)
        _cuda_reset(self.device)
        thetas, plans, reals = [], [], []
        num_classes = len(self.train_split.classes)
        for _ in range(cfg.dd.dd_models):
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            thetas.append(self._initial_theta(seed, images.shape[1], num_classes, images.shape[-1]))
            aug_device = "cpu" if uses_fused(images, self.student.aug_impl) else self.device
            plans.append(plan_steps(n, tuple(images.shape[1:]), cfg.syn_steps, cfg.batch_syn or n, self.dsa, gen,
                                    device=self.device, dtype=images.dtype, aug_device=aug_device))
            idx = torch.randint(len(self.train_split), (cfg.dd.batch_real,), generator=gen)
            reals.append((self.train_split.get(idx).to(self.device), self.train_split.labels[idx].to(self.device)))
        loss = dd_objective(self.student, thetas, x, labels, lr, plans, reals)
        gx, glr = torch.autograd.grad(loss, [x, lr])
        return ObjectiveResult(loss.detach(), gx, glr)
