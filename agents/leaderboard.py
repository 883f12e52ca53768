"""One versioned table of how cellgym's predictors and agents do: ``cellgym leaderboard``.

Rows are long-format measurements ``(section, dataset, setting, model, metric) -> value``, each stamped
with the cellgym version, the seed and a hash of the data it came from, so two versions compare row by
row (:func:`compare`). Sections:

- ``predictors``: :func:`cellgym.predictors.evaluate` on held-out splits (pearson_delta, r2_de,
  energy_distance), every world next to the baselines;
- ``agents``: success rate and steps vs the exact optimum on the reprogramming tasks
  (``cellgym benchmark``);
- ``sim_to_real``: MaskablePPO trained in a world learned from a simulated HSC screen, scored replayed in
  the true Boolean network;
- ``design``: inverse-design recovery (top-1 / top-5 / mean rank) of held-out conditions
  (``cellgym design-benchmark``).

Embedded data (simulated here) always runs; the real screens run when their files are in ``data_dir``
(the rows are skipped with a note otherwise). ``quick`` keeps only fast entries (a few minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellgym.predictors.base import CellgymError

__all__ = ["KEY", "SECTIONS", "Entry", "compare", "entries", "run_leaderboard", "selected"]

KEY = ("section", "dataset", "setting", "model", "metric")
"""Columns that identify a measurement (what :func:`compare` joins on)."""

NORMAN = "perturb/norman19_mcfaline23_devel.h5ad"
PAPALEXI = "perturb/papalexi2021_thp1_lowmoi.h5ad"
BASELINES = ["baseline.nochange", "baseline.mean", "baseline.additive", "baseline.linear"]
PREDICTOR_METRICS = ("pearson_delta", "r2_de", "energy_distance")


@dataclass
class Entry:
    """One measurement job: ``run(seed)`` yields ``(setting, model, metric, value)`` tuples."""

    section: str
    dataset: str
    data_hash: str
    quick: bool
    run: Callable[[int], Iterator[tuple[str, str, str, float]]]


def file_hash(path: Path) -> str:
    """SHA-256 (first 12 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _predictor_rows(adata: Any, spec: Any, kind: str, predictors: list[str], seed: int, setting: str,
                    holdout: list[str] | None = None) -> Iterator[tuple[str, str, str, float]]:
    from cellgym.predictors import evaluate, split

    result = evaluate(adata, spec, split(adata, spec, kind, seed, holdout=holdout), predictors, seed=seed)
    for model, row in result.metrics.iterrows():
        for metric in PREDICTOR_METRICS:
            yield setting, str(model), metric, float(row[metric])


def _sergio_screen() -> tuple[Any, Any]:
    from cellgym.predictors import DataSpec
    from cellgym.predictors.grn import simulate_screen
    from cellgym.registry import make_predictor

    truth = make_predictor("grn.sergio", network="lineages", overexpression=1.0)
    return simulate_screen(truth, n_cells_per_condition=60, doubles=8, seed=0), DataSpec(context_key="cell_type")


def _read(path: Path, **subset: str) -> Any:
    import anndata

    adata = anndata.read_h5ad(path)
    for key, value in subset.items():
        adata = adata[adata.obs[key].astype(str) == value].copy()
    return adata


def _agent_rows(task: str, algos: list[str], episodes: int) -> Iterator[tuple[str, str, str, float]]:
    from cellgym.agents.cli._benchmark import benchmark

    with tempfile.TemporaryDirectory() as folder:
        for row in benchmark([task], algos, seeds=1, episodes=episodes, folder=folder):
            yield task, row["agent"], "success_rate", row["success_rate"]
            yield task, row["agent"], "steps_vs_optimum", row["steps_vs_optimum"]


def _sim_to_real_rows(predictor: str, seed: int) -> Iterator[tuple[str, str, str, float]]:
    import gymnasium

    from cellgym.agents.zoo import load_hyperparams, make_sb3_vec_env
    from cellgym.agents.zoo._rollout import replay, run_episodes
    from cellgym.envs.reprogram import HSC_SCREEN_SPEC, hsc_screen
    from cellgym.registry import make_agent, make_predictor

    task = "CellEnv-Reprogram-HSC-v0"
    model = make_predictor(predictor)
    model.fit(hsc_screen(), HSC_SCREEN_SPEC, seed=seed)
    hp = load_hyperparams("maskable_ppo", task)
    agent = make_agent("maskable_ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs, algo_kwargs=hp.algo_kwargs, seed=seed)
    agent.learn(make_sb3_vec_env(task, hp.n_envs, env_kwargs={"predictor": model}), hp.n_timesteps)
    learned, truth = gymnasium.make(task, predictor=model), gymnasium.make(task)
    played = run_episodes(agent, learned, 100, seed=1000)
    in_truth = [replay(ep, truth) for ep in played]
    yield "HSC screen -> grn.boolean", f"maskable_ppo in {predictor}", "true_success_rate", float(np.mean([e.success for e in in_truth]))
    yield "HSC screen -> grn.boolean", f"maskable_ppo in {predictor}", "true_mean_steps", float(np.mean([e.steps for e in in_truth]))


def _design_rows(task: str, path: Path | None, worlds: list[str], planners: list[str], seed: int,
                 ppo_timesteps: int) -> Iterator[tuple[str, str, str, float]]:
    from cellgym.agents.design import design_benchmark
    from cellgym.agents.design._score import summarise
    from cellgym.envs.design import problems_for

    problems = {task: problems_for(task, None if path is None else str(path))}
    scores, oracles = design_benchmark(problems, worlds, planners, seed=seed, ppo_timesteps=ppo_timesteps)
    for row in summarise(scores, oracles):
        model = row["planner"] if row["world"] in ("-", "measured") else f"{row['planner']} in {row['world']}"
        for metric in ("top1", "top5", "mean_rank", "real_energy_distance"):
            if not np.isnan(row[metric]):
                yield f"{task} (N={row['n_candidates']})", model, metric, float(row[metric])


def entries(data_dir: Path | None) -> list[Entry]:
    """Every leaderboard job; real-data jobs only where their file is in ``data_dir``."""
    from cellgym.predictors import DataSpec

    def sergio_predictors(seed: int) -> Iterator[tuple[str, str, str, float]]:
        adata, spec = _sergio_screen()
        yield from _predictor_rows(adata, spec, "combos", BASELINES, seed, "combos")

    out = [
        Entry("predictors", "grn.sergio screen (simulated)", "simulated:seed0", True, sergio_predictors),
        Entry("agents", "CellEnv-Reprogram-HSC-v0", "simulated", True,
              lambda seed: _agent_rows("CellEnv-Reprogram-HSC-v0", ["maskable_ppo"], 100)),
        Entry("agents", "CellEnv-Reprogram-SERGIO-v0", "simulated", False,
              lambda seed: _agent_rows("CellEnv-Reprogram-SERGIO-v0", ["maskable_ppo"], 50)),
        Entry("sim_to_real", "hsc_screen (simulated)", "simulated:seed0", True,
              lambda seed: _sim_to_real_rows("baseline.additive", seed)),
        Entry("sim_to_real", "hsc_screen (simulated)", "simulated:seed0", False,
              lambda seed: _sim_to_real_rows("baseline.linear", seed)),
        Entry("design", "grn.sergio screen (simulated)", "simulated:seed0", True,
              lambda seed: _design_rows("CellEnv-Design-SERGIO-v0", None, BASELINES, ["random", "greedy", "exhaustive"], seed, 0)),
    ]
    if data_dir is None:
        return out
    norman, papalexi = data_dir / NORMAN, data_dir / PAPALEXI
    if norman.is_file():
        digest = file_hash(norman)
        spec = DataSpec(context_key="cell_type", counts=None)

        def norman_combos(seed: int) -> Iterator[tuple[str, str, str, float]]:
            yield from _predictor_rows(_read(norman, dataset="norman19"), spec, "combos", [*BASELINES, "gem1.bulk"], seed, "combos")

        def mcfaline_contexts(seed: int) -> Iterator[tuple[str, str, str, float]]:
            adata = _read(norman, dataset="mcfaline23")
            for line in ("A172", "T98G", "U87MG"):
                yield from _predictor_rows(adata, spec, "contexts", BASELINES, seed, f"contexts:{line}", [line])

        out += [
            Entry("predictors", "Norman19 K562", digest, False, norman_combos),
            Entry("predictors", "McFaline23 GBM lines", digest, False, mcfaline_contexts),
            Entry("design", "Norman19 K562", digest, False,
                  lambda seed: _design_rows("CellEnv-Design-Norman-v0", norman, BASELINES,
                                            ["random", "greedy", "exhaustive", "maskable_ppo"], seed, 4000)),
        ]
    if papalexi.is_file():
        digest = file_hash(papalexi)

        def papalexi_perturbations(seed: int) -> Iterator[tuple[str, str, str, float]]:
            adata = _read(papalexi)
            adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"].copy()
            yield from _predictor_rows(adata, DataSpec(context_key=None), "perturbations", BASELINES, seed, "perturbations")

        out += [
            Entry("predictors", "Papalexi21 THP-1", digest, False, papalexi_perturbations),
            Entry("design", "Papalexi21 THP-1", digest, False,
                  lambda seed: _design_rows("CellEnv-Design-Papalexi-v0", papalexi, BASELINES,
                                            ["random", "greedy", "exhaustive"], seed, 0)),
        ]
    return out


SECTIONS = ("predictors", "agents", "sim_to_real", "design")


def selected(data_dir: Path | None, *, quick: bool = False, sections: Sequence[str] | None = None) -> list[Entry]:
    """The entries a run does: all, or only the quick ones, of the given sections."""
    bad = sorted(set(sections or ()) - set(SECTIONS))
    if bad:
        raise CellgymError(f"leaderboard sections {bad} are unknown; choose from {list(SECTIONS)}.")
    return [e for e in entries(data_dir) if (e.quick or not quick) and (not sections or e.section in sections)]


def run_leaderboard(data_dir: Path | None, *, quick: bool = False, seed: int = 0, sections: Sequence[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the :func:`selected` entries; returns the long-format rows (see :data:`KEY`) with their stamps."""
    from cellgym.predictors.base._checkpoint import cellgym_version

    version = cellgym_version()
    rows: list[dict[str, Any]] = []
    for entry in selected(data_dir, quick=quick, sections=sections):
        if progress:
            progress(f"{entry.section}: {entry.dataset}")
        start = time.perf_counter()
        for setting, model, metric, value in entry.run(seed):
            rows.append({"section": entry.section, "dataset": entry.dataset, "setting": setting, "model": model,
                         "metric": metric, "value": value, "cellgym_version": version, "data_hash": entry.data_hash,
                         "seed": seed})
        seconds = round(time.perf_counter() - start, 1)
        for row in rows:
            row.setdefault("seconds", seconds)  # wall time of the entry that made the row
    return rows


def compare(new: Any, old: Any) -> Any:
    """Rows of two leaderboards side by side on :data:`KEY`: ``status`` (both / new / gone), ``value_old``,
    ``value_new``, ``change``; ``data_changed`` flags rows whose data hash differs (not comparable)."""
    merged = old.merge(new, on=list(KEY), how="outer", suffixes=("_old", "_new"), indicator=True)
    merged["status"] = merged.pop("_merge").map({"both": "both", "left_only": "gone", "right_only": "new"})
    merged["change"] = merged["value_new"] - merged["value_old"]
    merged["data_changed"] = merged["data_hash_old"].notna() & merged["data_hash_new"].notna() & (
        merged["data_hash_old"] != merged["data_hash_new"])
    return merged[[*KEY, "status", "value_old", "value_new", "change", "data_changed", "cellgym_version_old",
                   "cellgym_version_new"]]
