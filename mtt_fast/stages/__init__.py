"""One library entry point per command: the CLI, ``sweep`` and ``demo`` call only these.

Each ``run_*`` takes a typed config and a run directory and owns validation (before anything
is written), the method defaults, resume and completion (``mtt_fast/rundir.py``). Runtime
choices that do not change the result (``device``, ``progress``, ``log``) are keyword
arguments. Every default lives once, in its config dataclass.

    from mtt_fast.stages import BufferStage, DataOptions, run_buffer
    run_buffer(BufferStage(DataOptions("fashion-mnist", res=16)), "runs/buffer", log=print)
"""

from mtt_fast.stages.buffer import BufferStage, run_buffer
from mtt_fast.stages.common import DataOptions, dsa_dict, load_bundle, resolve_device
from mtt_fast.stages.distill import DistillStage, run_distill
from mtt_fast.stages.evaluate import EvalStage, run_eval
from mtt_fast.stages.gan import GanStage, run_gan
from mtt_fast.stages.report import run_report

__all__ = ["BufferStage", "DataOptions", "DistillStage", "EvalStage", "GanStage", "dsa_dict", "load_bundle",
           "resolve_device", "run_buffer", "run_distill", "run_eval", "run_gan", "run_report"]
