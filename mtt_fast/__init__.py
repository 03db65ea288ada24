"""mtt-fast: dataset distillation by Matching Training Trajectories with a generative prior."""

from mtt_fast.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
