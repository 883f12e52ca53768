"""Inverse-design worlds: the world never sees the target, bad input is one line, long random play stays finite."""

from __future__ import annotations

import anndata as ad
import gymnasium as gym
import numpy as np
import pytest
from simulated_screens import design_screen as screen

import cellgym.envs  # noqa: F401  (registers the tasks)
from cellgym.envs.design import design_problem, make_design_env, sergio_problems
from cellgym.predictors.base import DataSpec, DataSpecError

SPEC = DataSpec(counts=None, context_key=None)


def test_world_is_fitted_without_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    adata = screen(interaction=2.0)
    problem = design_problem(adata, SPEC, "A+B")
    assert problem.holdout == ("A+B",) and problem.vocabulary == ["A", "B", "C"]
    assert not problem.train_mask[problem.target_mask].any()
    world = problem.fit_world("baseline.additive")
    control = adata.X[problem.source_mask]
    predicted = world.predict(ad.AnnData(control, var=adata.var), "A+B").X.mean(0)
    # fitted without A+B, the additive world predicts the sum of the singles: gene 3 unchanged (the
    # measured A+B cells have +2 there); fitted on everything it would predict the measured double
    assert abs(predicted[3] - control[:, 3].mean()) < 0.1
    assert abs(adata.X[problem.target_mask][:, 3].mean() - control[:, 3].mean()) > 1.5


def test_env_reaches_the_target_with_the_true_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    env = gym.make("CellEnv-Design-v0", adata=screen(), spec=SPEC, target="A+B")
    assert env.unwrapped.perturbations == ["A", "B", "C"]
    _, info = env.reset(seed=0)
    start = info["distance"]
    _, r1, *_ = env.step(0)
    _, r2, terminated, _, info = env.step(1)
    assert terminated and info["perturbations"] == ["A", "B"]  # a complete set (max_perturbations=2) ends it
    assert info["distance"] < 0.2 * start and r1 > 0 and r2 > 0
    masks = env.unwrapped.action_masks()
    assert masks.tolist() == [False, False, True, True]


def test_max_perturbations_sets_the_episode_length(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    env = gym.make("CellEnv-Design-v0", adata=screen(), spec=SPEC, target="A+B", max_perturbations=3)
    env.reset(seed=0)
    for action in (2, 0):  # C, A: far from A+B, so no success ends the episode early
        _, _, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
    _, _, terminated, _, info = env.step(1)
    assert terminated and len(info["perturbations"]) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "Z"}, "is not a perturbation of the data"),
        ({"target": "control"}, "is not a perturbation of the data"),
        ({}, "needs adata=<AnnData screen> and target="),
        ({"target": "A+B", "max_perturbations": 0}, "max_perturbations must be >= 1"),
        ({"target": "A+B", "predictor": "baseline.nochage"}, "baseline.nochange"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, kwargs, message):
    from cellgym.predictors.base import CellgymError

    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    if kwargs:
        kwargs = {"adata": screen(), "spec": SPEC, **kwargs}
    with pytest.raises(CellgymError, match=message) as info:
        make_design_env(**kwargs)
    assert "\n" not in str(info.value)


def test_target_in_several_contexts_needs_a_context():
    adata = screen()
    adata.obs["cell_type"] = np.where(np.arange(adata.n_obs) % 2 == 0, "k562", "rpe1")
    with pytest.raises(DataSpecError, match="pass context="):
        design_problem(adata, DataSpec(counts=None, context_key="cell_type"), "A")
    problem = design_problem(adata, DataSpec(counts=None, context_key="cell_type"), "A", context="rpe1")
    assert problem.target_mask.sum() == 25 and problem.source_mask.sum() == 25


def test_registered_tasks_need_their_file():
    with pytest.raises(DataSpecError, match=r"needs path=<norman19_mcfaline23_devel\.h5ad>"):
        gym.make("CellEnv-Design-Norman-v0")
    with pytest.raises(DataSpecError, match="no such file"):
        gym.make("CellEnv-Design-Papalexi-v0", path="/nonexistent/papalexi.h5ad")


def test_embedded_sergio_targets_are_held_out_doubles():
    problems = sergio_problems()
    assert len(problems) == 6
    for p in problems:
        assert "+" in p.target and set(p.holdout) == {q.target for q in problems}
        assert all(s in p.vocabulary for s in p.spec.split_label(p.target))


def test_ten_thousand_random_steps_stay_finite(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    venv = gym.make_vec("CellEnv-Design-SERGIO-v0", num_envs=16, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10_000 // 16):
        obs, reward, *_ = venv.step(rng.integers(0, venv.single_action_space.n, size=16))
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
