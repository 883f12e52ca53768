"""Scoring inverse design: planners propose ranked perturbation sets; the true one's rank is the score."""

from ._score import (
    PLANNERS,
    DesignScore,
    candidate_sets,
    design_benchmark,
    rank_agent,
    rank_exhaustive,
    rank_greedy,
    rank_random,
    score_proposals,
    world_distances,
)

__all__ = [
    "PLANNERS",
    "DesignScore",
    "candidate_sets",
    "design_benchmark",
    "rank_agent",
    "rank_exhaustive",
    "rank_greedy",
    "rank_random",
    "score_proposals",
    "world_distances",
]
