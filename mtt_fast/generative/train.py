"""Training the class-conditional generator (``mtt-fast gan train``).

StyleGAN2-style recipe, shrunk for small images and CPUs:

* non-saturating logistic loss; lazy R1 penalty on (augmented) reals every ``r1_interval``
  steps, with the Adam lr / betas corrected for the lazy interval as in StyleGAN2;
* Adam (lr 0.002, betas (0, 0.99)) for G and D;
* an EMA generator ``G_ema`` with a half-life of ``ema_kimg`` thousand images, ramped up
  over the first images (``ema_rampup``), as StyleGAN2-ADA;
* class-balanced real batches (a class uniformly, then an image of it: medical sets are
  imbalanced) and uniformly drawn fake labels;
* augmentation of real AND fake images before D (independent draws for both, from one
  explicit ``torch.Generator``): by default ADA (:mod:`mtt_fast.generative.ada`: the DSA ops,
  each applied per image with a probability p tuned online so that E[sign(D(real))] stays
  near 0.6); ``augment="diffaug"`` is the recipe before ADA (DiffAugment: the ``aug`` DSA ops,
  default translation + cutout + color, always applied);
* style mixing (probability ``mixing_prob``, 0.9 by default) and a per-class average style
  ``w_avg`` for the truncation trick (``gan sample --truncation``).

Outputs in ``out``: ``generator.safetensors`` + ``generator.json`` (the EMA generator; with
``generator.w_avg.safetensors``), ``generator_best.*`` (the quality step with the lowest mean
kernel distance), a
resumable ``checkpoint.safetensors`` (+ ``checkpoint.json`` for people; the truth is the
safetensors metadata), ``samples_<step>.png``, ``metrics.jsonl`` and the quality
classifier. Only safetensors and JSON: nothing is unpickled.

Where the parts live: :mod:`~mtt_fast.generative.config` (``GANConfig``),
:mod:`~mtt_fast.generative.trainer` (``GANTrainer``: the step, quality, samples, resume),
:mod:`~mtt_fast.generative.recipe` (EMA, R1, balanced sampling),
:mod:`~mtt_fast.generative.checkpoint` (the checkpoint and generator files),
:mod:`~mtt_fast.generative.quality` (class consistency, kernel distance, diversity),
:mod:`~mtt_fast.generative.ada` (ADA), :mod:`~mtt_fast.generative.sample` (``gan sample``). This module keeps the entry point
:func:`train_gan` and re-exports the names it always had.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mtt_fast.generative.checkpoint import CHECKPOINT_FORMAT, GENERATOR_VERSION, save_generator
from mtt_fast.generative.config import DEFAULT_AUG, GANConfig
from mtt_fast.generative.recipe import (
    BalancedSampler,
    ema_beta,
    r1_penalty,
    render_labels,
    update_ema,
)
from mtt_fast.generative.trainer import GANTrainer

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_AUG",
    "GENERATOR_VERSION",
    "BalancedSampler",
    "GANConfig",
    "GANTrainer",
    "ema_beta",
    "r1_penalty",
    "render_labels",
    "save_generator",
    "train_gan",
    "update_ema",
]


def train_gan(bundle, out: str | Path, cfg: GANConfig, *, device: torch.device | str = "cpu", progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Train a class-conditional generator on ``bundle``'s training split into ``out``.

    Resumes from ``out/checkpoint.safetensors`` when present (the caller has checked that
    the run directory holds a run with the same settings). The work is done by
    :class:`~mtt_fast.generative.trainer.GANTrainer`.

    Args:
        bundle: the dataset (``mtt_fast.data.load_dataset``).
        out: the run directory.
        cfg: the settings.
        device: where to train.
        progress: show a progress bar.
        log: where one-line messages go.

    Returns:
        ``{"step", "quality": {...}, "classifier": {...}, "generator": path}``.

    Raises:
        UserError: a NaN / infinite loss (the last checkpoint is kept), bad settings.
    """
    return GANTrainer(bundle, out, cfg, device=device, progress=progress, log=log).run()
