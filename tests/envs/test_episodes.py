"""Issue 9, defect 8: episodes are enforced (no step before reset or after the end) and actions are integers."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import cellgym.envs  # noqa: F401  (registers the tasks)
from cellgym.envs.errors import InvalidActionError, ResetNeededError
from cellgym.predictors.base.errors import CellgymError
from cellgym.registry import make

HSC = "CellEnv-Reprogram-HSC-v0"


def test_step_after_truncation_raises_reset_needed() -> None:
    """Stepping past the 6-step budget revived the episode (steps reached 7 of 6)."""
    env = gymnasium.make(HSC)
    env.reset(seed=0)
    bfs_free = env.unwrapped.perturbations.index("Gata2_KO")  # never reaches the erythroid goal alone
    truncated = False
    for _ in range(6):
        _, _, terminated, truncated, _ = env.step(bfs_free)
        assert not terminated
    assert truncated and env.unwrapped.steps == 6
    with pytest.raises(gymnasium.error.ResetNeeded, match="truncated at its budget of 6 steps") as info:
        env.step(bfs_free)
    assert isinstance(info.value, CellgymError) and env.unwrapped.steps == 6
    env.reset(seed=1)
    env.step(bfs_free)  # a reset starts a new episode


def test_step_after_termination_raises_reset_needed() -> None:
    env = gymnasium.make(HSC)
    env.reset(seed=0)
    stop = env.action_space.n - 1
    _, _, terminated, _, _ = env.step(stop)
    assert terminated
    with pytest.raises(ResetNeededError, match="terminated"):
        env.step(0)


def test_the_unwrapped_env_knows_its_budget_too() -> None:
    env = gymnasium.make(HSC, budget=2).unwrapped
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[3] is True  # truncated at its budget, without gymnasium's TimeLimit
    with pytest.raises(ResetNeededError):
        env.step(0)


@pytest.mark.parametrize("action", [True, np.True_, 1.0, np.float32(1), "1", np.array([1]), None])
def test_non_integer_actions_are_rejected(action: object) -> None:
    """``True`` was accepted as action 1."""
    env = gymnasium.make(HSC)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="not in the action space"):
        env.unwrapped.step(action)


def test_integer_actions_are_accepted() -> None:
    env = gymnasium.make(HSC).unwrapped
    env.reset(seed=0)
    for action in (0, np.int64(1), np.array(2)):
        env.step(action)
    env = gymnasium.make(HSC, action_mode="combination").unwrapped
    env.reset(seed=0)
    bits = np.zeros(env.action_space.n, dtype=np.int8)
    bits[0] = 1
    env.step(bits)
    env.step(bits.astype(bool))
    with pytest.raises(InvalidActionError):
        env.step(bits.astype(np.float32))


@pytest.fixture
def trip():
    return make("CellEnv-Trip-Integration-v0", n_cells=30, min_cells=10, max_cells=30, episode_length=(3, 3))


def test_trip_step_before_reset_raises_reset_needed(trip) -> None:
    """A raw ``ValueError: need at least one array to stack``."""
    with pytest.raises(gymnasium.error.ResetNeeded, match="before reset"):
        trip.step({})
    with pytest.raises(ResetNeededError, match="before reset"):
        trip.step_batch(np.zeros((10, trip.dim), np.float32))


def test_trip_step_after_truncation_raises_reset_needed(trip) -> None:
    trip.reset(seed=0)
    for _ in range(3):
        _, _, _, truncated, _ = trip.step({a: np.zeros(trip.dim, np.float32) for a in trip.agents})
    assert all(truncated.values()) and trip.agents == []
    with pytest.raises(ResetNeededError, match="truncated at its horizon of 3 steps"):
        trip.step({})
    trip.reset(seed=1)
    trip.step({a: np.zeros(trip.dim, np.float32) for a in trip.agents})
