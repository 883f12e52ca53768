"""CellTRIP benchmarks: speed of world + policy at population scale, and what a trained model shows.

``speed``: policy + environment steps (batched interface, random weights, no gradient), dim 32, two
modalities of 64 and 32 features (both input and target). For each N, every configuration below is built
first and then stepped in turns (blocks of ``--block`` steps, ``--rounds`` rounds), so every ratio printed
compares configurations measured side by side in this invocation:

- views: ``reference`` (CellTRIP's: all cells up to 1000, a 1000-cell sample redrawn every step beyond),
  ``sampled`` (cellgym's ``view_size=256``), ``neighbours`` (32 nearest cells in modality space + 8 random);
- policy sizes: cellgym's default (width 64, 1 head) and CellTRIP's (width 128, 2 heads, LayerNorms, 4x MLP,
  256-wide actor head; ``CELLTRIP_SIZE``);
- ``dense``: the same step written plainly as CellTRIP's own code computes it (celltrip/environment.py,
  celltrip/policy.py ``EntitySelfAttentionLite``, CellTRIP's ``PPO`` defaults): distance reward over all N x N
  pairs every step with the modality distances cached per episode, the first layers' feature part cached per
  episode, ``nn.MultiheadAttention`` over a view of up to 1000 cells; the reference the ratios divide by
  (:class:`DenseReferenceWorld`, :class:`DenseReferencePolicy`).

CPU-ms/step is this process's CPU time (all threads) per step; steps/s and agent-steps/s are per CPU-second
(wall-clock steps/s in brackets: the machine may be shared). Peak RSS is measured per configuration in a
fresh child process (reset + 2 steps).

    .venv/bin/python benchmarks/trip.py speed [--cells 1000 4000 10000 100000] [--plot docs/trip_scale.png]
    .venv/bin/python benchmarks/trip.py threads [--cells 4000] [--views neighbours] [--sizes cellgym]  # 1 vs 2 threads
    .venv/bin/python benchmarks/trip.py knn [--cells 100000]          # kNN libraries, time and recall
    .venv/bin/python benchmarks/trip.py merfish [--steps 3000] [--view neighbours]  # needs ../shared/data
    .venv/bin/python benchmarks/trip.py integration [--steps 3000] [--view neighbours]
    .venv/bin/python benchmarks/trip.py perturbation [--steps 3000]   # uses cellgym.predictors.grn
    .venv/bin/python benchmarks/trip.py stages [--steps 3000]
"""

from __future__ import annotations

import os

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning. With the default (spin) policy
# two torch threads on a shared 2-core machine measured 5-9x slower than one; passive, within 1.2x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellgym.agents.celltrip import CellTripAgent
from cellgym.agents.celltrip._ppo import CELLTRIP_SIZE
from cellgym.envs.trip import TripParallelEnv

VIEWS = {"reference": {"view": "sampled", "view_size": 1000}, "sampled": {"view": "sampled", "view_size": 256},
         "neighbours": {"view": "neighbours", "n_neighbours": 32, "n_random": 8},
         "neighbours-view-pairs": {"view": "neighbours", "n_neighbours": 32, "n_random": 8, "distance_pairs": "view"},
         "neighbours-redrawn": {"view": "neighbours", "n_neighbours": 32, "n_random": 8, "resample_random": True},
         "neighbours-16-random": {"view": "neighbours", "n_neighbours": 32, "n_random": 16}}
"""Views of the benchmarks. ``neighbours`` is the world's default neighbour reward (the all-pairs estimate);
``neighbours-view-pairs`` the mean over the view's own pairs (the reward before this estimate)."""
SIZES = {"cellgym": {}, "celltrip": CELLTRIP_SIZE}


def make_world(n_cells: int, seed: int = 0, **kwargs) -> TripParallelEnv:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_cells, 8)).astype(np.float32)
    m1 = latent @ rng.normal(size=(8, 64)).astype(np.float32) + 0.3 * rng.normal(size=(n_cells, 64)).astype(np.float32)
    m2 = latent @ rng.normal(size=(8, 32)).astype(np.float32) + 0.3 * rng.normal(size=(n_cells, 32)).astype(np.float32)
    return TripParallelEnv([m1, m2], kinds=["features", "features"], dim=32, episode_length=(10**9, 10**9), **kwargs)


