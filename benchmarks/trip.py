"""CellTRIP benchmarks: speed of world + policy, and what a trained model shows (imputation, integration).

``speed``: steps per second, batched interface vs PettingZoo dict API.

Single thread, random weights, dim 32, two modalities of 64 and 32 features (both input and target),
N = 100, 1000, 4000 cells; once with the reference implementation's view (every cell sees all others up
to 1000 cells, a 1000-cell sample beyond) and once with cellgym's default view (``view_size=256``).
The reference CellTRIP implementation measured 393, 30.5 and 6.5 steps/s on this kind of machine with
the same settings; ratios are printed next to it.

    .venv/bin/python benchmarks/trip.py speed [--min-seconds 3]
    .venv/bin/python benchmarks/trip.py merfish [--steps 3000]      # needs ../shared/data
    .venv/bin/python benchmarks/trip.py integration [--steps 3000]
    .venv/bin/python benchmarks/trip.py perturbation [--steps 3000]   # uses cellgym.predictors.grn
    .venv/bin/python benchmarks/trip.py stages [--steps 3000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cellgym.agents.celltrip import CellTripAgent
from cellgym.envs.trip import TripParallelEnv

REFERENCE = {100: 393.0, 1000: 30.5, 4000: 6.5}


def make_world(n_cells: int, view_size: int, seed: int = 0) -> TripParallelEnv:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_cells, 8))
    m1 = latent @ rng.normal(size=(8, 64)) + 0.3 * rng.normal(size=(n_cells, 64))
    m2 = latent @ rng.normal(size=(8, 32)) + 0.3 * rng.normal(size=(n_cells, 32))
    return TripParallelEnv([m1, m2], kinds=["features", "features"], dim=32, view_size=view_size,
                           episode_length=(10**9, 10**9))


def steps_per_second(env: TripParallelEnv, agent: CellTripAgent, *, dict_api: bool, min_seconds: float) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    if dict_api:
        obs, _ = env.reset(seed=0)
        step = lambda o: env.step(agent.act(o, env, deterministic=False))[0]  # noqa: E731
    else:
        obs = env.reset_batch(seed=0)
        step = lambda o: env.step_batch(agent.model.act(o, generator=gen)[0])[0]  # noqa: E731
    with torch.no_grad():
        obs = step(obs)  # warm-up
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while n < 3 or time.perf_counter() - start < min_seconds:
            obs = step(obs)
            n += 1
    # The machine is shared: CPU time of this (single-threaded) process is the fairer clock; wall is printed too.
    return n / (time.process_time() - cpu), n / (time.perf_counter() - start)


def speed(cells: list[int], min_seconds: float) -> None:
    print("steps/s per CPU-second of this process (wall-clock steps/s in brackets; the machine is shared)")
    print("| view | N | batched steps/s | agent-steps/s | vs reference | dict-API steps/s | dict overhead |")
    print("|---|---|---|---|---|---|---|")
    for label, view_size in (("reference (all <=1000, sample 1000)", 1000), ("cellgym default (256)", 256)):
        for n in cells:
            env = make_world(n, view_size)
            agent = CellTripAgent()
            agent._check_env(env)
            batched, batched_wall = steps_per_second(env, agent, dict_api=False, min_seconds=min_seconds)
            dicts, dicts_wall = steps_per_second(env, agent, dict_api=True, min_seconds=min_seconds)
            print(f"| {label} | {n} | {batched:.1f} ({batched_wall:.1f}) | {batched * n:,.0f} | "
                  f"{batched / REFERENCE[n]:.2f}x (ref {REFERENCE[n]}) | {dicts:.1f} ({dicts_wall:.1f}) | "
                  f"{batched / dicts:.2f}x |", flush=True)


# ------------------------------------------------------------------------------------- MERFISH imputation
MERFISH = Path(__file__).resolve().parents[2] / "shared/data/spatial/merfish_allen_visp_253genes.h5ad"


def merfish_imputation(steps: int, seed: int = 0, n_reference: int = 700) -> dict[str, float]:
    """Impute held-out cells' (x, y) in µm from expression; CellTRIP next to kNN and linear regression.

    80/20 random split of cells. CellTRIP trains on episodes of 256 training cells; to impute, the
    held-out cells are simulated together with ``n_reference`` training cells, a decoder from position to
    (x, y) is fitted on the reference cells' steady-state positions and applied to the held-out cells.
    The baselines regress (x, y) on the same 64-PC expression features (fitted on training cells only).
    """
    import anndata as ad
    from sklearn.linear_model import LinearRegression
    from sklearn.neighbors import KNeighborsRegressor

    if not MERFISH.exists():
        raise SystemExit(f"{MERFISH} is absent; the MERFISH benchmark needs ../shared/data.")
    adata = ad.read_h5ad(MERFISH)
    counts = np.asarray(adata.X, dtype=np.float32)
    coords = adata.obs[["x_um", "y_um"]].to_numpy(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    test, train = order[: len(counts) // 5], order[len(counts) // 5:]
    env = TripParallelEnv([counts[train], coords[train]], kinds=["counts", "spatial"], names=["rna", "spatial"],
                          input_modalities=[0], target_modalities=[1], max_cells=256, episode_length=(50, 100))
    expr = env.modalities[0]
    x_train = expr.transform(torch.from_numpy(counts[train])).numpy()
    x_test = expr.transform(torch.from_numpy(counts[test])).numpy()

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(((pred - coords[test]) ** 2).sum(1).mean()))

    results = {"predict the training mean": rmse(np.broadcast_to(coords[train].mean(0), coords[test].shape))}
    for k in (5, 10, 20):
        knn = KNeighborsRegressor(n_neighbors=k).fit(x_train, coords[train])
        results[f"kNN regression (k={k}) on 64 PCs"] = rmse(knn.predict(x_test))
    results["linear regression on 64 PCs"] = rmse(LinearRegression().fit(x_train, coords[train]).predict(x_test))

    def celltrip_rmse(agent: CellTripAgent) -> float:
        reference = rng.choice(len(train), n_reference, replace=False)
        world = env.for_cells([np.concatenate([counts[train][reference], counts[test]]), None],
                              max_cells=n_reference + len(test))
        manager = agent.manager(world, cells=np.arange(n_reference + len(test)), seed=seed)
        manager.simulate(agent.config.steady_state_steps)
        known = np.arange(n_reference + len(test)) < n_reference
        manager.fit_decoders(known, targets={1: coords[train][reference]})
        return rmse(manager.impute(1)[~known])

    untrained = CellTripAgent()
    untrained._check_env(env)
    results["CellTRIP, untrained policy (random weights)"] = celltrip_rmse(untrained)
    start = time.process_time()
    agent = CellTripAgent().learn(env, steps, seed=seed)
    cpu = time.process_time() - start
    results[f"CellTRIP, trained {steps} steps ({agent.result.agent_steps:,} agent-steps, {cpu:.0f} CPU-s)"] = \
        celltrip_rmse(agent)
    print(f"MERFISH VISp, {len(train)} training / {len(test)} held-out cells, seed {seed}")
    print("| method | held-out RMSE of (x, y), µm |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} |")
    return results


# ------------------------------------------------------------------------------------------ integration
def knn_label_agreement(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each cell's k nearest neighbours (Euclidean) that share its label."""
    d = torch.cdist(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32))
    d.fill_diagonal_(float("inf"))
    nn_idx = d.topk(k, largest=False).indices.numpy()
    return float((labels[nn_idx] == labels[:, None]).mean())


