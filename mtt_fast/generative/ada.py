"""Adaptive discriminator augmentation (ADA, Karras et al. 2020) built from the repo's DSA ops.

Why: with few real images the discriminator memorizes them within a few thousand steps and
the generator collapses. ADA augments every image D sees, real and fake alike (so the
augmentation does not leak into G), with a probability ``p`` that is tuned online from an
overfitting heuristic: ``r_t = E[sign(D(real))]`` (0: D cannot tell augmented reals from
fakes; 1: D is sure of every real, i.e. it overfits). Every ``interval`` steps

    p <- clip(p + sign(r_t - target) * batch_size * interval / (kimg * 1000), 0, 1)

so ``p`` can go from 0 to 1 in ``kimg`` thousand real images. Defaults as StyleGAN2-ADA:
target 0.6, interval 4, kimg 500, ``p`` starting at 0 (``r_t`` is the mean sign of all
real logits of the D steps since the last adjustment).

The augmentation (:func:`ada_params`): the DSA ops of :mod:`mtt_fast.augment` in mode "M",
in the order of :data:`ADA_STRATEGY` (geometric: flip, scale, rotate, integer translation;
colour; additive noise; cutout), with the DSA ratios. Each of the nine ops (flip, scale,
rotate, translate, brightness, saturation, contrast, noise, cutout) is applied to each image
independently with probability ``p``; an op not applied to an image gets its identity
parameters (no flip, unit scale, zero angle / shift / offset / noise, unit factors, a cutout
box outside the image). All of it is differentiable in the images (DSA's ``apply``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtt_fast.augment import AugParams, DSAConfig, sample_params

#: the DSA op groups ADA uses, in the order mode "M" applies them
ADA_STRATEGY = "flip_scale_rotate_crop_color_noise_cutout"
#: the ops masked independently (one column of the per-image mask each, in this order)
ADA_OPS = ("flip", "scale", "rotate", "translate", "brightness", "saturation", "contrast", "noise", "cutout")


def ada_dsa_config() -> DSAConfig:
    """The DSA settings ADA samples from (all groups in mode "M", the DSA default ratios)."""
    return DSAConfig(strategy=ADA_STRATEGY, mode="M")


def ada_params(p: float, shape: tuple[int, int, int, int], gen: torch.Generator,
               cfg: DSAConfig | None = None) -> AugParams:
    """Augmentation parameters of one batch, each op applied to each image with probability ``p``.

    Draw order (from ``gen``): the full DSA parameters of :func:`ada_dsa_config` (see
    :mod:`mtt_fast.augment.sampling`), then one ``rand(B, 9)`` whose columns, compared with
    ``p``, decide the ops of :data:`ADA_OPS`. The draws do not depend on ``p``, so a run's
    random stream is the same whatever ``p`` does.

    Args:
        p: the augmentation probability, in [0, 1].
        shape: ``(B, C, H, W)`` of the batch.
        gen: the only source of randomness (CPU).
        cfg: DSA settings (default :func:`ada_dsa_config`).

    Returns:
        CPU float32 parameters; with ``p == 1`` exactly those of ``sample_params``.
    """
    cfg = cfg or ada_dsa_config()
    full = sample_params(cfg, shape, gen)
    b, _, h, w = full.shape
    on = torch.rand(b, len(ADA_OPS), generator=gen) < p
    col = {name: on[:, i] for i, name in enumerate(ADA_OPS)}
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(b, 2, 3)
    v = full.tensors()
    out: dict[str, Tensor] = {}
    if "flip" in v:
        out["flip"] = v["flip"] & col["flip"]
    if "theta_scale" in v:
        out["theta_scale"] = torch.where(col["scale"].view(b, 1, 1), v["theta_scale"], eye)
    if "theta_rot" in v:
        out["theta_rot"] = torch.where(col["rotate"].view(b, 1, 1), v["theta_rot"], eye)
    if "crop_shift" in v:
        out["crop_shift"] = torch.where(col["translate"].view(b, 1), v["crop_shift"], 0)
    if "brightness" in v:
        m = lambda name: col[name].view(b, 1, 1, 1)
        out["brightness"] = torch.where(m("brightness"), v["brightness"], 0.0)
        out["saturation"] = torch.where(m("saturation"), v["saturation"], 1.0)
        out["contrast"] = torch.where(m("contrast"), v["contrast"], 1.0)
    if "noise" in v:
        out["noise"] = torch.where(col["noise"].view(b, 1, 1, 1), v["noise"], 0.0)
    if "cutout_center" in v:
        far = -(h + w + int(v["cutout_size"].max()) + 1)  # the whole box left of / above the image
        out["cutout_center"] = torch.where(col["cutout"].view(b, 1), v["cutout_center"], far)
        out["cutout_size"] = v["cutout_size"]
    return AugParams(ops=full.ops, shape=full.shape, **out)


class ADAController:
    """The augmentation probability ``p`` and the sign statistic it is tuned from.

    Args:
        batch_size: real images per step.
        target: the ``r_t`` that ``p`` is steered to (``--ada-target``).
        interval: steps between two adjustments (``--ada-interval``).
        kimg: thousands of real images for ``p`` to move by 1 (``--ada-kimg``).
        p: the starting probability.
    """

    def __init__(self, batch_size: int, target: float = 0.6, interval: int = 4, kimg: float = 500.0,
                 p: float = 0.0) -> None:
        self.batch_size, self.target, self.interval, self.kimg = int(batch_size), float(target), int(interval), \
            float(kimg)
        self.p = float(p)
        self.sign_sum, self.sign_count = 0.0, 0
        #: ``r_t`` of the last adjustment (NaN before the first)
        self.rt = float("nan")

    @property
    def step_size(self) -> float:
        """How much one adjustment moves ``p``: ``batch_size * interval / (kimg * 1000)``."""
        return self.batch_size * self.interval / (self.kimg * 1000.0)

    def accumulate(self, real_logits: Tensor) -> None:
        """Add the signs of one D step's real logits to the statistic."""
        s = torch.sign(real_logits.detach().float())
        self.add_signs(float(s.sum()), int(s.numel()))

    def add_signs(self, sign_sum: float, count: int) -> None:
        """Add ``count`` real logits whose signs sum to ``sign_sum`` (under torchrun: those of every
        rank's rows, summed over the ranks, so that every rank steers the same p)."""
        self.sign_sum += sign_sum
        self.sign_count += count

    def after_step(self, step: int) -> bool:
        """After step ``step`` (1-based): adjust ``p`` when ``step`` is a multiple of ``interval``.

        Returns:
            Whether ``p`` was adjusted (the statistic then restarts).
        """
        if step % self.interval != 0 or self.sign_count == 0:
            return False
        self.rt = self.sign_sum / self.sign_count
        adjust = math.copysign(self.step_size, self.rt - self.target) if self.rt != self.target else 0.0
        self.p = min(max(self.p + adjust, 0.0), 1.0)
        self.sign_sum, self.sign_count = 0.0, 0
        return True

    def state(self) -> dict:
        """JSON-able state (Python floats round-trip through JSON exactly), for the checkpoint."""
        return {"p": self.p, "sign_sum": self.sign_sum, "sign_count": self.sign_count, "rt": self.rt}

    def load_state(self, d: dict) -> None:
        """Restore :meth:`state`."""
        self.p, self.sign_sum = float(d["p"]), float(d["sign_sum"])
        self.sign_count, self.rt = int(d["sign_count"]), float(d["rt"])
