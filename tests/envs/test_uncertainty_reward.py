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


# ------------------------------------------------------------------ the HSC task selects the penalty by name
HSC = "CellEnv-Reprogram-HSC-v0"


@pytest.fixture(scope="module")
def hsc_ensemble():
    from cellgym.envs.reprogram import HSC_SCREEN_SPEC, hsc_screen

    model = EnsemblePredictor(members=["baseline.linear"], n_members=3)
    model.fit(hsc_screen(n_cells_per_condition=20, doubles=5, seed=0), HSC_SCREEN_SPEC, seed=0)
    return model


def test_hsc_task_selects_uncertainty_penalised_by_name(hsc_ensemble):
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import cellgym.envs  # noqa: F401

    out = {}
    for lam in (0.0, 3.0):
        env = gymnasium.make(HSC, predictor=hsc_ensemble, reward="uncertainty.penalised",
                             reward_kwargs={"lam": lam, "goal": "target.centroid"})
        assert isinstance(env.unwrapped.dynamics.world.reward, UncertaintyPenalisedReward)
        assert env.unwrapped.dynamics.world.reward.lam == lam
        env.reset(seed=0)
        out[lam] = env.step(env.unwrapped.perturbations.index("Eklf_KO"))
    check_env(env.unwrapped, skip_render_check=True)
    (_, r0, *_, i0), (_, r3, *_, i3) = out[0.0], out[3.0]
    assert i0["disagreement"] > 0 and i0["distance"] == pytest.approx(i3["distance"])
    assert r0 - r3 == pytest.approx(3.0 * i0["disagreement"], rel=1e-5)
    # the goal is the task's own (Euclidean distance of the mean to the erythrocyte state): same distance as the plain task
    plain = gymnasium.make(HSC, predictor=hsc_ensemble)
    plain.reset(seed=0)
    _, r_plain, *_, info = plain.step(plain.unwrapped.perturbations.index("Eklf_KO"))
    assert "disagreement" not in info and info["distance"] == pytest.approx(i0["distance"]) and r_plain == pytest.approx(r0)


def test_hsc_ensemble_world_by_name_with_member_options(tmp_path, monkeypatch):
    import gymnasium

    import cellgym.envs  # noqa: F401

    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    venv = gymnasium.make_vec(HSC, num_envs=3, predictor="ensemble", reward="uncertainty.penalised",
                              predictor_kwargs={"members": ["baseline.linear"], "n_members": 2}, reward_kwargs={"lam": 1.0})
    model = venv.unwrapped.dynamics.world.transition.predictor
    assert model.name == "ensemble" and len(model.predictors) == 2
    assert len(list((tmp_path / "predictors").iterdir())) == 1  # fitted once on hsc_screen(), cached
    venv.reset(seed=0)
    _, _, _, _, infos = venv.step(np.array([3, 6, 16]))  # Gata1_OE, Eklf_KO, stop
    assert infos["disagreement"].shape == (3,) and infos["disagreement"][2] == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reward": "uncertainty.penalised"}, "needs an ensemble world"),
    ({"predictor": "ENS", "reward": "uncertainty.penalised", "reward_kwargs": {"lambda": 0.5}}, "not options of uncertainty"),
    ({"predictor": "ENS", "reward": "uncertainty.penalised", "reward_kwargs": {"lam": -1}}, "lam >= 0"),
    ({"predictor": "ENS", "reward": "uncertainty.penalised", "reward_kwargs": {"goal": "target.nowhere"}}, "target.nowhere"),
    ({"predictor": "ENS", "predictor_kwargs": {"n_members": 3}}, "already built"),
])
def test_hsc_reward_selection_errors_are_one_line(hsc_ensemble, kwargs, message):
    import gymnasium

    import cellgym.envs  # noqa: F401
    from cellgym.predictors.base import CellgymError

    kwargs = {k: hsc_ensemble if v == "ENS" else v for k, v in kwargs.items()}
    with pytest.raises(CellgymError, match=message):
        gymnasium.make(HSC, **kwargs)


def test_sergio_world_refuses_a_reward_it_would_ignore():
    import gymnasium

    import cellgym.envs  # noqa: F401

    with pytest.raises(DataSpecError, match="SERGIO world's reward"):
        gymnasium.make("CellEnv-Reprogram-SERGIO-v0", reward="uncertainty.penalised")


