"""Ensemble worlds: uncertainty.penalised pays lam x disagreement per step and reports it in info."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgym.envs.reprogram import ReprogramEnv, ReprogramVectorEnv
from cellgym.predictors import DataSpec, split
from cellgym.predictors.base import DataSpecError, Predictor
from cellgym.predictors.ensemble import EnsemblePredictor
from cellgym.predictors.evaluation import evaluate
from cellgym.predictors.rewards import EnergyDistanceReward, UncertaintyPenalisedReward
from cellgym.registry import make_reward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simulated_screens import simulate_screen

SPEC = DataSpec(context_key="cell_type", batch_key="batch")


@pytest.fixture(scope="module")
def screen():
    adata, _ = simulate_screen(0)
    return adata[(adata.obs["cell_type"] == "A").to_numpy()].copy()


@pytest.fixture(scope="module")
def ensemble(screen):
    model = EnsemblePredictor(members=["baseline.linear", "baseline.additive"], n_members=4)
    model.fit(screen, SPEC, seed=0)
    return model


def _env(screen, ensemble, lam):
    goal = EnergyDistanceReward(screen.X[(screen.obs["perturbation"] == "G0+G1").to_numpy()])
    reward = make_reward("uncertainty.penalised", goal=goal, predictor=ensemble, lam=lam)
    return ReprogramEnv("data", adata=screen, spec=SPEC, target="G0+G1", predictor=ensemble, reward=reward, n_cells=16)


def test_ensemble_mean_disagreement_and_save_load(screen, ensemble, tmp_path):
    x = torch.as_tensor(screen.X[:6])
    pert = ensemble.encode_perturbations(["G0", "G0", "G2+G3", "G2+G3", "control", "control"])
    members = ensemble.predict_members(x, pert)
    assert members.shape == (4, 6, screen.n_vars)
    torch.testing.assert_close(ensemble.predict_batch(x, pert), members.mean(0))
    d = ensemble.disagreement(x, pert)
    assert (d[:4] > 0).all() and torch.allclose(d[4:], torch.zeros(2))  # controls: every member predicts no change
    torch.testing.assert_close(ensemble.last_disagreement, d)
    pop = ensemble.population_disagreement(members.reshape(4, 3, 2, -1))
    assert pop.shape == (3,) and pop[-1] == pytest.approx(0.0, abs=1e-6) and (pop[:2] > 0).all()
    loaded = Predictor.load(ensemble.save(tmp_path / "ens"))
    torch.testing.assert_close(loaded.predict_members(x, pert), members)


def test_bootstrap_members_differ_and_seeds_reproduce(screen):
    a = EnsemblePredictor(n_members=3).fit(screen, SPEC, seed=1)
    x = torch.as_tensor(screen.X[:4])
    e1, e2 = EnsemblePredictor(n_members=3), EnsemblePredictor(n_members=3)
    e1.fit(screen, SPEC, seed=1)
    e2.fit(screen, SPEC, seed=1)
    pert = e1.encode_perturbations(["G5"] * 4)
    assert a.epochs == 0
    torch.testing.assert_close(e1.predict_members(x, pert), e2.predict_members(x, pert))
    m = e1.predict_members(x, pert)
    assert not torch.allclose(m[0], m[1])


def test_ensemble_in_evaluate_beats_mean(screen):
    s = split(screen, SPEC, "perturbations", seed=0)
    r = evaluate(screen, SPEC, s, ["baseline.mean", "ensemble"]).metrics
    assert r.loc["ensemble", "pearson_delta"] > r.loc["baseline.mean", "pearson_delta"] + 0.3


def test_penalty_is_lam_times_reported_disagreement(screen, ensemble):
    rewards, infos = {}, {}
    for lam in (0.0, 2.0):
        env = _env(screen, ensemble, lam)
        env.reset(seed=0)
        _, r, _, _, info = env.step(env.perturbations.index("G0"))
        rewards[lam], infos[lam] = r, info
    assert infos[0.0]["disagreement"] > 0
    assert infos[0.0]["disagreement"] == pytest.approx(infos[2.0]["disagreement"])
    assert rewards[0.0] - rewards[2.0] == pytest.approx(2.0 * infos[0.0]["disagreement"], rel=1e-5)


def test_vector_env_reports_disagreement_per_env(screen, ensemble):
    goal = EnergyDistanceReward(screen.X[(screen.obs["perturbation"] == "G0+G1").to_numpy()])
    reward = UncertaintyPenalisedReward(goal, ensemble, lam=1.0)
    venv = ReprogramVectorEnv(4, world="data", adata=screen, spec=SPEC, target="G0+G1", predictor=ensemble,
                              reward=reward, n_cells=16)
    venv.reset(seed=0)
    stop = len(venv.perturbations)
    _, _, _, _, infos = venv.step(np.array([0, 1, stop, 2]))
    assert infos["disagreement"].shape == (4,) and infos["disagreement"][2] == 0.0 and (infos["disagreement"][[0, 1, 3]] > 0).all()


def test_rejects_a_non_ensemble_world():
    goal = EnergyDistanceReward(np.zeros((3, 4), np.float32))
    with pytest.raises(DataSpecError, match="needs an ensemble"):
        UncertaintyPenalisedReward(goal, object(), lam=1.0)
    with pytest.raises(DataSpecError, match="lam >= 0"):
        UncertaintyPenalisedReward(goal, EnsemblePredictor(), lam=-1.0)
