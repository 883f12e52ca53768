"""CellTRIP agent: network pieces (adaptive rescaling, PopArt, attention), learning, save/load, enjoy, manager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellgym.agents.celltrip import CellTripAgent, EntityAttentionActorCritic, obs_dict_to_arrays
from cellgym.agents.celltrip._ppo import PopArtHead, RunningStandardiser, self_pairs
from cellgym.envs.trip import TripConfigError, TripParallelEnv
from cellgym.predictors.base.errors import CheckpointError
from cellgym.registry import make, make_agent

FAST = {"n_steps": 20, "batch_steps": 5, "n_epochs": 2, "decoder_steps": 50, "steady_state_steps": 20}


def world(task: str = "CellEnv-Trip-Integration-v0", **kw):
    return make(task, n_cells=80, min_cells=40, max_cells=80, episode_length=(15, 25), **kw)


def test_adaptive_input_rescaling_preserves_outputs():
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    norm = RunningStandardiser(5)
    x = torch.randn(64, 5, generator=gen) * 7 + 3
    before = layer(norm(x))
    norm.update(torch.randn(256, 5, generator=gen) * 4 - 2, [layer])
    assert not torch.allclose(norm.mean, torch.zeros(5))
    torch.testing.assert_close(layer(norm(x)), before, rtol=1e-4, atol=1e-4)


def test_popart_preserves_unnormalised_values_and_tracks_return_scale():
    head = PopArtHead(4, beta=0.5)
    h = torch.randn(10, 4)
    before = head.unnormalise(head(h))
    head.update(torch.randn(1000) * 50 + 100)
    torch.testing.assert_close(head.unnormalise(head(h)), before, rtol=1e-4, atol=1e-3)
    assert float(head.sigma) > 5 and float(head.mu) > 40


def test_attention_excludes_self_and_depends_on_others():
    model = EntityAttentionActorCritic(6, 2, hidden_dim=16, n_heads=2)
    states = torch.randn(4, 6)
    view = torch.arange(4)
    mean, value = model(states, states[view], self_pairs(view))
    assert mean.shape == (4, 2) and value.shape == (4,)
    # changing cell 0's own row in the key set (not its query) must not change cell 0's output
    others = states.clone()
    others[0] += 10.0
    mean2, _ = model(states, others, self_pairs(view))
    torch.testing.assert_close(mean2[0], mean[0])
    assert not torch.allclose(mean2[1:], mean[1:])


def test_dict_and_batched_actions_agree():
    env = world()
    agent = CellTripAgent(**FAST)
    obs, _ = env.reset(seed=0, options={"n_cells": 50})
    batched = env.reset_batch(seed=0, options={"n_cells": 50})
    actions = agent.act(obs, env)
    np.testing.assert_allclose(np.stack(list(actions.values())), agent.act_batch(batched).numpy(), atol=1e-5)
    _, others, (rows, _) = obs_dict_to_arrays(obs)
    assert others.shape[0] == 50 and len(rows) == 50  # padding dropped, one self pair per cell


def test_critic_learns_the_returns():
    agent = make_agent("celltrip", **{**FAST, "n_steps": 50})
    agent.learn(world(), 300, seed=0)
    explained = agent.result.history["train/explained_variance"]
    assert np.mean(explained[-3:]) > explained[0] + 0.05, explained  # measured 0.001 -> 0.07..0.14
    assert "cell/imputation_error_0" in agent.result.history


def final_potential(agent: CellTripAgent, env, steps: int = 25) -> float:
    """Mean distance-matching + pinning potential of the cells after ``steps`` of the deterministic policy."""
    out = []
    for seed in range(5):
        agent.manager(env, seed=100 + seed).simulate(steps)
        out.append(float((env._phi_dist + env._phi_pin).mean()))
    return float(np.mean(out))


@pytest.mark.slow
def test_trained_policy_arranges_cells_better_than_untrained():
    env = world()
    untrained = CellTripAgent()
    untrained._check_env(env)
    agent = CellTripAgent(n_steps=50, batch_steps=10).learn(env, 2000, seed=0)  # ~40 s on one core
    # measured: untrained -1.235, trained -1.083 (potential 0 = distances and decoders reproduce the modalities)
    assert final_potential(agent, env) > final_potential(untrained, env) + 0.05
    # integration: cells of the same type end closer (kNN label agreement, random positions ~ 1/5 types)
    m = agent.manager(env, cells=np.arange(env.n_total), seed=7)
    before = knn_label_agreement(m.positions, env.labels)
    m.simulate(50)
    after = knn_label_agreement(m.positions, env.labels)
    assert after > before + 0.2, (before, after)


def knn_label_agreement(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    d = torch.cdist(torch.as_tensor(x), torch.as_tensor(x)).fill_diagonal_(float("inf"))
    return float((labels[d.topk(k, largest=False).indices.numpy()] == labels[:, None]).mean())


def test_same_seed_same_training():
    runs = []
    for _ in range(2):
        agent = CellTripAgent(**FAST).learn(world(), 40, seed=3)
        runs.append(agent.result.history["rollout/reward_per_cell"])
    assert runs[0] == runs[1]


def test_cli_contract_learn_save_load_enjoy(tmp_path):
    """What `cellgym train --algo celltrip` and `cellgym enjoy` call, called directly."""
    env = world("CellEnv-Trip-Imputation-v0")
    agent = make_agent("celltrip", **FAST)
    assert agent.learn(env, 40, seed=0, tensorboard_log=tmp_path / "tb", progress_bar=True) is agent
    agent.save(tmp_path / "model")
    assert (tmp_path / "model" / "config.yaml").is_file() and (tmp_path / "model" / "weights.pt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"rollout/reward_per_cell", "rollout/velocity", "cell/imputation_error_spatial"} <= tags
    loaded = CellTripAgent.load(tmp_path / "model")
    obs = env.reset_batch(seed=1)
    torch.testing.assert_close(loaded.act_batch(obs), agent.act_batch(obs))
    assert set(loaded.decoders) == set(agent.decoders)
    text = loaded.enjoy(env, episodes=2, plot=str(tmp_path / "pos.png"), seed=0)
    assert "episode 1" in text and "mean reward per cell" in text
    assert (tmp_path / "pos.png").stat().st_size > 1000


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.yaml"):
        CellTripAgent.load(tmp_path)
    with pytest.raises(TypeError, match="closest"):
        CellTripAgent(learning_rat=1.0)
    agent = CellTripAgent(**FAST)
    agent._check_env(world())
    with pytest.raises(CheckpointError, match="built for a world"):
        agent._check_env(world("CellEnv-Trip-Imputation-v0"))


def test_manager_simulate_state_impute_and_perturb():
    env = world("CellEnv-Trip-Imputation-v0")
    agent = CellTripAgent(**FAST)
    agent._check_env(env)
    m = agent.manager(env, seed=0)
    traj = m.simulate(10, record_every=5)
    assert traj.shape == (3, 80, env.dim)
    state = m.save_state()
    after = m.simulate(5, record_every=5)[-1]
    m.load_state(state)
    np.testing.assert_allclose(m.simulate(5, record_every=5)[-1], after, atol=1e-6)  # save/load is exact
    m.fit_decoders()
    out = m.get_state(impute=True)
    assert out["spatial"].shape == (80, 2) and out["rna"].shape == (80, env.modalities[0].n_raw)
    m.load_state(state)
    for clamping in ("pre", "post", "action"):
        m.add_perturbation([0, 1], 0.0, modality=0, clamping=clamping)
        res = m.simulate_perturbation(5)
        assert res.displacement.shape == (80,) and res.displacement.mean() > 0
        m.clear_perturbations()
        m.load_state(state)
    torch.testing.assert_close(env.inputs, state["inputs"])
    with pytest.raises(TripConfigError, match="not an input"):
        m.add_perturbation([0], 0.0, modality=1)
    with pytest.raises(TripConfigError, match="features must be indices"):
        m.add_perturbation([10_000], 0.0, modality=0)
    ranking = m.prioritise([0, 1, 2], 0.0, time=3)
    assert sorted(f for f, _ in ranking) == [0, 1, 2]


def test_recover_stages_matches_pseudocells_one_to_one_and_decodes_the_path():
    from cellgym.agents.celltrip import recover_stages

    rng = np.random.default_rng(0)
    origin = rng.poisson(5.0, (60, 30)).astype(np.float32)
    terminal = rng.poisson(5.0, (60, 30)).astype(np.float32)
    terminal[:, :10] *= 4
    env = TripParallelEnv([np.concatenate([origin, terminal])], kinds=["counts"], n_pcs=8, max_cells=60)
    agent = CellTripAgent(**FAST)
    agent._check_env(env)
    rec = recover_stages(agent, env, origin, terminal, n_pseudocells=6, time=20, record_every=5)
    assert sorted(rec.matching.tolist()) == list(range(6))  # OT between equal uniform masses: a permutation
    assert rec.trajectory.shape == (5, 6, env.dim) and rec.states.shape == (5, 6, 8)
    with pytest.raises(TripConfigError, match="raw features"):
        recover_stages(agent, env, origin[:, :5], terminal)


def test_each_clamping_changes_what_it_should():
    env = world("CellEnv-Trip-Imputation-v0")
    agent = CellTripAgent(**FAST)
    agent._check_env(env)
    m = agent.manager(env, seed=0)
    base = env.inputs.clone()
    raw = torch.from_numpy(env.raw[0][env.cell_index]).clone()
    m.add_perturbation([3], 0.0, clamping="pre")
    raw[:, 3] = 0.0
    torch.testing.assert_close(env.inputs, env.modalities[0].transform(raw))
    assert m._action_delta is None
    m.clear_perturbations()
    m.add_perturbation([3], 5.0, clamping="post")
    assert not torch.allclose(env.inputs, base) and m._action_delta is None
    m.clear_perturbations()
    m.add_perturbation([3], 5.0, clamping="action")
    torch.testing.assert_close(env.inputs, base)  # inputs stay; the force changes through the JVP
    assert m._action_delta is not None and m._action_delta.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- device
def test_learn_on_explicit_cpu_keeps_networks_rollouts_and_world_on_cpu():
    env = world(device="cpu")
    agent = CellTripAgent(device="cpu", **FAST).learn(env, 20, seed=0)
    assert agent.device == torch.device("cpu") and env.device == torch.device("cpu")
    assert {p.device.type for p in agent.model.parameters()} == {"cpu"}
    assert {b.device.type for d in agent.decoders.values() for b in d.state_dict().values()} == {"cpu"}
    obs = env.reset_batch(seed=0)
    assert agent.act_batch(obs).device.type == "cpu" and env.positions.device.type == "cpu"
    obs, _ = env.reset(seed=0)
    actions = agent.act(obs, env)
    assert all(isinstance(a, np.ndarray) for a in actions.values())


def test_cuda_without_a_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(TripConfigError, match=r"device 'cuda' requested but torch.cuda.is_available\(\) is False"):
        CellTripAgent(device="cuda")
    with pytest.raises(TripConfigError, match="not a torch device"):
        make_agent("celltrip", device="cdua")


def test_cli_passes_device_to_celltrip(tmp_path, capsys):
    from cellgym.agents.cli import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code = main(["train", "--env", "CellEnv-Trip-Integration-v0", "--algo", "celltrip", "--device", "cuda",
                 "-n", "5", "-f", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "torch.cuda.is_available() is False" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # failed before any run folder was written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_brief_training_on_cuda_gives_cpu_shaped_outputs(tmp_path):
    cpu_env, gpu_env = world(), world()
    cpu = CellTripAgent(**FAST).learn(cpu_env, 40, seed=0)
    gpu = CellTripAgent(device="cuda", **FAST).learn(gpu_env, 40, seed=0)
    assert gpu_env.positions.is_cuda and all(p.is_cuda for p in gpu.model.parameters())
    assert gpu.result.history.keys() == cpu.result.history.keys()
    assert all(np.isfinite(v).all() for v in gpu.result.history.values())
    obs, _ = gpu_env.reset(seed=1)
    actions = gpu.act(obs, gpu_env)
    assert next(iter(actions.values())).shape == (gpu_env.dim,) and isinstance(actions["cell_0"], np.ndarray)
    manager = gpu.manager(gpu_env, seed=0)
    manager.simulate(5)
    state = manager.get_state()
    ref = cpu.manager(cpu_env, seed=0).get_state()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ref.items()}
    loaded = CellTripAgent.load(gpu.save(tmp_path / "gpu"), device="cpu")  # a GPU checkpoint loads on the CPU
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_a_cuda_checkpoint_loads_on_a_cpu_only_machine(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    path = CellTripAgent(**FAST).learn(world(), 20, seed=0).save(tmp_path / "a")
    config = (path / "config.yaml").read_text()
    (path / "config.yaml").write_text(config.replace("device: cpu", "device: cuda"))
    assert CellTripAgent.load(path).device == torch.device("cpu")
    with pytest.raises(TripConfigError, match="is_available"):
        CellTripAgent.load(path, device="cuda")  # an explicit request is honoured, and fails clearly


@pytest.mark.parametrize("size", [{}, {"hidden_dim": 32, "n_heads": 2, "ff_mult": 4, "actor_hidden": 48}])
def test_neighbour_attention_equals_shared_attention_when_every_cell_is_a_neighbour(size):
    ref = world(view="all")
    nbr = world(view="neighbours", n_neighbours=79, n_random=0)
    agent = CellTripAgent(**FAST, **size)
    agent._check_env(ref)
    cells = {"cells": np.arange(80)}
    obs_r, obs_n = ref.reset_batch(seed=0, options=cells), nbr.reset_batch(seed=0, options=cells)
    mean_r, value_r = agent.model.policy(obs_r.states, obs_r.view)
    mean_n, value_n = agent.model.policy(obs_n.states, obs_n.view)
    torch.testing.assert_close(mean_n, mean_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(value_n, value_r, rtol=1e-4, atol=1e-5)
    # chunked over cells: many small chunks give the same result (and gradients flow through them)
    from cellgym.agents.celltrip import _ppo

    old, _ppo.ATTENTION_CHUNK_ELEMENTS = _ppo.ATTENTION_CHUNK_ELEMENTS, 1
    try:
        chunked, _ = agent.model.policy(obs_n.states, obs_n.view)
        chunked.sum().backward()
    finally:
        _ppo.ATTENTION_CHUNK_ELEMENTS = old
    torch.testing.assert_close(chunked, mean_n, rtol=1e-5, atol=1e-6)
    assert agent.model.query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("view", [{"view": "all"}, {"view": "sampled", "view_size": 30},
                                  {"view": "neighbours", "n_neighbours": 8, "n_random": 2}])
@pytest.mark.parametrize("size", [{}, {"hidden_dim": 32, "n_heads": 2, "ff_mult": 4, "actor_hidden": 48}])
def test_reusing_the_input_part_of_the_first_layers_gives_the_same_policy(view, size):
    """Within an episode only positions and velocities move: the first layers' input-feature part is computed
    once and reused; a change of inputs (clamping), of weights (an update) or of statistics recomputes it."""
    env = world(**view)
    agent = CellTripAgent(**FAST, **size)
    agent._check_env(env, seed=0)
    model = agent.model
    obs = env.reset_batch(seed=0, options={"n_cells": 60})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.standardiser.update(obs.states * 3 + 1, model.first_layers())  # non-trivial statistics
        for step in range(4):
            reused = model.policy(obs.states, obs.view, reuse_inputs=True)
            if step == 0:
                constant = model._input_cache[2]
            assert model._input_cache[2] is constant  # computed once for the episode
            plain = model.policy(obs.states, obs.view)
            for a, b in zip(reused, plain, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            obs = env.step_batch(model.act(obs, generator=gen)[0])[0]
        env.set_inputs(env.inputs + 0.5)  # in-silico clamping: new inputs
        obs = env._obs()
        torch.testing.assert_close(model.policy(obs.states, obs.view, reuse_inputs=True)[0],
                                   model.policy(obs.states, obs.view)[0], rtol=1e-5, atol=1e-6)
        assert model._input_cache[2] is not constant
    # an optimiser step changes the first layers: the cached part must not outlive it
    constant = model._input_cache[2]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.policy(obs.states, obs.view)[0].sum().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(model.policy(obs.states, obs.view, reuse_inputs=True)[0],
                                   model.policy(obs.states, obs.view)[0], rtol=1e-5, atol=1e-6)
    assert model._input_cache[2] is not constant
    model.standardiser.update(obs.states * 2, model.first_layers())
    with torch.no_grad():
        torch.testing.assert_close(model.policy(obs.states, obs.view, reuse_inputs=True)[0],
                                   model.policy(obs.states, obs.view)[0], rtol=1e-5, atol=1e-6)


def test_neighbour_view_dict_and_batched_actions_agree():
    env = world(view="neighbours", n_neighbours=8, n_random=2)
    agent = CellTripAgent(**FAST)
    obs, _ = env.reset(seed=0, options={"n_cells": 50})
    batched = env.reset_batch(seed=0, options={"n_cells": 50})
    actions = agent.act(obs, env)
    np.testing.assert_allclose(np.stack(list(actions.values())), agent.act_batch(batched).numpy(), atol=1e-5)


def test_policy_learns_with_the_neighbour_view():
    env = world(view="neighbours", n_neighbours=12, n_random=4)
    agent = make_agent("celltrip", **{**FAST, "n_steps": 50})
    agent.learn(env, 300, seed=0)
    explained = agent.result.history["train/explained_variance"]
    assert np.mean(explained[-3:]) > explained[0] + 0.05, explained


def test_celltrip_size_has_celltrips_parameter_count():
    from cellgym.agents.celltrip._ppo import CELLTRIP_SIZE

    model = CellTripAgent(**CELLTRIP_SIZE)._build(2 * 32 + 96, 32)
    assert 305_000 < sum(p.numel() for p in model.parameters()) < 320_000  # CellTRIP reports 314k
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_two_torch_threads_give_the_single_thread_step_and_gradients():
    """With 2 torch threads the neighbour chunks run in 2 Python threads: same actions, rewards, gradients."""
    from cellgym.agents.celltrip import _ppo
    from cellgym.envs.trip import _env

    env = world(view="neighbours", n_neighbours=12, n_random=4)
    agent = CellTripAgent(**FAST)
    agent._check_env(env)
    results = {}
    old = _ppo.ATTENTION_CHUNK_ELEMENTS, _env.PAIR_CHUNK_ELEMENTS, torch.get_num_threads()
    _ppo.ATTENTION_CHUNK_ELEMENTS = _env.PAIR_CHUNK_ELEMENTS = 1  # one cell per chunk: many chunks per thread
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            agent.model.zero_grad()
            obs = env.reset_batch(seed=0, options={"n_cells": 60})
            mean, value = agent.model.policy(obs.states, obs.view)
            (mean.sum() + value.sum()).backward()
            _, reward, _, _ = env.step_batch(mean.detach())
            results[threads] = mean.detach(), reward, agent.model.query.weight.grad.clone()
    finally:
        _ppo.ATTENTION_CHUNK_ELEMENTS, _env.PAIR_CHUNK_ELEMENTS = old[:2]
        torch.set_num_threads(old[2])
    for one, two in zip(results[1], results[2], strict=True):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
    assert results[1][2].abs().sum() > 0


def test_partition_cells_gives_disjoint_runner_subsets():
    from cellgym.agents.celltrip._ray import partition_cells
    from cellgym.predictors.base.errors import CellgymError

    labels = np.repeat(np.array(["a", "b", "c", "d", "e"]), [50, 40, 30, 20, 10])
    parts = partition_cells(150, labels, "labels", 2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(150))  # disjoint and complete
    assert all(len(set(labels[p])) >= 2 for p in parts) and not set(labels[parts[0]]) & set(labels[parts[1]])
    assert abs(len(parts[0]) - len(parts[1])) <= 10  # whole groups, balanced greedily: 80 / 70
    rand = partition_cells(150, None, "random", 3, seed=0)
    assert [len(p) for p in rand] == [50, 50, 50]
    assert [p.tolist() for p in rand] == [p.tolist() for p in partition_cells(150, None, "random", 3, seed=0)]
    assert partition_cells(150, None, "random", 1, seed=0)[0].tolist() == list(range(150))
    for how, n, match in (("labels", 6, "one label per runner"), ([[0, 1], [1, 2]], 2, "disjoint"),
                          ("batch", 2, "'labels', 'random'"), ([[0, 1, 2]], 2, "one per runner")):
        with pytest.raises(CellgymError, match=match):
            partition_cells(150, labels, how, n)


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason='ray is not installed (pip install "cellgym[ray]" in its own venv)')
def test_ray_runners_simulate_their_own_data_partitions():
    import ray

    from cellgym.agents.celltrip._ray import RayCollector

    task, kw = "CellEnv-Trip-Integration-v0", {"n_cells": 120, "max_cells": 60, "min_cells": 30,
                                               "episode_length": (15, 25), "view": "neighbours",
                                               "n_neighbours": 8, "n_random": 2}
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        local = CellTripAgent(**FAST).learn(make(task, **kw), 40, seed=3)
        histories = []
        for _ in range(2):  # one runner, partitioned: its partition is every cell, so it is local training
            collector = RayCollector(task, kw, FAST, 1, seed=3, partition="random")
            histories.append(CellTripAgent(**FAST).learn(make(task, **kw), 40, seed=3,
                                                         collector=collector).result.history)
            collector.close()
        assert histories[0]["rollout/reward_per_cell"] == histories[1]["rollout/reward_per_cell"]
        np.testing.assert_allclose(histories[0]["rollout/reward_per_cell"],
                                   local.result.history["rollout/reward_per_cell"], rtol=1e-5)
        collector = RayCollector(task, kw, FAST, 2, seed=0, partition="labels")
        pools = ray.get([r.cell_pool.remote() for r in collector.runners])
        labels = make(task, **kw).labels
        assert not set(labels[pools[0]]) & set(labels[pools[1]])  # each runner: its own cell types
        assert sorted(np.concatenate(pools).tolist()) == list(range(120))
        two = CellTripAgent(**FAST).learn(make(task, **kw), 60, seed=0, collector=collector)
        collector.close()
        assert two.result.env_steps == 60 and np.isfinite(two.result.history["train/value_loss"]).all()
    finally:
        ray.shutdown()
