"""Settings of ``gan train``: :class:`GANConfig` (every default lives here; the CLI shows them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.generative.networks import Discriminator, Generator

#: DiffAugment's policy (translation, cutout, color) in the repo's DSA vocabulary.
DEFAULT_AUG = "color_crop_cutout"
#: what ``--augment`` may say: ADA (adaptive p), DiffAugment (every op of ``aug`` always), or nothing
AUGMENTS = ("ada", "diffaug", "none")
#: how the best generator is chosen (``generator_best.*``): the lowest mean kernel distance
BEST_RULE = "lowest mean kid over the quality steps (the earlier step on a tie)"


def legacy_defaults() -> dict:
    """The settings a run directory written before a setting existed used: the current defaults,
    except ``augment`` (runs made before ADA used DiffAugment). ``rundir`` accepts a missing
    setting only when the new value equals this."""
    from dataclasses import asdict

    return {**asdict(GANConfig()), "augment": "diffaug"}


@dataclass
class GANConfig:
    """Settings of ``gan train`` (defaults suit 16-64 px on a CPU or a small GPU).

    The augmentation before D: ``augment`` ``"ada"`` (the ops of
    :mod:`mtt_fast.generative.ada`, each with the adaptive probability p steered so that
    E[sign(D(real))] stays near ``ada_target``, adjusted every ``ada_interval`` steps by
    ``batch_size * ada_interval / (ada_kimg * 1000)``), ``"diffaug"`` (the DSA ops of ``aug``
    in ``aug_mode``, always; the recipe before ADA) or ``"none"``. ``mixing_prob`` is the
    style-mixing probability (two w's of the same class, crossover at a uniform block);
    ``quality_truncation`` draws the quality images with the truncation trick (1: off).
    """

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
    mixing_prob: float = 0.9
    augment: str = "ada"
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    aug: str = DEFAULT_AUG
    aug_mode: str = "M"
    dsa_impl: str = "auto"
    max_train_per_class: int | None = None
    sample_every: int = 500
    checkpoint_every: int = 500
    quality_every: int = 500
    quality_samples: int = 100
    quality_truncation: float = 1.0
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
            raise UserError(f"--style-mixing must be in [0, 1] (got {self.mixing_prob})")
        if self.augment not in AUGMENTS:
            raise UserError(f"--augment must be one of {', '.join(AUGMENTS)} (got {self.augment!r})")
        if not 0 < self.ada_target < 1:
            raise UserError(f"--ada-target must be in (0, 1) (got {self.ada_target})")
        if int(self.ada_interval) < 1:
            raise UserError(f"--ada-interval must be at least 1 (got {self.ada_interval})")
        if not (self.ada_kimg > 0 and math.isfinite(self.ada_kimg)):
            raise UserError(f"--ada-kimg must be positive (got {self.ada_kimg})")
        if not (0 <= self.quality_truncation <= 1):
            raise UserError(f"--quality-truncation must be in [0, 1] (got {self.quality_truncation})")
        DSAConfig(strategy=self.aug, mode=self.aug_mode)

    def generator(self, bundle) -> Generator:
        return Generator(bundle.num_classes, bundle.channels, bundle.res, z_dim=self.z_dim, w_dim=self.w_dim,
                         channel_base=self.channel_base, channel_max=self.channel_max,
                         mapping_layers=self.mapping_layers)

    def discriminator(self, bundle) -> Discriminator:
        return Discriminator(bundle.num_classes, bundle.channels, bundle.res, channel_base=self.channel_base,
                             channel_max=self.channel_max)
