"""Envs run their own tensor work with ``num_threads`` torch threads; CellTRIP's flat observations
work with SuperSuit's wrappers and SB3 (parameter sharing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellgym.envs  # noqa: F401
from cellgym.envs._threads import NumThreadsError, check_num_threads, torch_threads
from cellgym.envs.reprogram import ReprogramEnv
from cellgym.predictors.rewards import CentroidReward
from cellgym.registry import make


class _ThreadSpy(CentroidReward):
    """A real centroid reward that records torch's thread count whenever the env asks it for a distance."""

    seen: list[int]

    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return super().distance(cells)


def _data_env(num_threads: int | None) -> tuple[ReprogramEnv, _ThreadSpy]:
    import anndata as ad
    import pandas as pd

    from cellgym.predictors.base import DataSpec
    from cellgym.registry import make_predictor

    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A"], 30)
    x = 2.0 + rng.normal(0, 0.3, (60, 4)) + (labels == "A")[:, None] * np.eye(4)[0]
    adata = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(60)]))
    model = make_predictor("baseline.additive")
    model.fit(adata, DataSpec(counts=None), seed=0)
    spy = _ThreadSpy(target=x[labels == "A"])
    spy.seen = []
    env = ReprogramEnv(world="data", adata=adata, spec=DataSpec(counts=None), target="A", predictor=model, reward=spy,
                       num_threads=num_threads)
    return env, spy


def test_env_work_runs_with_its_num_threads_and_the_process_setting_is_restored() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        env, spy = _data_env(None)  # default: one thread
        env.reset(seed=0)
        env.step(0)
        assert spy.seen and set(spy.seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's (the agent's) setting is untouched
        spy.seen.clear()
        env2, spy2 = _data_env(2)
        env2.reset(seed=0)
        assert set(spy2.seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_torch_threads_and_bad_values() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(-1):  # leave torch's setting alone
        assert torch.get_num_threads() == before
    assert check_num_threads(None) == 1
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(NumThreadsError, match="num_threads: expected an integer >= 1"):
            check_num_threads(bad)


def _flat_env(**kw):
    return make("CellEnv-Trip-Integration-v0", n_cells=12, dim=2, n_pcs=4, view_size=6, bounds=3.0, episode_length=(8, 8),
                obs_format="flat", **kw)


def test_flat_observations_are_the_dict_observations_concatenated() -> None:
    from pettingzoo.test import parallel_api_test

    flat = _flat_env()
    parallel_api_test(flat, num_cycles=10)
    plain = make("CellEnv-Trip-Integration-v0", n_cells=12, dim=2, n_pcs=4, view_size=6, bounds=3.0, episode_length=(8, 8))
    o_flat, _ = flat.reset(seed=1)
    o_dict, _ = plain.reset(seed=1)
    a = flat.agents[3]
    d = o_dict[a]
    expected = np.concatenate([d["self"], d["others"].ravel(), [d["n_others"], d["self_slot"]]])
    assert np.allclose(o_flat[a], expected) and flat.observation_space(a).contains(o_flat[a])
    assert np.isfinite(flat.observation_space(a).low).all()  # with bounds= every bound is finite


def test_supersuit_wrappers_and_sb3_ppo_on_the_flat_world() -> None:
    ss = pytest.importorskip("supersuit")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    env = ss.black_death_v3(ss.normalize_obs_v0(ss.flatten_v0(ss.pad_observations_v0(_flat_env())), env_min=0.0, env_max=1.0))
    obs, _ = env.reset(seed=0)
    space = _flat_env().observation_space("cell_0")
    a = env.agents[0]
    assert obs[a].shape == space.shape and 0.0 <= obs[a].min() and obs[a].max() <= 1.0
    raw, _ = _flat_env().reset(seed=0)
    assert np.allclose(obs[a], (raw[a] - space.low) / (space.high - space.low), atol=1e-6)  # normalize_obs_v0 did it
    venv = ss.pettingzoo_env_to_vec_env_v1(env)  # every cell one sub-env of one VecEnv (parameter sharing)
    venv = VecMonitor(ss.concat_vec_envs_v1(venv, 1, num_cpus=0, base_class="stable_baselines3"))
    assert venv.num_envs == 12
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=96, n_epochs=1, device="cpu", seed=None)
    model.learn(total_timesteps=8 * 12 * 2)
    assert model.num_timesteps == 8 * 12 * 2
    assert len(model.ep_info_buffer) > 0 and all(len(info) for info in model.ep_info_buffer)  # 8-step episodes ended
    venv.close()