# ------------------------------------------------------------------------------------- dense reference
CELLTRIP_VISION = 1000
"""CellTRIP's ``PPO(vision_size=1000, forward_batch_size=1000)`` (celltrip/policy.py): cells seen per step, and
query cells per attention call."""


class DenseReferencePolicy(nn.Module):
    """CellTRIP's default policy written plainly (celltrip/policy.py ``EntitySelfAttentionLite`` with the
    defaults ``PPO`` gives it: width 2 x positional dim = 128 at dim 32, 2 heads, one residual block).

    - First layers as CellTRIP splits them: ``pos_embed(position, velocity) + feat_embed(input features)``,
      PReLU, a width x width layer; one such stack for the querying cell (self) and one for the cells in view
      (nodes).
    - The feature part ``feat_embed(features)`` of all N cells is computed once per episode and reused every
      step (CellTRIP's ``feature_embeds``: modalities do not move); the view's node rows are gathered from it.
    - The positional part is standardised every step (CellTRIP's ``input_standardization.apply``).
    - ``ResidualAttentionBlock``: LayerNorm on queries and on keys/values, ``nn.MultiheadAttention`` with the
      cell itself masked, residual, LayerNorm, 4x MLP (PReLU), residual; queries in chunks of
      ``forward_batch_size`` = 1000 cells over the shared view.
    - ``ContinuousActions``: PReLU, width -> 2 width, PReLU, -> dim, Tanh; Gaussian noise. Critic: PReLU, -> 1.
    """

    def __init__(self, n_moving: int, n_features: int, dim: int, width: int = 128, heads: int = 2) -> None:
        super().__init__()
        self.self_pos, self.self_feat = nn.Linear(n_moving, width), nn.Linear(n_features, width)
        self.node_pos, self.node_feat = nn.Linear(n_moving, width), nn.Linear(n_features, width)
        self.self_embed = nn.Sequential(nn.PReLU(), nn.Linear(width, width))
        self.node_embed = nn.Sequential(nn.PReLU(), nn.Linear(width, width))
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.PReLU(), nn.Linear(4 * width, width))
        self.actor = nn.Sequential(nn.PReLU(), nn.Linear(width, 2 * width), nn.PReLU(), nn.Linear(2 * width, dim),
                                   nn.Tanh())
        self.critic = nn.Sequential(nn.PReLU(), nn.Linear(width, 1))
        self.log_std = nn.Parameter(torch.full((dim,), -1.0))
        self.register_buffer("moving_mean", torch.zeros(n_moving))
        self.register_buffer("moving_std", torch.ones(n_moving))
        self.feature_embeds: tuple[torch.Tensor, torch.Tensor] | None = None

    def start_episode(self, features: torch.Tensor) -> None:
        """The feature part of the first layers for every cell of the episode (CellTRIP's ``feature_embeds``)."""
        self.feature_embeds = self.self_feat(features), self.node_feat(features)

    def forward(self, moving: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Sampled actions (N, dim) from positions and velocities ``moving`` (N, 2 dim) and the view (K,)."""
        feat_self, feat_node = self.feature_embeds
        moving = (moving - self.moving_mean) / self.moving_std
        own = self.self_embed(self.self_pos(moving) + feat_self)
        nodes = self.norm_kv(self.node_embed(self.node_pos(moving[view]) + feat_node[view]))[None]
        out = []
        for start in range(0, len(own), CELLTRIP_VISION):
            rows = torch.arange(start, min(len(own), start + CELLTRIP_VISION))
            x = own[rows]
            mask = view[None, :] == rows[:, None]  # True: not attended (the cell itself)
            pooled, _ = self.attention(self.norm_q(x)[None], nodes, nodes, attn_mask=mask, need_weights=False)
            x = x + pooled[0]
            out.append(x + self.ff(self.norm_ff(x)))
        z = torch.cat(out)
        self.critic(z)
        mean = self.actor(z)
        return mean + self.log_std.exp() * torch.randn_like(mean)


class DenseReferenceWorld:
    """The world's step written plainly, as celltrip/environment.py computes its rewards.

    - Distance matching over **all N x N pairs** every step: Euclidean distances of the positions
      (``torch.cdist``; CellTRIP's ``euclidean_distance(self.pos)`` in ``get_distance_match``) against each
      target modality's N x N distances, computed once per episode and cached (CellTRIP's ``self.dist``); the
      potential after a step is kept for the next step's "before" (CellTRIP's ``cached_dist_match``).
    - Pinning: least squares from (positions, 1) to each target modality, once per step (``get_pinning``'s
      ``torch.linalg.lstsq``); kept for the next step's "before" like the distance term.
    - Origin distance, squared velocity and squared action terms.
    - The reward definition is cellgym's (squared mismatch, mean over the other N - 1 cells; weights of
      :class:`~cellgym.envs.trip.RewardWeights`), so it equals the world's ``view="all"`` reward; CellTRIP's
      default takes ``log(err^2 + eps)`` per modality, one more elementwise pass of the same size.
    - The policy sees all cells up to 1000, else 1000 random cells redrawn every step (``vision_size``).
    """

    def __init__(self, env: TripParallelEnv, view_size: int = CELLTRIP_VISION, seed: int = 0) -> None:
        self.env, self.view_size = env, view_size
        self.gen = torch.Generator().manual_seed(seed)
        self.ys = [env.features[k] for k in env.target_modalities]
        self.inputs = torch.cat([env.features[k] for k in env.input_modalities], 1)
        n = len(self.inputs)
        self.x = torch.randn(n, env.dim, generator=self.gen) / math.sqrt(env.dim)
        self.v = torch.zeros(n, env.dim)
        self.dist = [torch.cdist(y, y) for y in self.ys]  # once per episode
        self.phi = self.potential(self.x)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """Minus (distance mismatch over all pairs + pinning error + origin distance), weighted, (N,)."""
        w = self.env.reward_weights
        e = torch.cdist(x, x)
        err = sum((e - d).pow(2).sum(1) for d in self.dist) / (len(x) - 1)
        xc = torch.cat([x, torch.ones(len(x), 1)], 1)
        pin = sum((xc @ torch.linalg.lstsq(xc, y).solution - y).pow(2).sum(1) for y in self.ys)
        return -(w.distance * err + w.pinning * pin + w.origin * x.norm(dim=1))

    def step(self, policy: DenseReferencePolicy) -> torch.Tensor:
        env, n, w = self.env, len(self.x), self.env.reward_weights
        view = torch.randperm(n, generator=self.gen)[: self.view_size] if n > self.view_size else torch.arange(n)
        a = policy(torch.cat([self.x, self.v], 1), view).clamp(-1, 1)
        v = ((self.v + env.dt * env.force * a).clamp(-env.max_velocity, env.max_velocity)) * (1 - env.friction)
        x = self.x + env.dt * v
        phi = self.potential(x)
        reward = phi - self.phi - w.velocity * v.pow(2).sum(1) - w.action * a.pow(2).sum(1)
        self.x, self.v, self.phi = x, v, phi
        return reward


# -------------------------------------------------------------------------------------------- speed
class Config:
    """One configuration to time: a world and a policy, or the dense reference."""

    def __init__(self, n: int, view: str, size: str) -> None:
        self.n, self.view, self.size = n, view, size
        self.cpu = self.wall = 0.0
        self.steps = 0
        if view == "dense":
            env = make_world(n, view="sampled", view_size=n)  # only its processed features are used
            env.reset_batch(seed=0)
            self.world = DenseReferenceWorld(env)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.model = DenseReferencePolicy(2 * env.dim, self.world.inputs.shape[1], env.dim)
            with torch.no_grad():
                self.model.start_episode(self.world.inputs)
            self.params = sum(p.numel() for p in self.model.parameters())
            self._step = lambda: self.world.step(self.model)
            return
        self.env = make_world(n, **VIEWS[view])
        agent = CellTripAgent(**SIZES[size])
        agent._check_env(self.env, seed=0)
        self.model = agent.model
        self.params = sum(p.numel() for p in self.model.parameters())
        self.gen = torch.Generator().manual_seed(0)
        self.obs = self.env.reset_batch(seed=0)

    @property
    def label(self) -> str:
        return "dense reference (CellTRIP size, reference view)" if self.view == "dense" else f"{self.view}, {self.size}"

    def step(self) -> None:
        if self.view == "dense":
            self._step()
        else:
            self.obs = self.env.step_batch(self.model.act(self.obs, generator=self.gen)[0])[0]

    @torch.no_grad()
    def run(self, steps: int) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.step()
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        self.steps += steps


def peak_rss_gb(n: int, view: str, size: str) -> float:
    """Peak RSS (GB) of a fresh process that builds this configuration and runs 2 steps."""
    # VmHWM of the child's own address space (ru_maxrss would carry over the parent's peak through fork/exec)
    code = (f"import sys; sys.argv = ['trip.py']; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch;"
            "torch.set_num_threads(1); import trip;"
            f"c = trip.Config({n}, {view!r}, {size!r}); c.run(2);"
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        return float("nan")
    return int(out.stdout.strip().splitlines()[-1]) / 1e6  # kB -> GB


def speed(cells: list[int], views: list[str], sizes: list[str], rounds: int, block: int, rss: bool,
          plot: str | None) -> list[dict]:
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}")
    rows = []
    for n in cells:
        configs = [Config(n, v, s) for v in views for s in sizes if v != "dense"]
        if "dense" in views and n <= 10_000:
            configs.append(Config(n, "dense", "celltrip"))
        for c in configs:
            c.run(1)  # warm-up (not counted)
            c.cpu = c.wall = 0.0
            c.steps = 0
        for _ in range(rounds):  # interleaved: every configuration gets a block per round
            for c in configs:
                c.run(block)
        load = os.getloadavg()[0]
        print(f"\nN = {n:,} (load average {load:.1f}; {rounds} rounds x {block} steps per configuration)")
        print("| configuration | params | CPU-ms/step | steps/s (wall) | agent-steps/s | peak RSS GB | vs dense |")
        print("|---|---|---|---|---|---|---|")
        dense = next((c for c in configs if c.view == "dense"), None)
        for c in configs:
            ms = 1000 * c.cpu / c.steps
            sps, wall_sps = c.steps / c.cpu, c.steps / c.wall
            mem = peak_rss_gb(n, c.view, c.size) if rss else float("nan")
            ratio = f"{(dense.cpu / dense.steps) / (c.cpu / c.steps):.1f}x" if dense is not None else "-"
            print(f"| {c.label} | {c.params:,} | {ms:.1f} | {sps:.2f} ({wall_sps:.2f}) | {sps * n:,.0f} | "
                  f"{mem:.2f} | {ratio} |", flush=True)
            rows.append({"n": n, "view": c.view, "size": c.size, "params": c.params, "cpu_ms": ms,
                         "steps_per_s": sps, "wall_steps_per_s": wall_sps, "peak_rss_gb": mem, "load": load})
        del configs
    if plot:
        plot_scaling(rows, plot)
    return rows


def plot_scaling(rows: list[dict], path: str) -> None:
    """Log-log CPU-ms per step against N, one line per configuration, with a slope-1 guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key in sorted({(r["view"], r["size"]) for r in rows}):
        pts = sorted((r["n"], r["cpu_ms"]) for r in rows if (r["view"], r["size"]) == key)
        ax.loglog(*zip(*pts, strict=True), "o-", label=", ".join(key))
    ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
    base = min(r["cpu_ms"] for r in rows if r["n"] == ns[0])
    ax.loglog(ns, base * ns / ns[0], "k:", label="linear in N")
    ax.set_xlabel("cells N")
    ax.set_ylabel("CPU-ms per policy + env step")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    print(f"plot written to {path}")


