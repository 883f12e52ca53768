"""CellTRIP world: PettingZoo conformance, batched interface, dynamics, rewards, preprocessing, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

from cellgym.envs.trip import (
    TripConfigError,
    TripParallelEnv,
    fit_decoder,
    fit_modality,
    simulate_multimodal,
    simulate_spatial_tissue,
)
from cellgym.predictors.base.errors import DataSpecError
from cellgym.registry import is_parallel_task, make

TASKS = ["CellEnv-Trip-Integration-v0", "CellEnv-Trip-Imputation-v0"]


def small(task: str, **kw):
    return make(task, n_cells=60, min_cells=20, max_cells=60, episode_length=(15, 25), **kw)


@pytest.mark.parametrize("task", TASKS)
def test_parallel_api_and_seed(task):
    assert is_parallel_task(task)
    with warnings.catch_warnings():
        # cells that were never drawn this episode end without being truncated: expected with 20..60 cells
        warnings.filterwarnings("ignore", message="No agents present but not all possible_agents")
        parallel_api_test(small(task), num_cycles=60)
        parallel_api_test(small(task, view_size=16), num_cycles=60)  # sampled view
    parallel_seed_test(lambda: small(task, view_size=16), num_cycles=60)


def test_different_number_of_cells_per_reset():
    env = small(TASKS[0])
    counts = set()
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        counts.add(len(env.agents))
        assert set(obs) == set(env.agents)
        assert all(env.observation_space(a).contains(obs[a]) for a in env.agents)
    assert len(counts) > 1
    obs, _ = env.reset(seed=0, options={"n_cells": 23})
    assert env.agents == [f"cell_{i}" for i in range(23)]
    actions = {a: env.action_space(a).sample() for a in env.agents}
    obs, rew, *_ = env.step(actions)
    assert set(rew) == set(env.agents) and len(rew) == 23


def test_dict_api_is_a_view_of_the_batched_step():
    env_a, env_b = small(TASKS[0]), small(TASKS[0])
    obs_b = env_b.reset_batch(seed=3)
    obs_a, _ = env_a.reset(seed=3)
    acts = torch.rand(len(env_b.agents), env_b.dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs_a, rew_a, *_ = env_a.step({a: acts[i].numpy() for i, a in enumerate(env_a.agents)})
    obs_b, rew_b, _, _ = env_b.step_batch(acts)
    np.testing.assert_allclose(np.array(list(rew_a.values())), rew_b.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.stack([o["self"] for o in obs_a.values()]), obs_b.states.numpy())
    first = next(iter(obs_a.values()))
    assert all(o["others"] is first["others"] for o in obs_a.values())  # one shared array, no copies
    # each cell's self_slot is its own row of the shared view (so the policy can leave it out)
    for o in obs_a.values():
        np.testing.assert_array_equal(first["others"][o["self_slot"]], o["self"])
        assert o["n_others"] == len(obs_a)


def test_dynamics_follow_the_documented_update():
    env = small(TASKS[1], bounds=1.5, friction=0.2, dt=0.5)
    env.reset_batch(seed=0, options={"n_cells": 30})
    x0, v0 = env.positions.clone(), env.velocities.clone()
    a = torch.full((30, env.dim), 5.0)  # clipped to 1
    env.step_batch(a)
    v = (v0 + 0.5 * 1.0).clamp(-1, 1) * 0.8
    x = x0 + 0.5 * v
    clipped = x.abs() > 1.5
    torch.testing.assert_close(env.positions, x.clamp(-1.5, 1.5))
    torch.testing.assert_close(env.velocities, v.masked_fill(clipped, 0.0))


def test_reward_is_a_difference_of_potentials_and_rewards_moving_toward_the_modalities():
    env = small(TASKS[0], reward_weights={"velocity": 0.0, "action": 0.0})
    obs = env.reset_batch(seed=1, options={"n_cells": 40})
    phi0 = env._phi_dist + env._phi_pin - 0.1 * env.positions.norm(dim=1)
    _, r, _, _ = env.step_batch(torch.zeros(40, env.dim))
    phi1 = env._phi_dist + env._phi_pin - 0.1 * env.positions.norm(dim=1)
    torch.testing.assert_close(r, phi1 - phi0)
    # moving every cell toward a layout that reproduces the first modality's distances raises the reward
    y = env.targets[0][2]
    u, s, _ = torch.linalg.svd(y - y.mean(0), full_matrices=False)
    goal = torch.zeros(40, env.dim)
    goal[:, : min(env.dim, u.shape[1])] = (u * s)[:, : env.dim]
    env.positions = goal.clone()
    env.velocities.zero_()
    env._phi_dist, env._phi_pin = env._distance_potential(goal), env._pinning_potential(goal)
    good = env._phi_dist.mean()
    assert good > env._distance_potential(torch.randn(40, env.dim)).mean()
    del obs


def test_distance_potential_matches_a_direct_computation():
    env = small(TASKS[0], view_size=16)
    env.reset_batch(seed=2, options={"n_cells": 50})
    x, view = env.positions, env.view
    d_env = torch.cdist(x, x[view])
    err = sum(((d_env - torch.cdist(y, y[view])) ** 2).sum(1) for _, _, y in env.targets)
    n_others = (view[None, :] != torch.arange(50)[:, None]).sum(1)
    torch.testing.assert_close(env._distance_potential(x), -err / n_others, rtol=1e-4, atol=1e-4)


def test_procrustes_decoder_recovers_a_rotated_layout():
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(100, 2, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    x = torch.cat([coords, torch.zeros(100, 6)], 1) @ q.T + 3.0
    torch.testing.assert_close(fit_decoder(x, coords, spatial=True), coords, atol=1e-4, rtol=0)
    # a scaled layout is not a rotation: Procrustes does not absorb scale
    assert (fit_decoder(2 * x, coords, spatial=True) - coords).abs().max() > 0.1


def test_preprocessing_counts_pca_and_inverse():
    counts, _, _ = simulate_spatial_tissue(n_cells=200, n_genes=80, seed=0)
    mod = fit_modality(counts, "counts", name="rna", n_pcs=20)
    y = mod.transform(torch.from_numpy(counts))
    assert y.shape == (200, 20)
    i, j = torch.randint(200, (2000,)), torch.randint(200, (2000,))
    assert 0.8 < float((y[i] - y[j]).norm(dim=1).mean()) < 1.2  # scaled to mean distance 1
    full = fit_modality(counts, "counts", name="rna", n_pcs=200)  # no PCA: exact inverse
    z = full.normalise(torch.from_numpy(counts))
    torch.testing.assert_close(full.inverse(full.transform(torch.from_numpy(counts))), z, atol=1e-4, rtol=1e-4)


def test_for_cells_reuses_preprocessing_and_allows_unknown_targets():
    counts, coords, _ = simulate_spatial_tissue(n_cells=120, seed=0)
    env = TripParallelEnv([counts[:80], coords[:80]], kinds=["counts", "spatial"],
                          input_modalities=[0], target_modalities=[1])
    held_out = env.for_cells([counts[80:], None])
    obs = held_out.reset_batch(seed=0)
    assert obs.states.shape == (40, env.state_size)
    _, r, _, _ = held_out.step_batch(torch.zeros(40, env.dim))
    assert torch.isfinite(r).all()
    torch.testing.assert_close(held_out.features[0], env.modalities[0].transform(torch.from_numpy(counts[80:])))


def test_bad_input_raises_clear_errors():
    rna, protein, _ = simulate_multimodal(n_cells=50, seed=0)
    with pytest.raises(DataSpecError, match="same cells"):
        TripParallelEnv([rna, protein[:40]])
    with pytest.raises(TripConfigError, match="input_modalities"):
        TripParallelEnv([rna, protein], input_modalities=[2])
    with pytest.raises(TripConfigError, match="reward_weights keys"):
        TripParallelEnv([rna, protein], reward_weights={"distanse": 1.0})
    with pytest.raises(TripConfigError, match="min_cells"):
        TripParallelEnv([rna, protein], min_cells=40, max_cells=20)
    with pytest.raises(DataSpecError, match="negative"):
        TripParallelEnv([protein], kinds=["counts"])
    env = TripParallelEnv([rna, protein])
    env.reset(seed=0)
    with pytest.raises(TripConfigError, match="shape"):
        env.step_batch(torch.zeros(3, env.dim))
    with pytest.raises(TripConfigError, match="every live cell"):
        env.step({"cell_0": np.zeros(env.dim, np.float32)})
    with pytest.raises(TripConfigError, match="n_cells"):
        env.reset(options={"n_cells": 500})


def _need(path):
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (it sits beside the repo in CI)")
    return path


def test_generic_task_on_merfish(shared_data):
    import anndata as ad

    adata = ad.read_h5ad(_need(shared_data / "spatial/merfish_allen_visp_253genes.h5ad"))
    coords = adata.obs[["x_um", "y_um"]].to_numpy(np.float32)
    env = make("CellEnv-Trip-v0", adatas=[adata, coords], input_modalities=[0], target_modalities=[1],
               kinds=["counts", "spatial"], max_cells=300)
    obs = env.reset_batch(seed=0)
    assert obs.states.shape == (300, 2 * 32 + 64)
    _, r, _, _ = env.step_batch(torch.zeros(300, 32))
    assert torch.isfinite(r).all()


def test_bdtnp_drosophila_loads_as_a_three_dimensional_spatial_modality(shared_data):
    folder = shared_data / "spatial/bdtnp_drosophila"
    dge = np.loadtxt(_need(folder / "dge.txt"), skiprows=1, dtype=np.float32)
    # geometry.txt lists 6078 positions (both embryo halves); the atlas's 3039 cells are the first 3039 (novosparc)
    geometry = np.loadtxt(_need(folder / "geometry.txt"), skiprows=1, dtype=np.float32)[: len(dge)]
    env = TripParallelEnv([dge, geometry], kinds=["log1p", "spatial"], input_modalities=[0],
                          target_modalities=[1], max_cells=200)
    assert env.modalities[1].n_raw == 3
    env.reset_batch(seed=0)
    _, r, _, _ = env.step_batch(torch.zeros(200, 32))
    assert torch.isfinite(r).all()


# ------------------------------------------------------------------------------------------------- device
def _tensors_on(env, device: str) -> set[str]:
    state = [env.positions, env.velocities, env.inputs, env.view, env._dist_sum, env._phi_dist, env._phi_pin,
             *(f for f in env.features if f is not None), *(y for _, _, y in env.targets)]
    return {t.device.type for t in state} | {device}


@pytest.mark.parametrize("view_size", [256, 16])  # all cells in view, and a sampled view
def test_explicit_cpu_device_keeps_every_tensor_there_and_matches_the_default(view_size):
    env = small(TASKS[0], view_size=view_size, device="cpu")
    default = small(TASKS[0], view_size=view_size)
    obs, ref = env.reset_batch(seed=4), default.reset_batch(seed=4)
    actions = torch.rand(len(obs.states), env.dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs, rewards, _, _ = env.step_batch(actions)
    ref, ref_rewards, _, _ = default.step_batch(actions)
    assert env.device == torch.device("cpu") and _tensors_on(env, "cpu") == {"cpu"}
    assert obs.states.device.type == rewards.device.type == obs.view.device.type == "cpu"
    torch.testing.assert_close(obs.states, ref.states, rtol=0, atol=0)
    torch.testing.assert_close(rewards, ref_rewards, rtol=0, atol=0)
    assert env.to("cpu") is env and env.for_cells(env.raw).device == env.device


def test_unusable_devices_fail_with_one_clear_error():
    with pytest.raises(TripConfigError, match="not a torch device"):
        small(TASKS[0], device="gpu0")
    with pytest.raises(TripConfigError, match="not supported"):
        small(TASKS[0], device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(TripConfigError, match=r"'cuda' requested but torch.cuda.is_available\(\) is False"):
            small(TASKS[0], device="cuda")
        assert small(TASKS[0], device="auto").device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_world_matches_the_cpu_world():
    cpu, gpu = small(TASKS[1], view_size=16), small(TASKS[1], view_size=16, device="cuda")
    a, b = cpu.reset_batch(seed=2), gpu.reset_batch(seed=2)
    assert b.states.is_cuda and b.view.is_cuda and _tensors_on(gpu, "cuda") == {"cuda"}
    torch.testing.assert_close(b.states.cpu(), a.states)  # same seed, same episode on both devices
    actions = torch.rand(len(a.states), cpu.dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (a, ra, _, _), (b, rb, _, _) = cpu.step_batch(actions), gpu.step_batch(actions)  # CPU actions are moved
    assert rb.is_cuda and rb.shape == ra.shape
    torch.testing.assert_close(rb.cpu(), ra, rtol=1e-4, atol=1e-4)
    obs, _ = gpu.reset(seed=1)
    assert isinstance(next(iter(obs.values()))["self"], np.ndarray)
    moved = cpu.to("cuda")
    assert moved.positions.is_cuda and moved.step_batch(actions.cuda())[1].is_cuda


# ------------------------------------------------------------------------------------------ neighbour view
@pytest.mark.parametrize("task", TASKS)
def test_neighbour_rewards_equal_all_pairs_when_every_cell_is_a_neighbour(task):
    """k = N - 1 neighbours and no random cells: the O(N k) reward is the all-pairs reward."""
    ref = make(task, n_cells=50, episode_length=(20, 20), view="all")
    nbr = make(task, n_cells=50, episode_length=(20, 20), view="neighbours", n_neighbours=49, n_random=0)
    obs_n = nbr.reset_batch(seed=1)
    # drawn cells come in reverse Cuthill-McKee order of their kNN graph (memory locality), not sorted
    assert sorted(nbr.cell_index) == list(range(50)) and list(nbr.cell_index) != list(range(50))
    obs_r = ref.reset_batch(seed=1, options={"cells": nbr.cell_index})
    assert obs_r.view.shape == (50,) and obs_n.view.shape == (50, 49)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.rand(50, ref.dim, generator=gen) * 2 - 1
        _, r_ref, *_ = ref.step_batch(a)
        _, r_nbr, *_ = nbr.step_batch(a)
        torch.testing.assert_close(r_nbr, r_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(nbr._phi_dist, ref._phi_dist, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("resample", [False, True])
def test_neighbour_all_pairs_estimate_is_unbiased_for_the_all_pairs_potential(resample):
    """distance_pairs="all": neighbour pairs exactly plus random pairs weighted (N - 1) / r estimate the
    all-pairs distance potential without bias (averaged over many draws of the random cells)."""
    ref = make(TASKS[0], n_cells=120, view="all")
    nbr = make(TASKS[0], n_cells=120, view="neighbours", n_neighbours=10, n_random=4, distance_pairs="all",
               resample_random=resample)
    nbr.reset_batch(seed=0)
    cells = nbr.cell_index
    ref.reset_batch(seed=0, options={"cells": cells})
    x = torch.randn(120, ref.dim, generator=torch.Generator().manual_seed(0)) * 0.3
    exact = ref._distance_potential(x)
    draws = []
    for seed in range(300):
        nbr.reset_batch(seed=seed, options={"cells": cells})
        if resample:
            nbr._redraw_random()
        draws.append(nbr._distance_potential(x))
    draws = torch.stack(draws)
    stderr = draws.std(0) / len(draws) ** 0.5
    assert float(((draws.mean(0) - exact) / stderr).abs().max()) < 4.5  # per cell, within sampling error
    assert abs(float(draws.mean() - exact.mean())) < 0.01 * abs(float(exact.mean()))
    # the view's own mean (distance_pairs="view") is a different quantity: it over-weights near pairs
    plain = make(TASKS[0], n_cells=120, view="neighbours", n_neighbours=10, n_random=4, distance_pairs="view")
    plain.reset_batch(seed=0, options={"cells": cells})
    assert abs(float(plain._distance_potential(x).mean() - exact.mean())) > 0.1 * abs(float(exact.mean()))


def test_neighbour_view_is_the_knn_graph_plus_random_other_cells():
    env = make(TASKS[0], n_cells=120, view="neighbours", n_neighbours=10, n_random=3)
    obs = env.reset_batch(seed=0)
    n = len(env.agents)
    assert obs.view.shape == (n, 13)
    assert not (obs.view == torch.arange(n)[:, None]).any()  # never itself
    # the first 10 columns are each cell's 10 nearest cells in the processed inputs
    d = torch.cdist(env.inputs, env.inputs).fill_diagonal_(float("inf"))
    exact = d.topk(10, largest=False).indices
    assert (torch.sort(obs.view[:, :10], 1).values == torch.sort(exact, 1).values).float().mean() > 0.99
    # same seed, same view; another seed, other random cells (the kNN graph is reused for the same cells)
    again = make(TASKS[0], n_cells=120, view="neighbours", n_neighbours=10, n_random=3).reset_batch(seed=0)
    torch.testing.assert_close(again.view, obs.view)
    other = env.reset_batch(seed=1, options={"cells": env.cell_index})
    torch.testing.assert_close(other.view[:, :10], obs.view[:, :10])
    assert not torch.equal(other.view[:, 10:], obs.view[:, 10:])
    # the reward stays fixed-pair: the view does not change within an episode
    step_obs, *_ = env.step_batch(torch.zeros(n, env.dim))
    assert torch.equal(step_obs.view, other.view)


def test_neighbour_view_passes_the_pettingzoo_api_and_seed_tests():
    kw = {"view": "neighbours", "n_neighbours": 6, "n_random": 2}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No agents present but not all possible_agents")
        parallel_api_test(small(TASKS[0], **kw), num_cycles=30)
    parallel_seed_test(lambda: small(TASKS[1], **kw), num_cycles=30)
    env = small(TASKS[0], **kw)
    obs, _ = env.reset(seed=0, options={"n_cells": 20})
    batched = env.reset_batch(seed=0, options={"n_cells": 20})
    for i, o in enumerate(obs.values()):
        assert o["n_others"] == 8 and o["self_slot"] == env.n_view == 8
        np.testing.assert_array_equal(o["others"], batched.states[batched.view[i]].numpy())


@pytest.mark.parametrize("backend", ["faiss", "faiss-ivf", pytest.param("pynndescent", marks=pytest.mark.slow)])  # numba JIT: minutes
def test_approximate_knn_backends_find_the_exact_neighbours(backend):
    from cellgym.envs.trip import knn_graph

    pytest.importorskip(backend.split("-")[0])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=gen) + 4 * torch.randn(6, 12, generator=gen).repeat(100, 1)
    exact = knn_graph(x, 8, backend="exact")
    approx = knn_graph(x, 8, backend=backend)
    assert approx.shape == (600, 8) and not (approx == torch.arange(600)[:, None]).any()
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 8 for a, b in zip(exact, approx, strict=True)])
    assert recall > 0.95, recall
    d = torch.cdist(x, x).fill_diagonal_(float("inf"))
    torch.testing.assert_close(torch.sort(exact, 1).values, torch.sort(d.topk(8, largest=False).indices, 1).values)


def test_bad_view_arguments_are_one_clear_error():
    with pytest.raises(TripConfigError, match="view must be"):
        small(TASKS[0], view="nearest")
    with pytest.raises(TripConfigError, match="n_random"):
        small(TASKS[0], view="neighbours", n_random=-1)
    with pytest.raises(TripConfigError, match="distance_pairs must be"):
        small(TASKS[0], view="neighbours", distance_pairs="near")


def test_cell_pool_restricts_episodes_to_a_data_partition_and_all_rows_change_nothing():
    pool = np.arange(0, 120, 3)
    env = make("CellEnv-Trip-Integration-v0", n_cells=120, cell_pool=pool, min_cells=10, max_cells=30)
    seen = []
    for seed in range(5):
        env.reset_batch(seed=seed)
        seen.extend(env.cell_index)
    assert set(seen) <= set(pool) and len(set(seen)) > 30  # drawn from the pool only, and from much of it
    plain = make("CellEnv-Trip-Integration-v0", n_cells=120, min_cells=10, max_cells=30)
    every = make("CellEnv-Trip-Integration-v0", n_cells=120, min_cells=10, max_cells=30, cell_pool=np.arange(120))
    for seed in range(3):
        plain.reset_batch(seed=seed), every.reset_batch(seed=seed)
        np.testing.assert_array_equal(plain.cell_index, every.cell_index)  # the whole data as a pool: same episodes
    assert make("CellEnv-Trip-Integration-v0", n_cells=120, cell_pool=pool).max_cells == len(pool)
    for bad, match in (([1, 1, 2], "distinct"), ([0, 500], "distinct row indices"), ([0.5, 1.5], "distinct")):
        with pytest.raises(TripConfigError, match=match):
            make("CellEnv-Trip-Integration-v0", n_cells=120, cell_pool=bad)
    with pytest.raises(TripConfigError, match=r"len\(cell_pool\) \(40\)"):
        make("CellEnv-Trip-Integration-v0", n_cells=120, cell_pool=pool, max_cells=60)


@pytest.mark.parametrize("pairs", ["all", "view"])
def test_resampled_random_cells_change_every_step_and_keep_rewards_a_difference_of_potentials(pairs):
    env = make("CellEnv-Trip-Integration-v0", n_cells=120, max_cells=120, view="neighbours", n_neighbours=6,
               n_random=4, resample_random=True, distance_pairs=pairs)
    obs = env.reset_batch(seed=0)
    knn = obs.view[:, :6].clone()
    gen = torch.Generator().manual_seed(0)
    x_before = env.positions.clone()
    nxt, reward, _, _ = env.step_batch(torch.rand(120, env.dim, generator=gen) * 2 - 1)
    assert torch.equal(nxt.view[:, :6], knn) and not torch.equal(nxt.view[:, 6:], obs.view[:, 6:])
    assert not (nxt.view == torch.arange(120)[:, None]).any()
    # the step's distance term is the potential change over the new pairs: recompute both ends directly
    ys = [y for _, _, y in env.targets]

    weight, norm = torch.ones(nxt.view.shape), nxt.view.shape[1]
    if pairs == "all":  # random pairs weigh (N - 1) / r unless they repeat a neighbour; the mean is over N - 1
        weight[:, 6:] = (~(nxt.view[:, 6:, None] == knn[:, None, :]).any(2)).float() * 119 / 4
        norm = 119

    def phi(x):
        e = (x[:, None] - x[nxt.view]).norm(dim=2)
        return -sum((weight * (e - (y[:, None] - y[nxt.view]).norm(dim=2)) ** 2).sum(1) for y in ys) / norm

    torch.testing.assert_close(env._distance_potential(env.positions), phi(env.positions), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(env._distance_potential(x_before), phi(x_before), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(reward).all()
