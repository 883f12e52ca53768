"""The Agent contract every policy in the zoo follows (SB3 algorithms, CellTRIP, planners)."""

from ._agent import Agent

__all__ = ["Agent"]
