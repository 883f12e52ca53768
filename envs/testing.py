"""Checks every registered ``CellEnv-*`` gymnasium task must pass (shipped with the package, like pettingzoo.test)."""

from __future__ import annotations

import pickle
import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

import cellgym.envs  # noqa: F401  (registers the tasks)

__all__ = ["R4_HEADINGS", "check_docstring", "check_task", "rollout"]

R4_HEADINGS = (
    "Description", "Action Space", "Observation Space", "Transition", "Rewards", "Starting State", "Episode End",
    "Info", "Arguments", "Vectorized environment", "Version History",
)


def _fail(message: str) -> None:
    raise AssertionError(message)


def rollout(env: gym.Env, seed: int, n_steps: int) -> list[tuple[np.ndarray, float, bool, bool]]:
    """``n_steps`` steps from ``reset(seed=seed)`` with actions from the action space seeded by ``seed``."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = [(obs, 0.0, False, False)]
    for _ in range(n_steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append((obs, float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append((obs, 0.0, False, False))
    return out


def _same(a: list, b: list, what: str) -> None:
    if len(a) != len(b):
        _fail(f"{what}: rollouts differ in length ({len(a)} vs {len(b)}).")
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        if not (np.array_equal(x[0], y[0]) and x[1:] == y[1:]):
            _fail(f"{what}: rollouts differ at step {t}: {x[1:]} vs {y[1:]}.")


def check_docstring(env_cls: type, task_id: str, env: gym.Env) -> None:
    """The R4 headings are present and in order; spaces and the version are named where they belong."""
    doc = env_cls.__doc__ or ""
    found = re.findall(r"^\s*## (.+?)\s*$", doc, flags=re.M)
    missing = [h for h in R4_HEADINGS if h not in found]
    if missing:
        _fail(f"{env_cls.__name__} docstring lacks the R4 heading(s) {missing}; found {found}.")
    order = [found.index(h) for h in R4_HEADINGS]
    if order != sorted(order):
        _fail(f"{env_cls.__name__} docstring headings are out of order: expected {list(R4_HEADINGS)}, got {found}.")
    sections = dict(zip(found, re.split(r"^\s*## .+$", doc, flags=re.M)[1:], strict=True))
    for heading, space in (("Action Space", env.action_space), ("Observation Space", env.observation_space)):
        if type(space).__name__ not in sections[heading]:
            _fail(f"{env_cls.__name__} docstring '## {heading}' does not name {type(space).__name__}.")
    version = task_id.rsplit("-", 1)[-1]
    if not re.search(rf"\b{version}\b", sections["Version History"]):
        _fail(f"{env_cls.__name__} docstring '## Version History' does not mention {version} of {task_id}.")


def check_task(task_id: str, *, n_steps: int = 12, seed: int = 0, num_envs: int = 3, **kwargs: Any) -> None:
    """Run every check on ``task_id`` (made with ``kwargs``); raises AssertionError naming the first failure.

    1. ``check_env`` on the unwrapped env with warnings as errors;
    2. two rollouts with the same seed are identical;
    3. a pickled copy replays the same rollout;
    4. the native vector env (``vector_entry_point``) agrees with ``SyncVectorEnv`` step by step;
    5. the env class docstring has the R4 headings (:func:`check_docstring`).
    """
    env = gym.make(task_id, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    first = rollout(env, seed, n_steps)
    _same(first, rollout(gym.make(task_id, **kwargs), seed, n_steps), f"{task_id} same-seed rollouts")
    copy = pickle.loads(pickle.dumps(env))
    _same(first, rollout(copy, seed, n_steps), f"{task_id} pickled copy")
    spec = gym.spec(task_id)
    if spec.vector_entry_point is not None:
        check_vector_agreement(task_id, n_steps=n_steps, seed=seed, num_envs=num_envs, **kwargs)
    check_docstring(type(env.unwrapped), task_id, env.unwrapped)
    env.close()


def check_vector_agreement(task_id: str, *, n_steps: int, seed: int, num_envs: int, **kwargs: Any) -> None:
    """The native vector env and ``SyncVectorEnv`` of the same task give the same observations, rewards and ends."""
    native = gym.make_vec(task_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(task_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)
    if native.metadata.get("autoreset_mode") != sync.metadata.get("autoreset_mode"):
        _fail(f"{task_id}: native autoreset_mode {native.metadata.get('autoreset_mode')} differs from sync's.")
    o1, _ = native.reset(seed=seed)
    o2, _ = sync.reset(seed=seed)
    native.action_space.seed(seed)
    for t in range(n_steps + 1):
        if not np.allclose(o1, o2, atol=1e-5):
            _fail(f"{task_id}: native and sync vector observations differ at step {t}.")
        if t == n_steps:
            break
        actions = native.action_space.sample()
        o1, r1, te1, tr1, _ = native.step(actions)
        o2, r2, te2, tr2, _ = sync.step(actions)
        if not (np.allclose(r1, r2, atol=1e-5) and np.array_equal(te1, te2) and np.array_equal(tr1, tr2)):
            _fail(f"{task_id}: native and sync vector steps differ at step {t}: {r1, te1, tr1} vs {r2, te2, tr2}.")
    native.close()
    sync.close()
