"""Planning baselines for the reprogramming envs: they look through the env's batched transition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from cellgym.agents.base import Agent
from cellgym.predictors.base import CellgymError

if TYPE_CHECKING:
    import gymnasium as gym

    from cellgym.envs.reprogram import PopulationState, ReprogramEnv

__all__ = ["BFSAgent", "EpisodeStats", "GreedyAgent", "RandomAgent", "evaluate"]


def _unwrapped(env: Any) -> ReprogramEnv:
    env = getattr(env, "unwrapped", env)
    if not hasattr(env, "lookahead") or getattr(env, "action_mode", "single") != "single":
        raise CellgymError(
            f"{type(env).__name__}: planning agents need a ReprogramEnv with action_mode='single' "
            "(they call env.lookahead and env.action_masks)."
        )
    return env


class RandomAgent(Agent):
    """Uniformly random valid action (stop included), from its own seeded generator."""

    name: ClassVar[str] = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: Any, env: Any, *, deterministic: bool = True) -> Any:
        """A random action among ``env.action_masks()`` (or from the action space if it has none)."""
        env = getattr(env, "unwrapped", env)
        if hasattr(env, "action_masks"):
            return np.int64(self.rng.choice(np.flatnonzero(env.action_masks())))
        return env.action_space.sample()


class GreedyAgent(Agent):
    """One-step lookahead: the valid action with the highest immediate reward (stop when none helps).

    All candidate actions go through ONE batched transition call (``env.lookahead``).
    """

    name: ClassVar[str] = "greedy"

    def act(self, obs: Any, env: Any, *, deterministic: bool = True) -> Any:
        """The action whose one-step reward is largest; ties go to the lowest index."""
        env = _unwrapped(env)
        valid = np.flatnonzero(env.action_masks())
        _, reward = env.lookahead(valid)
        return np.int64(valid[int(np.argmax(reward))])


class BFSAgent(Agent):
    """Exact shortest perturbation sequence by breadth-first search over the env's deterministic transition.

    At the first action of an episode it searches sequences of not-yet-applied perturbations, level by
    level (each level = ONE batched ``env.lookahead`` call over frontier x actions), merging identical
    (cells, applied) states, and returns the first sequence that reaches the goal: no shorter one
    exists. It then follows that plan; if none exists within ``max_depth`` it stops. Exact only where the
    transition is deterministic (Boolean networks, mean-mode predictors).

    Parameters
    ----------
    max_depth
        Longest sequence searched (default: the remaining step budget of the env, else 6).
    max_frontier
        Refuse to search (raise) when a level would exceed this many states.
    """

    name: ClassVar[str] = "bfs"

    def __init__(self, max_depth: int | None = None, max_frontier: int = 200_000) -> None:
        self.max_depth = max_depth
        self.max_frontier = max_frontier
        self.plan_: list[int] | None = None

    def reset(self, env: Any) -> None:
        """Forget the plan (the next :meth:`act` plans from the new starting state)."""
        self.plan_ = None

    def act(self, obs: Any, env: Any, *, deterministic: bool = True) -> Any:
        """The next action of the shortest plan (planned on first call of the episode); stop when none."""
        env = _unwrapped(env)
        if self.plan_ is None or env.steps == 0:
            self.plan_ = self.plan(env)
        if not self.plan_:
            return np.int64(env.n_perturbations)  # stop: nothing reaches the goal within the depth
        return np.int64(self.plan_.pop(0))

    def plan(self, env: Any) -> list[int] | None:
        """Shortest action list from the env's current state to success; ``[]`` if already there, else None."""
        env = _unwrapped(env)
        state: PopulationState = env.state
        thr = env.dynamics.threshold
        if float(state.distance[0]) <= thr:
            return []
        depth = self.max_depth
        if depth is None:
            horizon = env.spec.max_episode_steps if env.spec is not None else None
            depth = (horizon - env.steps) if horizon else 6
        paths: list[list[int]] = [[]]
        for _ in range(depth):
            valid = ~state.applied.numpy()  # (F, P)
            rows, acts = np.nonzero(valid)
            if rows.size == 0:
                return None
            if rows.size > self.max_frontier:
                raise CellgymError(f"BFS frontier of {rows.size} states exceeds max_frontier={self.max_frontier}; "
                                   "the world is too large for exact search (raise max_frontier or use greedy).")
            nxt, _ = env.lookahead(acts, state.take(rows))
            hit = np.flatnonzero(nxt.distance.numpy() <= thr)
            if hit.size:
                j = hit[0]
                return [*paths[rows[j]], int(acts[j])]
            # merge identical states (same cells and same perturbations in force)
            key = torch.cat([nxt.cells.flatten(1), nxt.applied.float()], dim=1).numpy()
            _, first = np.unique(key, axis=0, return_index=True)
            first = np.sort(first)
            paths = [[*paths[rows[j]], int(acts[j])] for j in first]
            state = nxt.take(first)
        return None


@dataclass
class EpisodeStats:
    """Outcome of :func:`evaluate`: per-episode success and length, with their summaries."""

    success: np.ndarray  # (E,) bool
    steps: np.ndarray  # (E,) int, actions taken (stop included)
    n_perturbations: np.ndarray  # (E,) int

    @property
    def success_rate(self) -> float:
        """Fraction of episodes that reached the goal."""
        return float(self.success.mean())

    @property
    def mean_steps_success(self) -> float:
        """Mean number of steps of the successful episodes (nan if none)."""
        return float(self.steps[self.success].mean()) if self.success.any() else float("nan")


def evaluate(agent: Agent, env: gym.Env, n_episodes: int, *, seed: int = 0) -> EpisodeStats:
    """Run ``n_episodes`` of ``agent`` on ``env`` (episode e reset with ``seed + e``)."""
    success, steps, n_pert = [], [], []
    for e in range(n_episodes):
        obs, info = env.reset(seed=seed + e)
        agent.reset(env.unwrapped)
        done, t = False, 0
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, env.unwrapped))
            done, t = terminated or truncated, t + 1
        success.append(bool(info["success"]))
        steps.append(t)
        n_pert.append(int(info["n_perturbations"]))
    return EpisodeStats(np.array(success), np.array(steps), np.array(n_pert))
