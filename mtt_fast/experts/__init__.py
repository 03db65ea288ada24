"""Expert training and the trajectory store."""

from mtt_fast.experts.store import TrajectoryStore
from mtt_fast.experts.train import ExpertConfig, seeded_network, train_experts

__all__ = ["ExpertConfig", "TrajectoryStore", "seeded_network", "train_experts"]