def threads(cells: list[int], rounds: int, block: int, views: list[str], sizes: list[str]) -> None:
    """Steps at 1 and 2 torch threads, interleaved in one process (OMP_WAIT_POLICY as set). With 2 threads
    the big ops use torch's intra-op threads and the neighbour chunks run in 2 Python threads."""
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average {os.getloadavg()[0]:.1f}")
    print("| N | configuration | threads | CPU-ms/step | wall-ms/step |\n|---|---|---|---|---|")
    for n in cells:
        for view, size in ((v, s) for v in views for s in sizes):
            c = Config(n, view, size)
            times = {1: [0.0, 0.0, 0], 2: [0.0, 0.0, 0]}
            c.run(1)
            for _ in range(rounds):
                for t in (1, 2):
                    torch.set_num_threads(t)
                    c.cpu = c.wall = 0.0
                    c.steps = 0
                    c.run(block)
                    times[t][0] += c.cpu
                    times[t][1] += c.wall
                    times[t][2] += c.steps
            for t, (cpu, wall, steps) in times.items():
                print(f"| {n:,} | {view}, {size} | {t} | {1000 * cpu / steps:.1f} | {1000 * wall / steps:.1f} |",
                      flush=True)
    torch.set_num_threads(1)


def knn(cells: list[int], k: int = 32) -> None:
    """Build time (CPU-s) and recall@k of each kNN backend on the benchmark's modality features."""
    from cellgym.envs.trip import knn_graph

    for n in cells:
        env = make_world(n, view="neighbours")
        env.reset_batch(seed=0)
        x = env.inputs
        queries = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:500]
        d = torch.cdist(x[queries], x)
        d[torch.arange(len(queries)), queries] = float("inf")
        exact = d.topk(k, largest=False).indices
        print(f"N = {n:,}, {x.shape[1]} features, k = {k}, load average {os.getloadavg()[0]:.1f}")
        print("| backend | CPU-s | wall-s | recall@k |\n|---|---|---|---|")
        for backend in ("faiss", "pynndescent", "exact"):
            if backend == "exact" and n > 50_000:
                continue
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                graph = knn_graph(x, k, backend=backend)
            except ImportError as err:
                print(f"| {backend} | not installed ({err}) | | |")
                continue
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, graph[queries], strict=True)])
            print(f"| {backend} | {cpu:.1f} | {wall:.1f} | {recall:.3f} |", flush=True)


