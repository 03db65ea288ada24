"""The generator family (GLaD's deep generative prior): networks, training, quality, loading.

    from mtt_fast.generative import Generator, GANConfig, train_gan, load_generator
    G, ref = load_generator("runs/gan_fm16", device="cpu")   # a `gan train` dir, TorchScript, or pkg.mod:factory
    w = G.mapping(z, labels); ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
    images = to_model_space(G.render(None, ws, -1), mean, std)

The interface every generator follows is in :mod:`mtt_fast.synth.generator` (re-exported as
:mod:`mtt_fast.generative.interface`).
"""

from mtt_fast.generative.load import load_generator
from mtt_fast.generative.networks import Discriminator, Generator
from mtt_fast.generative.quality import class_consistency
from mtt_fast.generative.train import GANConfig, GANTrainer, save_generator, train_gan
from mtt_fast.synth.generator import (
    check_generator,
    describe,
    from_model_space,
    to_model_space,
)

__all__ = [
    "Discriminator",
    "GANConfig",
    "GANTrainer",
    "Generator",
    "check_generator",
    "class_consistency",
    "describe",
    "from_model_space",
    "load_generator",
    "save_generator",
    "to_model_space",
    "train_gan",
]
