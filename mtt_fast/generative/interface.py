"""The interface every generator follows: written out, with its checker, in :mod:`mtt_fast.synth.generator`.

Re-exported here, beside the generator family that implements it, so that
``from mtt_fast.generative.interface import check_generator, to_model_space`` keeps working.
The contract lives in ``synth/`` because the synthetic-set parameterization
(:mod:`mtt_fast.synth.latent`) needs it and must not import the trainer.
"""

from mtt_fast.synth.generator import (
    INT_ATTRS,
    METHODS,
    check_generator,
    describe,
    from_model_space,
    to_model_space,
)

__all__ = ["INT_ATTRS", "METHODS", "check_generator", "describe", "from_model_space", "to_model_space"]
