"""Design scoring: planners that search the learned world recover held-out doubles; chance does not."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from simulated_screens import design_screen as screen

import cellgym.envs  # noqa: F401
from cellgym.agents.cli import main
from cellgym.agents.design import (
    candidate_sets,
    design_benchmark,
    rank_exhaustive,
    rank_greedy,
    rank_random,
    score_proposals,
)
from cellgym.agents.design._score import summarise
from cellgym.envs.design import design_problem
from cellgym.predictors.base import DataSpec

SPEC = DataSpec(counts=None, context_key=None)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    return gym.make("CellEnv-Design-v0", adata=screen(), spec=SPEC, target="A+B")


def test_candidate_sets_are_all_sets_up_to_k():
    sets = candidate_sets(["A", "B", "C"], 2)
    assert len(sets) == 3 + 3 and sets[0] == frozenset({"A"}) and frozenset({"B", "C"}) in sets


def test_search_in_the_additive_world_ranks_the_true_double_first(env):
    sets = candidate_sets(env.unwrapped.perturbations, 2)
    truth = frozenset({"A", "B"})
    assert rank_exhaustive(env, sets)[0] == truth
    assert rank_greedy(env, sets)[0] == truth
    ranks = [rank_random(env, sets, seed=s).index(truth) + 1 for s in range(200)]
    assert abs(np.mean(ranks) - (len(sets) + 1) / 2) < 0.5  # chance: uniform over the 6 positions


def test_rank_of_a_missing_truth_is_the_expected_random_rank(env):
    problem = env.unwrapped.problem
    measured = problem.measured()
    target = measured[frozenset({"A", "B"})]
    full = score_proposals(problem, [frozenset({"A", "B"})], 6, measured, target)
    assert full["rank"] == 1 and full["top1"] and full["real_energy_distance"] == 0.0
    partial = score_proposals(problem, [frozenset({"C"}), frozenset({"A"})], 6, measured, target)
    assert partial["rank"] == 2 + (6 - 2 + 1) / 2 and not partial["top5"]
    assert partial["real_energy_distance"] > 0.5  # C's measured cells are far from A+B's
    unmeasured = score_proposals(problem, [frozenset({"B", "C"})], 6, measured, target)
    assert np.isnan(unmeasured["real_energy_distance"])


def test_benchmark_beats_chance_and_names_the_oracle(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    adata = screen()
    problems = {"toy": [design_problem(adata, SPEC, t, holdout=["A+B", "A+C"]) for t in ("A+B", "A+C")]}
    scores, oracles = design_benchmark(problems, ["baseline.nochange", "baseline.additive"], ["random", "exhaustive"])
    df = pd.DataFrame(summarise(scores, oracles)).set_index(["world", "planner"])
    assert df.loc[("baseline.additive", "exhaustive"), "top1"] == 1.0
    assert df.loc[("baseline.additive", "exhaustive"), "mean_rank"] == 1.0
    # a world that cannot tell perturbations apart ranks like chance
    assert df.loc[("baseline.nochange", "exhaustive"), "top1"] < 1.0
    assert df.loc[("-", "chance"), "mean_rank"] == 3.5
    assert {o["oracle"] for o in oracles} == {"A"}  # each double is closest to its shared single A


def test_cli_writes_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "design"
    assert main(["design-benchmark", "--worlds", "baseline.additive", "--planners", "random", "exhaustive",
                 "--out", str(out)]) == 0
    summary = pd.read_csv(out.with_suffix(".csv"))
    exhaustive = summary[(summary.planner == "exhaustive")].iloc[0]
    chance = summary[summary.planner == "chance"].iloc[0]
    assert exhaustive["mean_rank"] < chance["mean_rank"]
    assert len(pd.read_csv(tmp_path / "design_targets.csv")) == 6 * 2
    assert "| CellEnv-Design-SERGIO-v0 | baseline.additive | exhaustive |" in capsys.readouterr().out


def test_cli_refuses_unknown_task_and_planner(capsys):
    assert main(["design-benchmark", "--task", "CellEnv-Design-Nope-v0"]) == 2
    assert "expected one of" in capsys.readouterr().err
    assert main(["design-benchmark", "--planners", "magic"]) == 2
    assert "planners ['magic'] are unknown" in capsys.readouterr().err
