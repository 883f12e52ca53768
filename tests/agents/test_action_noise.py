"""Exploration noise for SAC / TD3 from hyperparameter data (RL Zoo's noise_type / noise_std)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import cellgym.envs  # noqa: F401
from cellgym.agents.zoo import SB3Agent
from cellgym.agents.zoo._hyperparams import HyperparamError, load_hyperparams


def test_action_noise_is_built_for_the_env_action_space() -> None:
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make("CellEnv-Reprogram-HSC-Dose-v0")
    agent = SB3Agent("td3", algo_kwargs={"action_noise": {"type": "normal", "std": 0.2}, "learning_starts": 10})
    model = agent.build(env)
    assert isinstance(model.action_noise, NormalActionNoise)
    draws = np.stack([model.action_noise() for _ in range(2000)])
    assert draws.shape == (2000, 16) and draws.std(0) == pytest.approx(np.full(16, 0.2), abs=0.02)


def test_shipped_td3_entry_for_the_dose_task_has_noise_and_bad_noise_fails_in_one_line() -> None:
    hp = load_hyperparams("td3", "CellEnv-Reprogram-HSC-Dose-v0")
    assert hp.source == "CellEnv-Reprogram-HSC-Dose-v0" and hp.algo_kwargs["action_noise"] == {"type": "normal", "std": 0.2}
    with pytest.raises(HyperparamError, match=r"action_noise from --hyperparams: expected \{type: normal"):
        load_hyperparams("td3", "CellEnv-Reprogram-HSC-Dose-v0", {"action_noise": {"type": "pink", "std": 0.1}})