def test_unseen_prior_makes_members_disagree_where_nobody_has_data(screen):
    """A single no member saw (G7 held out) gets the largest disagreement, as it has the largest error; the mean is kept."""
    from scipy import stats

    truth = simulate_screen(0)[1]
    train = screen[~screen.obs["perturbation"].astype(str).str.contains("G7").to_numpy()].copy()
    ctrl = torch.as_tensor(screen.X[(screen.obs["perturbation"] == "control").to_numpy()])
    ctx = torch.zeros(ctrl.shape[0], dtype=torch.long)
    labels = ["G7", "G0", "G3", "G6"]
    dis, err, means = {}, [], {}
    for unseen in ("family", "prior"):
        ens = EnsemblePredictor(members=["baseline.additive"], n_members=4, extra_perturbations=["G7"], unseen=unseen)
        ens.fit(train, SPEC, seed=0)
        dis[unseen], means[unseen] = [], []
        for lab in labels:
            pert = ens.encode_perturbations([lab]).expand(ctrl.shape[0], -1)
            raw = ens.module.predict_members(ctrl, pert, ctx)
            dis[unseen].append(float(ens.disagreement(ctrl, pert).mean()))
            means[unseen].append(raw.mean(0))
            if unseen == "prior":
                err.append(float(np.abs(raw.mean(0).mean(0).numpy() - ctrl.numpy().mean(0) - truth[("A", lab)]).mean()))
    for a, b in zip(means["family"], means["prior"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # centred draws: the member mean is the family's
    assert np.argmax(err) == 0  # the unseen single is the worst predicted
    assert np.argmax(dis["prior"]) == 0 and dis["prior"][0] > 2 * dis["family"][0]
    assert stats.spearmanr(dis["prior"], err).statistic > stats.spearmanr(dis["family"], err).statistic


def test_truth_kwargs_keep_the_goal_and_drop_the_penalty():
    from cellgym.envs.reprogram import truth_kwargs

    learned = {"predictor": "fit/ens", "reward": "uncertainty.penalised", "predictor_kwargs": {"n_members": 3},
               "reward_kwargs": {"lam": 0.5, "goal": "target.energy", "goal_kwargs": {}}, "n_cells": 8}
    assert truth_kwargs(learned, "grn.boolean") == {"predictor": "grn.boolean", "reward": "target.energy", "n_cells": 8}
    assert truth_kwargs({"reward": "uncertainty.penalised", "reward_kwargs": {"lam": 1}}, None) == {"predictor": None}


def test_cell_bootstrap_spread_follows_each_effects_sampling_error(screen):
    """resampling='cells': every group kept, members differ by sampling error, larger where a group has few cells."""
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    few = np.flatnonzero(labels == "G0")[:4]  # G0 keeps 4 of its 20 cells
    small = screen[np.sort(np.concatenate([np.flatnonzero(labels != "G0"), few]))].copy()
    ens = EnsemblePredictor(members=["baseline.additive"], n_members=6, resampling="cells")
    ens.fit(small, SPEC, seed=0)
    x = torch.as_tensor(screen.X[labels == "control"][:20])
    d = {p: float(ens.disagreement(x, ens.encode_perturbations([p]).expand(20, -1)).mean()) for p in ("G0", "G1", "G2")}
    assert d["G0"] > 1.5 * max(d["G1"], d["G2"]) and min(d.values()) > 0
    twin = EnsemblePredictor(members=["baseline.additive"], n_members=6, resampling="cells")
    twin.fit(small, SPEC, seed=0)
    pert = ens.encode_perturbations(["G0"]).expand(20, -1)
    torch.testing.assert_close(twin.predict_members(x, pert), ens.predict_members(x, pert))


def test_data_world_selects_the_penalty_by_name_around_its_energy_goal(screen, ensemble):
    env = ReprogramEnv("data", adata=screen, spec=SPEC, target="G0+G1", predictor=ensemble, reward="uncertainty.penalised",
                       reward_kwargs={"lam": 2.0}, n_cells=16)
    reward = env.dynamics.world.reward
    assert isinstance(reward, UncertaintyPenalisedReward) and isinstance(reward.goal, EnergyDistanceReward)
    same = _env(screen, ensemble, 2.0)  # the same penalty built by hand
    for e in (env, same):
        e.reset(seed=0)
    assert env.step(0)[1] == pytest.approx(same.step(0)[1], rel=1e-5)
