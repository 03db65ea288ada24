"""Matching engines: unroll student steps on synthetic data and match an expert trajectory."""

from mtt_fast.match.full import match_full
from mtt_fast.match.loss import MatchResult, trajectory_loss
from mtt_fast.match.plan import StepPlan, plan_steps
from mtt_fast.match.student import Student

ENGINES = {"full": match_full}

__all__ = ["ENGINES", "MatchResult", "StepPlan", "Student", "match_full", "plan_steps", "trajectory_loss"]