# ------------------------------------------------------------------------------------- MERFISH imputation
MERFISH = Path(__file__).resolve().parents[2] / "shared/data/spatial/merfish_allen_visp_253genes.h5ad"


def merfish_imputation(steps: int, seed: int = 0, n_reference: int = 700, views: tuple[str, ...] = ("sampled",)
                       ) -> dict[str, float]:
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
    worlds = {v: env.for_cells([counts[train], coords[train]], max_cells=256, **VIEWS[v]) for v in views}
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

    reference = rng.choice(len(train), n_reference, replace=False)  # the same reference cells for every model

    def celltrip_rmse(agent: CellTripAgent, env: TripParallelEnv = env) -> float:
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
    for view, world in worlds.items():
        start = time.process_time()
        agent = CellTripAgent().learn(world, steps, seed=seed)
        cpu = time.process_time() - start
        results[f"CellTRIP, {view} view, trained {steps} steps ({agent.result.agent_steps:,} agent-steps, "
                f"{cpu:.0f} CPU-s)"] = celltrip_rmse(agent, world)
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


def reward_on_pairs(env: TripParallelEnv, pairs: str) -> TripParallelEnv:
    """Diagnostic: the distance reward on other pairs than the observation's view (``env`` changed in place).

    ``pairs="all"``: every pair of the episode's cells (modality distances cached per episode);
    ``"neighbours"``: each cell's ``env.n_neighbours`` nearest cells in modality space plus ``env.n_random``
    random other cells, drawn once per episode (what the neighbour view's reward uses), whatever the
    observation's view. Used by ``integration`` to tell the observation's part from the reward's.
    """
    from cellgym.envs.trip._env import _distances, _pair_distances

    cache: dict[str, object] = {}

    def potential(x: torch.Tensor) -> torch.Tensor:
        if cache.get("targets") is not env.targets:  # a new episode
            cache["targets"] = env.targets
            if pairs == "all":
                cache["dist"] = [_distances(y, y) for _, _, y in env.targets]
            else:
                _, env._knn = env._neighbour_graph(env.cell_index, reorder=False)
                view = env._neighbour_view()
                cache["view"] = view
                cache["dist"] = [_pair_distances(y, view) for _, _, y in env.targets]
        if pairs == "all":
            e = _distances(x, x)
            return -sum((e - d).pow(2).sum(1) for d in cache["dist"]) / (len(x) - 1)
        e = _pair_distances(x, cache["view"])
        return -sum((e - d).pow(2).sum(1) for d in cache["dist"]) / cache["view"].shape[1]

    env._distance_potential = potential
    return env


