"""Matching engines: unroll student steps on synthetic data and match an expert trajectory."""

from mtt_fast.match.adjoint import match_adjoint, match_tesla
from mtt_fast.match.full import match_full
from mtt_fast.match.loss import MatchResult, trajectory_loss
from mtt_fast.match.plan import StepPlan, plan_steps
from mtt_fast.match.student import Student

#: Matching engines by name; all take the same arguments and return a MatchResult.
ENGINES = {"adjoint": match_adjoint, "full": match_full, "tesla": match_tesla}
#: Engines whose gradients are exact (equal to autograd through the unroll).
EXACT_ENGINES = ("adjoint", "full")

__all__ = ["ENGINES", "EXACT_ENGINES", "MatchResult", "StepPlan", "Student", "match_adjoint", "match_full", "match_tesla",
           "plan_steps", "trajectory_loss"]