def integration(steps: int, seed: int = 0) -> dict[str, float]:
    """kNN label agreement of cell types in the space before and after simulating the trained policy."""
    from cellgym.registry import make

    env = make("CellEnv-Trip-Integration-v0", n_cells=300, seed=seed, episode_length=(50, 100))
    labels = env.labels
    results = {f"modality {m.name} (processed)": knn_label_agreement(f.numpy(), labels)
               for m, f in zip(env.modalities, env.features, strict=True)}
    untrained = CellTripAgent()
    untrained._check_env(env)
    agent = CellTripAgent().learn(env, steps, seed=seed)
    for name, policy in (("untrained policy", untrained), (f"trained policy ({steps} steps)", agent)):
        manager = policy.manager(env, cells=np.arange(env.n_total), seed=seed + 1)
        start = knn_label_agreement(manager.positions, labels)
        manager.simulate(agent.config.steady_state_steps)
        results[f"space at reset (random positions), {name}"] = start
        results[f"space after {agent.config.steady_state_steps} steps, {name}"] = \
            knn_label_agreement(manager.positions, labels)
    print("| space | kNN (k=10) cell-type agreement |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.3f} |")
    return results


# ----------------------------------------------------------------------------------- in-silico perturbation
def boolean_screen_world(seed: int = 0, n_noise_genes: int = 20) -> tuple[TripParallelEnv, np.ndarray, list[str]]:
    """Cells of the Krumsiek 2011 myeloid Boolean model (cellgym.predictors.grn) under every knockout, plus
    ``n_noise_genes`` genes that no network gene regulates (independent Poisson counts, log1p)."""
    from cellgym.predictors.grn import BooleanPredictor, simulate_screen

    predictor = BooleanPredictor()
    kos = [p for p in predictor.perturbations if p.endswith("_KO")]
    adata = simulate_screen(predictor, n_cells_per_condition=60, perturbations=kos, seed=seed)
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    noise = np.log1p(rng.poisson(rng.uniform(20, 200, n_noise_genes), (len(x), n_noise_genes))).astype(np.float32)
    genes = list(adata.var_names) + [f"noise_{i}" for i in range(n_noise_genes)]
    # 3 PCs: the elbow of the standardised spectrum (eigenvalues 4.35, 2.36, then a noise floor of ~1.2-1.3)
    env = TripParallelEnv([np.concatenate([x, noise], 1)], kinds=["log1p"], names=["rna"], n_pcs=3, dim=16,
                          max_cells=240, episode_length=(50, 100))
    return env, adata.obs["perturbation"].to_numpy().astype(str), genes