DIAGNOSTIC_VIEWS = {"neighbours+all-pairs-reward": ("neighbours", "all"),
                    "sampled+neighbour-pairs-reward": ("sampled", "neighbours")}
"""``integration`` views whose reward pairs differ from the observation's view: (observation, reward pairs)."""


def integration(steps: int, seed: int = 0, views: tuple[str, ...] = ("sampled",), n_cells: int = 300
                ) -> dict[str, float]:
    """kNN label agreement of cell types in the space before and after simulating the trained policy.

    Training episodes hold 256 of the ``n_cells`` cells; the space is read off a simulation of all of them.
    """
    from cellgym.registry import make

    results: dict[str, float] = {}
    for view in views:
        obs_view, pairs = DIAGNOSTIC_VIEWS.get(view, (view, None))
        env = make("CellEnv-Trip-Integration-v0", n_cells=n_cells, seed=seed, episode_length=(50, 100),
                   max_cells=min(256, n_cells), **VIEWS[obs_view])
        if pairs is not None:
            reward_on_pairs(env, pairs)
        labels = env.labels
        if not results:
            results = {f"modality {m.name} (processed)": knn_label_agreement(f.numpy(), labels)
                       for m, f in zip(env.modalities, env.features, strict=True)}
        untrained = CellTripAgent()
        untrained._check_env(env)
        agent = CellTripAgent().learn(env, steps, seed=seed)
        full = env.for_cells([env.raw[0], env.raw[1]])  # every cell, same preprocessing and view
        full.labels = labels
        for name, policy in (("untrained policy", untrained), (f"trained policy ({steps} steps)", agent)):
            manager = policy.manager(full, cells=np.arange(full.n_total), seed=seed + 1)
            start = knn_label_agreement(manager.positions, labels)
            manager.simulate(agent.config.steady_state_steps)
            results[f"{view} view: space at reset (random positions), {name}"] = start
            results[f"{view} view: space after {agent.config.steady_state_steps} steps, {name}"] = \
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
    parser.add_argument("what", choices=["speed", "threads", "knn", "merfish", "integration", "perturbation",
                                         "stages"])
    parser.add_argument("--cells", type=int, nargs="+", default=None,
                        help="speed: 1000 4000 10000 100000; threads: 4000; knn: 100000")
    parser.add_argument("--views", nargs="+", default=None,
                        help="speed: reference sampled neighbours dense; merfish/integration: sampled neighbours "
                             f"(also {', '.join(v for v in VIEWS if v.startswith('neighbours-'))}; integration: "
                             f"{', '.join(DIAGNOSTIC_VIEWS)})")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES),
                        help="policy sizes (speed: cellgym celltrip; threads: celltrip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=2, help="steps per configuration per round")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-configuration peak-RSS child processes")
    parser.add_argument("--plot", default=None, help="speed: write a log-log plot of CPU-ms/step against N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (speed)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes_given = args.sizes is not None
    args.sizes = args.sizes or ["cellgym", "celltrip"]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.what == "speed":
        speed(args.cells or [1000, 4000, 10_000, 100_000], args.views or ["reference", "sampled", "neighbours", "dense"],
              args.sizes, args.rounds, args.block, not args.no_rss, args.plot)
    elif args.what == "threads":
        threads(args.cells or [4000], args.rounds, args.block, args.views or ["sampled", "neighbours"],
                args.sizes if args.sizes_given else ["celltrip"])
    elif args.what == "knn":
        knn(args.cells or [100_000])
    elif args.what == "merfish":
        merfish_imputation(args.steps, args.seed, views=tuple(args.views or ["sampled", "neighbours"]))
    elif args.what == "integration":
        integration(args.steps, args.seed, views=tuple(args.views or ["sampled", "neighbours"]))
    elif args.what == "perturbation":
        perturbation(args.steps, args.seed)
    else:
        stages(args.steps, args.seed)


if __name__ == "__main__":
    main()
