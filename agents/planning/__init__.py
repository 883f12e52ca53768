"""Non-learning baselines every RL result is reported next to: random, greedy one-step search, exact BFS."""

from ._agents import BFSAgent, EpisodeStats, GreedyAgent, RandomAgent, evaluate

__all__ = ["BFSAgent", "EpisodeStats", "GreedyAgent", "RandomAgent", "evaluate"]
