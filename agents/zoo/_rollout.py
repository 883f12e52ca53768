"""Run any agent (learned or planner) for whole episodes on a single env and record what it did."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellgym.predictors.base.errors import CellgymError

__all__ = ["Episode", "action_name", "optimum_steps", "replay", "run_episodes"]

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """One episode: the actions taken, their names, the distance after each, and the outcome.

    ``observations`` holds the initial observation followed by the one after every step (for plots).
    """

    seed: int | None
    actions: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    cost: float = float("nan")
    start_distance: float = float("nan")

    @property
    def steps(self) -> int:
        """Number of env steps taken."""
        return len(self.actions)

    @property
    def ret(self) -> float:
        """Undiscounted return."""
        return float(np.sum(self.rewards))


def action_name(env: Any, action: Any) -> str:
    """A perturbation's name for ``action`` in ``env`` (unwrapped), if the env names its actions."""
    for attr in ("action_names", "perturbation_names", "perturbations"):
        names = getattr(env, attr, None)
        if names is not None and not callable(names):
            try:
                index = int(action)
            except (TypeError, ValueError):  # combinations (MultiBinary) are named by their set bits
                bits = np.flatnonzero(np.asarray(action))
                return "+".join(str(names[i]) if i < len(names) else "stop" for i in bits) or "(none)"
            return str(names[index]) if index < len(names) else "stop"
    return str(action)


def _record(ep: Episode, env: Any, action: Any, obs: Any, reward: float, info: dict[str, Any]) -> None:
    ep.actions.append(action.tolist() if isinstance(action, np.ndarray) else action)
    ep.names.append(action_name(env, action))
    ep.distances.append(float(info.get("distance", np.nan)))
    ep.rewards.append(float(reward))
    ep.observations.append(np.asarray(obs))
    ep.success = bool(info.get("success", False))
    ep.cost = float(info.get("cost", np.nan))


def run_episodes(agent: Any, env: Any, episodes: int, *, seed: int | None = 0,
                 deterministic: bool = True) -> list[Episode]:
    """Play ``episodes`` episodes of ``agent`` on the (wrapped) gymnasium ``env``; episode k uses ``seed + k``."""
    out = []
    for k in range(episodes):
        ep_seed = None if seed is None else seed + k
        obs, info = env.reset(seed=ep_seed)
        agent.reset(env.unwrapped)
        ep = Episode(seed=ep_seed, observations=[np.asarray(obs)],
                     start_distance=float(info.get("distance", np.nan)))
        done = False
        while not done:
            action = agent.act(obs, env.unwrapped, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            _record(ep, env.unwrapped, action, obs, reward, info)
            done = terminated or truncated
        out.append(ep)
    return out


def replay(episode: Episode, env: Any) -> Episode:
    """Replay an episode's actions open-loop in another ``env`` (e.g. the true world), same seed."""
    obs, info = env.reset(seed=episode.seed)
    out = Episode(seed=episode.seed, observations=[np.asarray(obs)],
                  start_distance=float(info.get("distance", np.nan)))
    for action in episode.actions:
        obs, reward, terminated, truncated, info = env.step(action)
        _record(out, env.unwrapped, action, obs, reward, info)
        if terminated or truncated:
            break
    return out


def optimum_steps(task: str, env_kwargs: dict[str, Any] | None = None, *, episodes: int = 5,
                  seed: int = 0) -> float | None:
    """Mean episode length of the exact optimum (registered agent ``bfs``) on ``task``, or ``None``.

    ``None`` where breadth-first search is not defined for the task's world (or not available), or does
    not fit in memory (on CellEnv-Design-Papalexi-v0 its batched lookahead asked for 31 GB).
    """
    import gymnasium

    from cellgym.registry import make_agent

    try:
        env = gymnasium.make(task, **(env_kwargs or {}))
        eps = run_episodes(make_agent("bfs"), env, episodes, seed=seed)
        env.close()
    except (CellgymError, NotImplementedError, ImportError, AttributeError, MemoryError) as exc:
        log.info("no bfs optimum for %s: %s", task, exc)
        return None
    except RuntimeError as exc:  # torch's CPU allocator fails with a RuntimeError
        if "allocate" not in str(exc):
            raise
        log.info("no bfs optimum for %s: it does not fit in memory (%s)", task, exc)
        return None
    return float(np.mean([e.steps for e in eps]))
