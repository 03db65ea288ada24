"""Synthetic-set parameterizations and the synset file format."""

from mtt_fast.synth.synset import Synset, init_noise, init_real, save_grid, to_pictures

__all__ = ["Synset", "init_noise", "init_real", "save_grid", "to_pictures"]
