"""Settings of ``gan train``: :class:`GANConfig` (every default lives here; the CLI shows them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.generative.networks import Discriminator, Generator

#: DiffAugment's policy (translation, cutout, color) in the repo's DSA vocabulary.
DEFAULT_AUG = "color_crop_cutout"


@dataclass
class GANConfig:
    """Settings of ``gan train`` (defaults suit 16-64 px on a CPU or a small GPU)."""

    steps: int = 2500
    batch_size: int = 32
    z_dim: int = 64
    w_dim: int = 128
    channel_base: int = 512
    channel_max: int = 64
    mapping_layers: int = 2
    lr: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 0.1
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    mixing_prob: float = 0.0
    aug: str = DEFAULT_AUG
    aug_mode: str = "M"
    dsa_impl: str = "auto"
    max_train_per_class: int | None = None
    sample_every: int = 500
    checkpoint_every: int = 500
    quality_every: int = 500
    quality_samples: int = 100
    log_every: int = 50
    classifier_store: str | None = None
    classifier_epochs: int = 2
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "z_dim", "w_dim", "channel_base", "channel_max", "mapping_layers",
                     "r1_interval", "sample_every", "checkpoint_every", "quality_every", "quality_samples",
                     "log_every"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2 (got {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be positive (got {self.lr})")
        if self.r1_gamma < 0 or self.ema_kimg < 0:
            raise UserError("--r1-gamma and --ema-kimg must be >= 0")
        if not 0 <= self.mixing_prob <= 1:
            raise UserError(f"--mixing-prob must be in [0, 1] (got {self.mixing_prob})")
        DSAConfig(strategy=self.aug, mode=self.aug_mode)

    def generator(self, bundle) -> Generator:
        return Generator(bundle.num_classes, bundle.channels, bundle.res, z_dim=self.z_dim, w_dim=self.w_dim,
                         channel_base=self.channel_base, channel_max=self.channel_max,
                         mapping_layers=self.mapping_layers)

    def discriminator(self, bundle) -> Discriminator:
        return Discriminator(bundle.num_classes, bundle.channels, bundle.res, channel_base=self.channel_base,
                             channel_max=self.channel_max)
