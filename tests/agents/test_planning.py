"""Planning baselines: bfs finds the known shortest intervention; greedy batches; random is seeded."""

from __future__ import annotations

import anndata as ad
import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

import cellgym.envs  # noqa: F401
from cellgym.agents.planning import BFSAgent, GreedyAgent, RandomAgent, evaluate
from cellgym.envs.reprogram import ReprogramEnv
from cellgym.predictors.base import CellgymError, DataSpec
from cellgym.registry import make_agent, make_predictor

# A tiny hand-made network. From the all-off state, D needs B and C; B follows A; A and C hold themselves.
# Reaching all-on therefore needs exactly {A_OE, C_OE} (2 perturbations): B_OE + C_OE leaves A off,
# D_OE leaves A, B, C off, and no single perturbation turns on more than two genes.
RULES = "Gene\tRule\nA\tA\nB\tA\nC\tC\nD\tB and C\n"


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory: pytest.TempPathFactory) -> ReprogramEnv:
    path = tmp_path_factory.mktemp("net") / "tiny.txt"
    path.write_text(RULES)
    model = make_predictor("grn.boolean", model=str(path), dynamics="sync", n_steps=4)
    x = np.vstack([np.zeros((5, 4)), np.ones((5, 4))]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": ["control"] * 5 + ["goal"] * 5}, index=[f"c{i}" for i in range(10)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=model.genes))
    return ReprogramEnv("data", adata=adata, spec=DataSpec(counts=None), target="goal", predictor=model,
                        reward="target.centroid", threshold=0.1, n_cells=4, budget=4)


def test_bfs_finds_the_known_shortest_intervention(tiny_env: ReprogramEnv) -> None:
    tiny_env.reset(seed=0)
    names = tiny_env.perturbations
    nxt, _ = tiny_env.lookahead(np.arange(len(names)))
    assert (nxt.distance.numpy() > 0.1).all()  # no single perturbation suffices
    plan = BFSAgent().plan(tiny_env)
    assert sorted(names[a] for a in plan) == ["A_OE", "C_OE"]
    stats = evaluate(BFSAgent(), gym.wrappers.TimeLimit(tiny_env, 4), 3)
    assert stats.success.all() and (stats.steps == 2).all()


def test_bfs_on_hsc_is_optimal_and_beats_random() -> None:
    env = gym.make("CellEnv-Reprogram-HSC-v0")
    bfs = evaluate(make_agent("bfs"), env, 15, seed=100)
    greedy = evaluate(make_agent("greedy"), env, 15, seed=100)
    rnd = evaluate(make_agent("random", seed=0), env, 15, seed=100)
    assert bfs.success.all() and (bfs.steps >= 2).sum() >= 12
    assert (greedy.steps[greedy.success] >= bfs.steps[greedy.success]).all()  # nothing beats the optimum
    assert rnd.success_rate < 0.5 < greedy.success_rate


def test_greedy_scores_all_actions_in_one_transition_call(tiny_env: ReprogramEnv) -> None:
    tiny_env.reset(seed=0)
    calls = []
    predictor = tiny_env.dynamics.world.transition.predictor
    original = predictor.predict_batch

    def counting(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, *args)

    predictor.predict_batch = counting
    try:
        action = GreedyAgent().act(None, tiny_env)
    finally:
        del predictor.predict_batch
    assert calls == [len(tiny_env.perturbations) * 4]  # P perturbations x 4 cells (stop needs no call)
    assert tiny_env.perturbations[action] in ("A_OE", "C_OE", "D_OE", "B_OE")


def test_random_agent_is_seeded_and_respects_masks(tiny_env: ReprogramEnv) -> None:
    tiny_env.reset(seed=0)
    tiny_env.step(0)
    picks = [RandomAgent(seed=5).act(None, tiny_env) for _ in range(3)]
    assert len(set(picks)) == 1 and picks[0] != 0
    many = RandomAgent(seed=1)
    assert all(many.act(None, tiny_env) != 0 for _ in range(50))


def test_planners_refuse_the_combination_variant() -> None:
    env = ReprogramEnv("hsc", action_mode="combination")
    env.reset(seed=0)
    with pytest.raises(CellgymError, match="action_mode='single'"):
        GreedyAgent().act(None, env)
