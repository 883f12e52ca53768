"""The agent zoo: hyperparameter files, the gymnasium -> SB3 vector adapter, SB3Agent save/load and masks."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import cellgym.envs  # noqa: F401  (registers the tasks)
from cellgym.agents.zoo import GymnasiumVecEnv, HyperparamError, SB3Agent, load_hyperparams, make_sb3_vec_env
from cellgym.agents.zoo._hyperparams import read_file, resolve_algo_kwargs, resolve_policy_kwargs
from cellgym.predictors.base.errors import CellgymError, CheckpointError
from cellgym.registry import make_agent, specs

TASK = "CellEnv-Reprogram-HSC-v0"
ALGOS = ["ppo", "a2c", "dqn", "sac", "td3", "maskable_ppo"]


@pytest.mark.parametrize("algo", ALGOS)
def test_shipped_yaml_is_valid_and_registered(algo: str) -> None:
    data = read_file(algo)  # every entry checked against the algorithm's signature
    assert "default" in data
    assert specs("agents")[algo].kwargs == {"algo": algo}
    hp = load_hyperparams(algo, "CellEnv-Not-Listed-v0")
    assert hp.source == "default" and hp.n_timesteps > 0


def test_task_entry_overrides_default_and_cli_overrides_both() -> None:
    hp = load_hyperparams("ppo", TASK, {"n_steps": 16, "learning_rate": {"schedule": "linear", "initial": 1.0e-3}})
    assert hp.source == TASK
    assert hp.algo_kwargs["n_steps"] == 16 and hp.algo_kwargs["gamma"] == 0.95  # CLI > task entry
    lr = resolve_algo_kwargs(hp.algo_kwargs)["learning_rate"]
    assert lr(1.0) == pytest.approx(1.0e-3) and lr(0.0) == pytest.approx(0.0)  # SB3 progress goes 1 -> 0
    assert resolve_policy_kwargs(hp.policy_kwargs)["activation_fn"] is torch.nn.Tanh


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n_step": 16}, "Did you mean 'n_steps'"),
    ({"learning_rate": "3e-4"}, "signed exponent"),
    ({"n_envs": 2.5}, "expected int"),
    ({"normalize_advantage": 1}, "bool"),
    ({"learning_rate": {"schedule": "cosine", "initial": 1.0e-3}}, "schedule for 'learning_rate'"),
])
def test_bad_hyperparameters_raise_clearly(overrides: dict, message: str) -> None:
    with pytest.raises(HyperparamError, match=message):
        load_hyperparams("ppo", TASK, overrides)


def test_unknown_activation_and_algorithm() -> None:
    with pytest.raises(HyperparamError, match="expected one of"):
        resolve_policy_kwargs({"activation_fn": "sigmoidish"})
    with pytest.raises(HyperparamError, match="Did you mean 'ppo'"):
        SB3Agent("pppo")


def test_adapter_matches_single_envs_and_reports_episode_ends() -> None:
    """The SB3 view of a SAME_STEP vector env replays exactly what n single envs with seeds s+i do."""
    n, seed = 3, 11
    venv = make_sb3_vec_env(TASK, n)
    venv.seed(seed)
    obs = venv.reset()
    singles = [gymnasium.make(TASK) for _ in range(n)]
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(single_obs))
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(20):
        actions = rng.integers(0, 17, n)
        obs, rewards, dones, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(actions[i])
            assert rewards[i] == pytest.approx(r)
            assert dones[i] == (te or tr)
            if te or tr:
                ends += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert infos[i]["is_success"] == info["success"] and "episode" in infos[i]
                assert infos[i]["TimeLimit.truncated"] == (tr and not te)
                o, _ = env.reset()  # SB3 sees the next episode's first observation at once
            np.testing.assert_array_equal(obs[i], o)
    assert ends > 0
    masks = venv.env_method("action_masks")
    assert len(masks) == n and masks[0].shape == (17,)


def test_adapter_rejects_next_step_autoreset() -> None:
    native = gymnasium.make_vec(TASK, num_envs=2, vectorization_mode="vector_entry_point")
    if native.metadata["autoreset_mode"] != AutoresetMode.NEXT_STEP:
        pytest.skip("the native vector env no longer resets on the next step")
    with pytest.raises(CellgymError, match="SAME_STEP"):
        GymnasiumVecEnv(native)


def test_make_sb3_vec_env_wraps_the_native_same_step_env() -> None:
    from cellgym.envs.reprogram import ReprogramVectorEnv

    venv = make_sb3_vec_env(TASK, 4)
    native = venv.venv.venv  # VecMonitor -> GymnasiumVecEnv -> gymnasium VectorEnv
    assert isinstance(native, ReprogramVectorEnv) and native.num_envs == 4
    assert native.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP


def test_save_load_roundtrip_acts_identically(tmp_path: Path) -> None:
    agent = make_agent("ppo", algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1}, seed=0)
    venv = make_sb3_vec_env(TASK, 2)
    agent.learn(venv, 64)
    agent.save(tmp_path / "model")
    env = gymnasium.make(TASK)
    loaded = SB3Agent.load(tmp_path / "model", env=env)
    assert loaded.model.num_timesteps == agent.model.num_timesteps == 64
    obs = np.stack([env.reset(seed=s)[0] for s in range(16)])
    a, _ = agent.model.predict(obs, deterministic=True)
    b, _ = loaded.model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match=r"expected config\.yaml and weights\.pt"):
        SB3Agent.load(tmp_path / "nothing", env=env)
    (tmp_path / "model" / "config.yaml").write_text(
        (tmp_path / "model" / "config.yaml").read_text().replace("format_version: 1", "format_version: 99"))
    with pytest.raises(CheckpointError, match="format version 99"):
        SB3Agent.load(tmp_path / "model", env=env)


def test_maskable_ppo_never_repeats_a_perturbation() -> None:
    agent = make_agent("maskable_ppo", algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1}, seed=0)
    agent.learn(make_sb3_vec_env(TASK, 2), 64)
    env = gymnasium.make(TASK)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        chosen, done = [], False
        while not done:
            mask = env.unwrapped.action_masks()
            action = agent.act(obs, env.unwrapped, deterministic=False)
            assert mask[action], f"masked action {action} chosen"
            chosen.append(action)
            obs, _, te, tr, _ = env.step(action)
            done = te or tr
        assert len([a for a in chosen if a != 16]) == len({a for a in chosen if a != 16})


def test_dqn_learns_through_the_same_interface(tmp_path: Path) -> None:
    agent = make_agent("dqn", algo_kwargs={"learning_starts": 16, "buffer_size": 1_000}, seed=0)
    agent.learn(gymnasium.make(TASK), 64)
    agent.save(tmp_path / "dqn")
    assert (tmp_path / "dqn" / "weights.pt").is_file()
    weights = torch.load(tmp_path / "dqn" / "weights.pt", weights_only=True)
    assert any(k.startswith("q_net_target") for k in weights["params"]["policy"])


def test_adapter_disabled_autoreset_equals_same_step() -> None:
    """A vector env without autoreset (reset_mask) gives SB3 the same stream as a SAME_STEP one."""
    streams = []
    for mode in (AutoresetMode.SAME_STEP, AutoresetMode.DISABLED):
        venv = GymnasiumVecEnv(gymnasium.make_vec(TASK, num_envs=2, vectorization_mode="sync",
                                                  vector_kwargs={"autoreset_mode": mode}))
        venv.seed(5)
        out = [venv.reset()]
        rng = np.random.default_rng(1)
        for _ in range(15):
            obs, rewards, dones, infos = venv.step(rng.integers(0, 17, 2))
            out += [obs, rewards, dones]
            out += [infos[i]["terminal_observation"] for i in np.flatnonzero(dones)]
        streams.append(out)
    assert any(np.asarray(x).dtype == bool and np.asarray(x).any() for x in streams[0])  # episodes ended
    for a, b in zip(*streams, strict=True):
        np.testing.assert_array_equal(a, b)
