"""Reward models: how far B populations of cells are from a goal (``distance -> (B,)``, 0 at the goal)."""

from ._rewards import CentroidReward, ClassifierReward, EnergyDistanceReward
from ._uncertainty import UncertaintyPenalisedReward

__all__ = ["CentroidReward", "ClassifierReward", "EnergyDistanceReward", "UncertaintyPenalisedReward"]
