"""Distillation methods: what each one plugs into the one loop (:mod:`mtt_fast.distill.loop`).

A method says how the synthetic set is parameterized (:meth:`Method.make_param`: pixels, or a
generator's latents), how its learnable step size is optimized, and which objective
(:mod:`mtt_fast.distill.objectives`) gives the gradient. Methods that optimize nothing (the
random-real baseline) only pick their images.

=========  ===========================  =====================  ======================
method     parameterization             objective              optimizers (defaults)
=========  ===========================  =====================  ======================
mtt        pixels                       trajectory matching    SGD, lr_img 1000
glad       G(latents) (GLaD, sec. 3.3)  trajectory matching    SGD, lr_img 1000
dd         pixels                       unrolled cross-entropy Adam, lr_img 0.01
random     real images, kept as drawn   none                   -
herding    real images (coreset.py)     none                   -
kcenter    real images (coreset.py)     none                   -
=========  ===========================  =====================  ======================

``--soft-labels`` (:mod:`mtt_fast.distill.soft`): mtt and glad learn label logits (SGD, ``lr_y``,
momentum 0.9) initialised from the labelling expert's logits; mtt then starts from real images
that expert classifies correctly (DATM). random / herding / kcenter keep the expert's logits on
their images, unoptimized (the controls). dd refuses it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mtt_fast.distill.objectives import TrajectoryMatching, UnrolledCrossEntropy
from mtt_fast.distill.soft import correctly_classified_real
from mtt_fast.errors import UserError
from mtt_fast.synth import init_noise, init_real
from mtt_fast.synth.params import Parameterization, PixelParam


class Method:
    """Base class; one instance per run, built by the loop after its common set-up.

    Attributes:
        loop: the :class:`~mtt_fast.distill.loop.Distiller` (cfg, store, bundle, device, dsa).
    """

    name: ClassVar[str]
    #: ``lr_img`` / ``lr_lr`` when the config leaves them at None
    defaults: ClassVar[dict] = {"lr_img": 1000.0, "lr_lr": 1e-5}
    #: whether the method reads the experts' trajectories (checked by ``check_epochs``)
    uses_trajectories: ClassVar[bool] = True
    #: whether iterations optimize anything (False: the images are chosen once and saved)
    optimizes: ClassVar[bool] = True

    def __init__(self, loop) -> None:
        self.loop = loop
        self.objective = self.make_objective() if self.optimizes else None

    #: whether ``--soft-labels`` is supported
    soft_labels_ok: ClassVar[bool] = True

    @classmethod
    def validate(cls, cfg) -> None:
        """Cheap checks of the settings, before anything is written or loaded."""
        if cfg.soft_labels and not cls.soft_labels_ok:
            raise UserError(f"--soft-labels is not supported by --method {cls.name}")
        if cfg.soft_labels and cls.optimizes and cls.name != "glad" and cfg.pix_init != "real":
            raise UserError(f"--soft-labels starts from real images the expert classifies correctly: it needs "
                            f"--pix-init real (got {cfg.pix_init})")

    def make_objective(self):
        lp = self.loop
        return TrajectoryMatching(lp.store, lp.cfg, lp.device, lp.dsa)

    def reset(self) -> None:
        """Called before a fresh state is drawn (also before a resume restores one)."""

    def make_param(self, gen: torch.Generator) -> tuple[Parameterization, torch.Tensor]:
        """The synthetic set's parameterization and its labels (on the loop's device)."""
        return _pixels(self.loop, gen, optimizer="sgd")

    def lr_optimizer(self, syn_lr: torch.Tensor) -> torch.optim.Optimizer:
        cfg = self.loop.cfg
        return torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=cfg.momentum)

    def checkpoint_extra(self) -> dict:
        return {}

    def check_resume(self, info: dict) -> None:
        """Refuse a checkpoint that does not belong to this run's inputs."""

    def lr_hint(self) -> str:
        cfg = self.loop.cfg
        return f"lower --lr-img (now {cfg.lr_img:g}) or --lr-lr (now {cfg.lr_lr:g})"


def _pixels(loop, gen: torch.Generator, optimizer: str) -> tuple[PixelParam, torch.Tensor]:
    cfg, bundle = loop.cfg, loop.bundle
    if cfg.pix_init == "real" and cfg.soft_labels:  # DATM: images the labelling expert gets right
        expert = loop.expert_network()
        x, y = correctly_classified_real(bundle.split("train"), cfg.ipc, gen, expert.logits, log=loop.log)
    elif cfg.pix_init == "real":
        x, y = init_real(bundle.split("train"), cfg.ipc, gen)
    elif cfg.pix_init == "noise":
        x, y = init_noise(bundle.num_classes, cfg.ipc, (bundle.channels, bundle.res, bundle.res), gen)
    else:
        raise UserError(f"--pix-init {cfg.pix_init}: choose real or noise")
    labels = y.to(loop.device)
    if optimizer == "sgd":
        return PixelParam(x.to(loop.device), cfg.lr_img, cfg.momentum), labels
    return PixelParam(x.to(loop.device), cfg.lr_img, optimizer=optimizer), labels


class MTT(Method):
    """Matching training trajectories on pixels (Cazenavette et al. 2022)."""

    name = "mtt"


class DD(Method):
    """Wang et al.'s dataset distillation with a learnable step size (Adam on both, as their code)."""

    name = "dd"
    soft_labels_ok = False
    defaults: ClassVar[dict] = {"lr_img": 0.01, "lr_lr": 1e-4}
    uses_trajectories = False

    def make_objective(self):
        lp = self.loop
        return UnrolledCrossEntropy(lp.store, lp.cfg, lp.device, lp.dsa, lp.bundle.split("train"))

    def make_param(self, gen: torch.Generator):
        return _pixels(self.loop, gen, optimizer="adam")

    def lr_optimizer(self, syn_lr: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.Adam([syn_lr], lr=self.loop.cfg.lr_lr)


class RandomReal(Method):
    """The random-real baseline: ``ipc`` class-stratified random training images per class."""

    name = "random"
    uses_trajectories = False
    optimizes = False

    def make_param(self, gen: torch.Generator):
        x, y = init_real(self.loop.bundle.split("train"), self.loop.cfg.ipc, gen)
        return PixelParam(x, 0.0), y