def perturbation(steps: int, seed: int = 0, regulator: str = "Pu1") -> dict[str, float]:
    """Clamp a regulator to its knockout level in control cells: do they move toward the knockout cells?
    Then rank every gene by the movement its clamping causes (network genes vs unregulated noise genes)."""
    env, condition, genes = boolean_screen_world(seed)
    g = genes.index(regulator)
    agent = CellTripAgent().learn(env, steps, seed=seed)
    rng = np.random.default_rng(seed)
    control = np.flatnonzero(condition == "control")
    ko = np.flatnonzero(condition == f"{regulator}_KO")
    others = rng.choice(np.flatnonzero((condition != "control") & (condition != f"{regulator}_KO")), 80, replace=False)
    cells = np.concatenate([control, ko, others])
    manager = agent.manager(env, cells=cells, seed=seed)
    manager.simulate(agent.config.steady_state_steps)
    is_control = np.arange(len(cells)) < len(control)
    is_ko = (np.arange(len(cells)) >= len(control)) & (np.arange(len(cells)) < len(control) + len(ko))
    ko_level = float(np.median(env.raw[0][ko, g]))
    steady = manager.save_state()
    manager.add_perturbation([g], ko_level, modality=0, clamping="post")
    res = manager.simulate_perturbation(100)
    centroid_ctrl = res.control[is_ko].mean(0)
    centroid_pert = res.perturbed[is_ko].mean(0)
    d_before = np.linalg.norm(res.control[is_control] - centroid_ctrl, axis=1)
    d_after = np.linalg.norm(res.perturbed[is_control] - centroid_pert, axis=1)
    spread = float(np.linalg.norm(res.control - res.control.mean(0), axis=1).mean())
    results = {f"control cells' distance to {regulator}_KO centroid, unperturbed (/ population radius)":
               float(d_before.mean()) / spread,
               f"... with {regulator} clamped to its KO level ({ko_level:.2f}, 'post')": float(d_after.mean()) / spread,
               "fraction of control cells that moved closer": float((d_after < d_before).mean())}
    manager.load_state(steady)
    manager.clear_perturbations()
    low = np.quantile(env.raw[0][cells], 0.05, axis=0)
    ranking = manager.prioritise(list(range(len(genes))), low, modality=0, clamping="post", time=50)
    ranks = {genes[f]: r + 1 for r, (f, _) in enumerate(ranking)}
    network = [n for n in genes if not n.startswith("noise_")]
    results[f"rank of {regulator} among {len(genes)} genes"] = ranks[regulator]
    results["mean rank of the 11 network genes"] = float(np.mean([ranks[n] for n in network]))
    results["mean rank of the 20 noise genes"] = float(np.mean([ranks[n] for n in genes if n.startswith("noise_")]))
    print("| perturbation measure | value |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.3f} |")
    print("ranking (gene, mean displacement):", [(genes[f], round(v, 4)) for f, v in ranking[:12]])
    return results


# ----------------------------------------------------------------------------------------- stage recovery
def simulate_development(n_cells: int = 600, n_genes: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Counts of cells along a pseudotime t in [0, 1]: every gene switches up or down at its own time."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n_cells)
    switch, sign = rng.uniform(0.1, 0.9, n_genes), rng.choice([-1.0, 1.0], n_genes)
    log_mean = 1.5 + 1.5 * sign / (1 + np.exp(-(t[:, None] - switch) * 12))
    return rng.poisson(np.exp(log_mean)).astype(np.float32), t


def stages(steps: int, seed: int = 0) -> dict[str, float]:
    """Recover the middle stage of a simulated differentiation from its first and last stage."""
    from sklearn.neighbors import KNeighborsRegressor

    from cellgym.agents.celltrip import recover_stages

    counts, t = simulate_development(seed=seed)
    env = TripParallelEnv([counts], kinds=["counts"], names=["rna"], n_pcs=16, max_cells=200,
                          episode_length=(50, 100))
    agent = CellTripAgent().learn(env, steps, seed=seed)
    rec = recover_stages(agent, env, counts[t < 0.2], counts[t > 0.8], n_pseudocells=15, time=100,
                         record_every=10, seed=seed)
    # read each intermediate state's pseudotime off the real cells (kNN regression in processed space)
    clock = KNeighborsRegressor(10).fit(env.features[0].numpy(), t)
    times = [float(clock.predict(s).mean()) for s in rec.states]
    print("| record (every 10 steps) | " + " | ".join(str(i) for i in range(len(times))) + " |")
    print("|---" * (len(times) + 1) + "|")
    print("| mean pseudotime of the decoded states | " + " | ".join(f"{x:.2f}" for x in times) + " |")
    return {"first": times[0], "last": times[-1]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "merfish", "integration", "perturbation", "stages"])
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.what == "speed":
        speed(args.cells, args.min_seconds)
    elif args.what == "merfish":
        merfish_imputation(args.steps, args.seed)
    elif args.what == "integration":
        integration(args.steps, args.seed)
    elif args.what == "perturbation":
        perturbation(args.steps, args.seed)
    else:
        stages(args.steps, args.seed)


if __name__ == "__main__":
    main()
