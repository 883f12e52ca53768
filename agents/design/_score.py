"""Inverse-design scoring (PDGrapher's protocol, Gonzalez et al., Nature Biomedical Engineering 2025).

For each held-out target condition, a planner proposes a ranked list of perturbation sets (sets of up to
``max_perturbations`` singles of the screen's vocabulary) using only the learned world; the score is where
the true set ranks (top-1, top-5, mean rank), and, because different perturbations can produce nearly the
same cells, the **real** energy distance between the measured cells of the top proposal and the target
cells (where the proposal was measured). Chance and an oracle (the measured condition closest to the
target) are reported beside them.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellgym.predictors import metrics as M
from cellgym.predictors.base import CellgymError

if TYPE_CHECKING:
    from cellgym.envs.design import DesignProblem

__all__ = [
    "PLANNERS", "DesignScore", "candidate_sets", "design_benchmark", "rank_agent", "rank_exhaustive", "rank_greedy",
    "rank_random", "score_proposals", "world_distances",
]

Ranking = list[frozenset[str]]


def candidate_sets(vocabulary: Sequence[str], max_size: int) -> Ranking:
    """Every set of 1..``max_size`` distinct singles (the planners' search space), singles first."""
    return [frozenset(c) for k in range(1, max_size + 1) for c in itertools.combinations(sorted(vocabulary), k)]


def world_distances(env: Any, sets: Ranking, *, n_populations: int = 4, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """Mean predicted distance to the goal (K,) after applying each set at once, in the env's world.

    Each of ``n_populations`` starting populations (drawn like the env's) goes through ONE batched
    transition call per ``chunk`` sets; the reward model scores the predicted populations.
    """
    base = env.unwrapped
    dyn = base.dynamics
    index = {p: i for i, p in enumerate(base.perturbations)}
    chosen = torch.zeros(len(sets), len(index), dtype=torch.bool)
    for row, s in enumerate(sets):
        chosen[row, [index[p] for p in s]] = True
    rng = np.random.default_rng(seed)
    total = np.zeros(len(sets))
    for _ in range(n_populations):
        source = torch.from_numpy(dyn.world.sampler(rng))
        for begin in range(0, len(sets), chunk):
            rows = chosen[begin : begin + chunk]
            state = dyn.initial(source.expand(rows.shape[0], -1, -1))
            out = dyn.step(state, rows, torch.zeros(rows.shape[0], dtype=torch.bool))
            total[begin : begin + chunk] += out.state.distance.double().numpy()
    return total / n_populations


def _order(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorting ``values`` ascending, ties broken at random (a world that cannot tell sets apart
    must not rank them in vocabulary order)."""
    shuffled = rng.permutation(values.size)
    return shuffled[np.argsort(values[shuffled], kind="stable")]


def rank_random(env: Any, sets: Ranking, *, seed: int = 0) -> Ranking:
    """Chance: a random order of every candidate set."""
    rng = np.random.default_rng(seed)
    return [sets[i] for i in rng.permutation(len(sets))]


def rank_exhaustive(env: Any, sets: Ranking, *, seed: int = 0, distances: np.ndarray | None = None) -> Ranking:
    """Every candidate set scored in the world (batched), ranked by predicted distance: exact in the world."""
    d = world_distances(env, sets, seed=seed) if distances is None else distances
    return [sets[i] for i in _order(d, np.random.default_rng([seed, 1]))]


def rank_greedy(env: Any, sets: Ranking, *, seed: int = 0, distances: np.ndarray | None = None) -> Ranking:
    """Greedy with restarts: from each single (best first), add the single that most reduces the predicted
    distance, while one does; one proposal per starting single, in the order of their starting singles."""
    d = world_distances(env, sets, seed=seed) if distances is None else distances
    rng = np.random.default_rng([seed, 1])  # ties: an order of their own, not the random planner's
    where = {s: i for i, s in enumerate(sets)}
    max_size = max(len(s) for s in sets)
    singles = [i for i, s in enumerate(sets) if len(s) == 1]
    out: Ranking = []
    for start in (singles[i] for i in _order(d[singles], rng)):
        current = sets[start]
        while len(current) < max_size:
            options = [where[current | {p}] for p in env.unwrapped.perturbations if p not in current and current | {p} in where]
            best = options[int(_order(d[options], rng)[0])] if options else None
            if best is None or d[best] >= d[where[current]]:
                break
            current = sets[best]
        if current not in out:
            out.append(current)
    return out


def rank_agent(env: Any, agent: Any, *, n_episodes: int = 64, seed: int = 0) -> Ranking:
    """A policy's proposals: its deterministic episode first, then the sets its stochastic episodes end
    with, most frequent first."""
    def episode(deterministic: bool, k: int) -> frozenset[str]:
        obs, info = env.reset(seed=seed + k)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, env.unwrapped, deterministic=deterministic))
            done = terminated or truncated
        return frozenset(info["perturbations"])

    first = episode(True, 0)
    counts = Counter(episode(False, 1 + k) for k in range(n_episodes))
    ranked = [first] + [s for s, _ in counts.most_common() if s != first]
    return [s for s in ranked if s]


@dataclass
class DesignScore:
    """One (target, world, planner) result; ``rank`` 1 is best."""

    task: str
    target: str
    world: str
    planner: str
    n_candidates: int
    rank: float
    top1: bool
    top5: bool
    proposal: str
    real_energy_distance: float
    seconds: float


def score_proposals(problem: DesignProblem, ranked: Ranking, n_candidates: int,
                    measured: dict[frozenset[str], np.ndarray], target_cells: np.ndarray) -> dict[str, Any]:
    """Rank of the true set and real distance of the top proposal.

    A planner whose list stops before the true set is charged the expected rank had the remaining
    candidates followed in random order: ``len(list) + (n_candidates - len(list) + 1) / 2``.
    """
    truth = frozenset(problem.spec.split_label(problem.target))
    if truth in ranked:
        rank = float(ranked.index(truth) + 1)
    else:
        rank = len(ranked) + (n_candidates - len(ranked) + 1) / 2
    top = ranked[0] if ranked else frozenset()
    real = M.energy_distance(measured[top], target_cells, max_cells=300) if top in measured else float("nan")
    return {"rank": rank, "top1": truth in ranked[:1], "top5": truth in ranked[:5],
            "proposal": problem.spec.separator.join(sorted(top)), "real_energy_distance": real}


PLANNERS: tuple[str, ...] = ("random", "greedy", "exhaustive", "maskable_ppo")
"""Planner names: chance, greedy with restarts, exhaustive search in the world, MaskablePPO trained there."""


def design_benchmark(
    problems: dict[str, list[DesignProblem]],
    worlds: Sequence[str],
    planners: Sequence[str] = PLANNERS,
    *,
    max_perturbations: int | None = None,
    ppo_timesteps: int = 6000,
    seed: int = 0,
    n_cells: int = 32,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[DesignScore], list[dict[str, Any]]]:
    """Score every (task, target, world, planner); returns per-target scores and the oracle rows.

    The world of a task is fitted once, without any of its held-out targets (:meth:`DesignProblem.fit_world`).
    ``max_perturbations`` defaults to each problem's (the size of its largest held-out set). Target k of a
    task is planned with seed ``seed + k`` (random orders and policies differ between targets).
    """
    from cellgym.envs.design import design_env

    bad = sorted(set(planners) - set(PLANNERS))
    if bad:
        raise CellgymError(f"design planners {bad} are unknown; choose from {list(PLANNERS)}.")
    scores: list[DesignScore] = []
    oracles: list[dict[str, Any]] = []
    for task, task_problems in problems.items():
        for k, problem in enumerate(task_problems):
            target_seed = seed + k
            measured = problem.measured()
            truth = frozenset(problem.spec.split_label(problem.target))
            target_cells = measured[truth]
            others = {s: M.energy_distance(x, target_cells, max_cells=300) for s, x in measured.items() if s != truth}
            best = min(others, key=others.get)
            oracles.append({"task": task, "target": problem.target, "oracle": problem.spec.separator.join(sorted(best)),
                            "oracle_energy_distance": others[best]})
            for world in worlds:
                env = design_env(problem, {"predictor": world, "n_cells": n_cells}, max_perturbations, None)
                sets = candidate_sets(env.unwrapped.perturbations, env.unwrapped.dynamics.max_applied)
                distances = None
                for planner in planners:
                    if progress:
                        progress(f"{task} {problem.target}: {world} x {planner}")
                    start = time.perf_counter()
                    if planner == "random":
                        ranked = rank_random(env, sets, seed=target_seed)
                    elif planner in ("greedy", "exhaustive"):
                        distances = world_distances(env, sets, seed=target_seed) if distances is None else distances
                        rank = rank_greedy if planner == "greedy" else rank_exhaustive
                        ranked = rank(env, sets, seed=target_seed, distances=distances)
                    else:
                        ranked = _ppo_ranking(problem, world, max_perturbations, n_cells, ppo_timesteps, target_seed, env)
                    row = score_proposals(problem, ranked, len(sets), measured, target_cells)
                    scores.append(DesignScore(task, problem.target, world, planner, len(sets), **row,
                                              seconds=time.perf_counter() - start))
    return scores, oracles


def _ppo_ranking(problem: DesignProblem, world: str, max_perturbations: int | None, n_cells: int, timesteps: int,
                 seed: int, env: Any) -> Ranking:
    """MaskablePPO trained in the design world (its default hyperparameters, 8 envs), then its proposals."""
    from stable_baselines3.common.vec_env import VecMonitor

    from cellgym.agents.zoo import SB3Agent
    from cellgym.agents.zoo._vec_env import GymnasiumVecEnv
    from cellgym.envs.design import design_env

    venv = design_env(problem, {"predictor": world, "n_cells": n_cells, "autoreset_mode": "same_step"}, max_perturbations, 8)
    agent = SB3Agent("maskable_ppo", algo_kwargs={"n_steps": 64, "batch_size": 128, "learning_rate": 1.0e-3,
                                                   "gamma": 0.95, "ent_coef": 0.01}, seed=seed)
    agent.learn(VecMonitor(GymnasiumVecEnv(venv)), timesteps)
    return rank_agent(env, agent, seed=seed)


def summarise(scores: Sequence[DesignScore], oracles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, world, planner): top-1/top-5 recovery, mean rank, mean real distance of the top
    proposal (over targets whose proposal was measured) and the share measured; plus chance and oracle rows."""
    import pandas as pd

    df = pd.DataFrame([asdict(s) for s in scores])
    rows: list[dict[str, Any]] = []
    for (task, world, planner), g in df.groupby(["task", "world", "planner"], sort=False):
        rows.append({"task": task, "world": world, "planner": planner, "n_targets": len(g),
                     "top1": g["top1"].mean(), "top5": g["top5"].mean(), "mean_rank": g["rank"].mean(),
                     "real_energy_distance": g["real_energy_distance"].mean(),
                     "measured": g["real_energy_distance"].notna().mean(), "n_candidates": int(g["n_candidates"].iloc[0])})
    odf = pd.DataFrame(list(oracles)).drop_duplicates(["task", "target"])
    for task, g in df.groupby("task", sort=False):
        n = int(g["n_candidates"].iloc[0])
        rows.append({"task": task, "world": "-", "planner": "chance", "n_targets": g["target"].nunique(),
                     "top1": 1 / n, "top5": min(5, n) / n, "mean_rank": (n + 1) / 2,
                     "real_energy_distance": float("nan"), "measured": float("nan"), "n_candidates": n})
        o = odf[odf["task"] == task]
        rows.append({"task": task, "world": "measured", "planner": "oracle", "n_targets": len(o),
                     "top1": float("nan"), "top5": float("nan"), "mean_rank": float("nan"),
                     "real_energy_distance": o["oracle_energy_distance"].mean(), "measured": 1.0, "n_candidates": n})
    return rows
