"""Matching engines: unroll student steps on synthetic data and match an expert trajectory."""

from mtt_fast.match.adjoint import match_adjoint, match_tesla
from mtt_fast.match.auto import default_memory_budget, match_auto, parse_memory_size
from mtt_fast.match.full import match_full
from mtt_fast.match.loss import MatchResult, masked_trajectory_loss, trajectory_loss
from mtt_fast.match.plan import StepPlan, plan_steps
from mtt_fast.match.student import Student

#: Matching engines by name. Every engine is called as
#: ``engine(student, theta_start, theta_target, images, labels, syn_lr, plan, *, loss_mask=None, **kw)``
#: (labels: int64 ``[n]`` hard classes or floating ``[n, K]`` soft-label logits) and returns a
#: MatchResult (``grad_labels`` set for soft labels; ``info`` what the engine wants logged).
ENGINES = {"auto": match_auto, "adjoint": match_adjoint, "full": match_full, "tesla": match_tesla}
#: Engines whose gradients are exact (equal to autograd through the unroll).
EXACT_ENGINES = ("auto", "adjoint", "full")

__all__ = ["ENGINES", "EXACT_ENGINES", "MatchResult", "StepPlan", "Student", "default_memory_budget", "match_adjoint",
           "match_auto", "match_full", "match_tesla", "masked_trajectory_loss", "parse_memory_size", "plan_steps",
           "trajectory_loss"]
