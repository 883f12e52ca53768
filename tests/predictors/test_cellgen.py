"""CellGen (``cellgen``, ``cellgen.critic``): learning, no context input, bad input, save/load, env, trajectory."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from cellgym.predictors import DataSpec, Predictor, split
from cellgym.predictors.base import UnknownPerturbationError
from cellgym.predictors.cellgen import CellGen, CellGenCriticReward, GANDivergedError
from cellgym.registry import make_predictor, make_reward

SMALL = {"n_hidden": 32, "n_latent": 16, "cond_dim": 16, "n_tokens": 4, "token_dim": 8, "n_heads": 2}


def _screen(seed: int = 0, n: int = 80) -> ad.AnnData:
    """Two cell lines (different baselines), control + A (gene 0 up) + B (gene 1 down) in each; log1p-like."""
    rng = np.random.default_rng(seed)
    effect = {"control": np.zeros(8), "A": np.eye(8)[0] * 1.5, "B": -np.eye(8)[1] * 1.0}
    rows, labels, lines = [], [], []
    for line, base in (("L1", 2.0), ("L2", 2.6)):
        for lab, eff in effect.items():
            rows.append(base + eff + rng.normal(0, 0.25, size=(n, 8)))
            labels += [lab] * n
            lines += [line] * n
    x = np.clip(np.concatenate(rows), 0, None).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "line": lines}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))


SPEC = DataSpec(counts=None, context_key="line")


@pytest.fixture(scope="module")
def fitted() -> tuple[CellGen, ad.AnnData]:
    """Fitted on L1 (all) + L2 controls; L2's perturbed cells held out (a cell line it never saw perturbed)."""
    adata = _screen()
    sp = split(adata, SPEC, "contexts", holdout=["L2"])
    model = make_predictor("cellgen", **SMALL, epochs=40)
    report = model.fit(adata[sp.train], SPEC, batch_size=96, seed=0)
    return model, adata, report


def test_cellgen_learns_the_response_in_an_unseen_cell_line(fitted) -> None:
    model, adata, report = fitted
    assert {"critic_loss", "generator_loss", "gradient_penalty", "wasserstein", "identity", "cycle", "energy_distance"} <= set(report.history)
    assert report.history["energy_distance"][-1] < 0.5 * report.history["energy_distance"][0]  # it learns
    ctrl = adata[(adata.obs.line == "L2") & (adata.obs.perturbation == "control")]
    real_a = adata[(adata.obs.line == "L2") & (adata.obs.perturbation == "A")].X
    real_b = adata[(adata.obs.line == "L2") & (adata.obs.perturbation == "B")].X
    pred_a = model.predict(ctrl, "A").X
    pred_b = model.predict(ctrl, "B").X
    x0 = ctrl.X
    # the right gene moves in the right direction, by most of the true effect, and beats "no change"
    assert pred_a[:, 0].mean() - x0[:, 0].mean() > 0.6 * (real_a[:, 0].mean() - x0[:, 0].mean())
    assert pred_b[:, 1].mean() - x0[:, 1].mean() < 0.5 * (real_b[:, 1].mean() - x0[:, 1].mean())
    # closer to the real perturbed cells than "no change" on the perturbed genes. (Off-target genes drift
    # towards the training line's perturbed cells: the only cells of A and B it saw; see the README.)
    for pred, real, g in ((pred_a, real_a, 0), (pred_b, real_b, 1)):
        assert abs(pred[:, g].mean() - real[:, g].mean()) < 0.5 * abs(x0[:, g].mean() - real[:, g].mean())
    # the control condition keeps a control cell (identity term)
    assert np.abs(model.predict(ctrl, "control").X - x0).mean() < 0.15


def test_context_column_is_never_a_model_input() -> None:
    adata = _screen(n=30)
    kw = {**SMALL, "epochs": 2}
    base = make_predictor("cellgen", **kw)
    base.fit(adata, SPEC, seed=3)
    permuted = adata.copy()
    permuted.obs["line"] = np.random.default_rng(0).permutation(permuted.obs["line"].to_numpy())
    other = make_predictor("cellgen", **kw)
    other.fit(permuted, SPEC, seed=3)
    none = make_predictor("cellgen", **kw)
    none.fit(adata, DataSpec(counts=None, context_key=None), seed=3)
    x = torch.from_numpy(adata.X[:50])
    pert = base.encode_perturbations(["A"] * 50)
    want = base.predict_batch(x, pert)
    assert torch.equal(want, other.predict_batch(x, pert))
    assert torch.equal(want, none.predict_batch(x, pert))
    # and the context index passed at prediction time changes nothing either
    assert torch.equal(want, base.predict_batch(x, pert, torch.ones(50, dtype=torch.long)))
    # a different seed gives a different model (so the equalities above are not vacuous)
    again = make_predictor("cellgen", **kw)
    again.fit(adata, SPEC, seed=4)
    assert not torch.equal(want, again.predict_batch(x, pert))


def test_unknown_condition_fails_in_one_line(fitted) -> None:
    model, adata, _ = fitted
    with pytest.raises(UnknownPerturbationError) as err:
        model.predict(adata[:5], "C")
    assert "\n" not in str(err.value) and "'C'" in str(err.value)


def test_declared_unseen_perturbation_uses_the_generic_condition() -> None:
    adata = _screen(n=30)
    model = make_predictor("cellgen", **SMALL, epochs=2, extra_perturbations=["C"])
    model.fit(adata, SPEC, seed=0)
    assert model.perturbations == ["A", "B", "C"] and model.seen == ["A", "B"]
    out = model.predict(adata[:5], "C")
    assert out.shape == (5, 8) and np.isfinite(out.X).all()


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_state() -> None:
    adata = _screen(n=30)
    model = make_predictor("cellgen", **SMALL, epochs=50, learning_rate=1e12)
    with pytest.raises(GANDivergedError, match="diverged") as err:
        model.fit(adata, SPEC, batch_size=32, seed=0)
    assert "\n" not in str(err.value)
    assert all(torch.isfinite(v).all() for v in model.module.state_dict().values() if v.is_floating_point())
    assert np.isfinite(model.predict(adata[:5], "A").X).all()


def test_save_load_is_exact(fitted, tmp_path) -> None:
    model, adata, _ = fitted
    model.save(tmp_path / "cg")
    loaded = Predictor.load(tmp_path / "cg")
    assert isinstance(loaded, CellGen) and loaded.score_stats == model.score_stats
    np.testing.assert_array_equal(loaded.predict(adata[:20], "A+B").X, model.predict(adata[:20], "A+B").X)
    x = torch.from_numpy(adata.X[:20])
    assert torch.equal(loaded.critic_score(x, "A"), model.critic_score(x, "A"))


def test_critic_reward_prefers_real_cells(fitted) -> None:
    model, adata, _ = fitted
    reward = make_reward("cellgen.critic", predictor=model, condition="A")
    assert isinstance(reward, CellGenCriticReward)
    real = torch.from_numpy(adata[(adata.obs.line == "L1") & (adata.obs.perturbation == "A")].X)
    ctrl = torch.from_numpy(adata[(adata.obs.line == "L1") & (adata.obs.perturbation == "control")].X)
    d = reward.distance(torch.stack([real[:40], ctrl[:40]]))
    assert d.shape == (2,) and d[0] < d[1]
    with pytest.raises(UnknownPerturbationError):
        make_reward("cellgen.critic", predictor=model, condition="nope")


def test_generator_and_critic_pass_check_env_in_the_generic_task(fitted) -> None:
    gym = pytest.importorskip("gymnasium")
    import cellgym.envs  # noqa: F401
    from cellgym.envs.testing import check_task

    model, adata, _ = fitted
    train = adata[(adata.obs.line == "L1").to_numpy()].copy()
    reward = CellGenCriticReward(model, condition="A")
    check_task("CellEnv-Reprogram-v0", adata=train, spec=SPEC, target="A", predictor=model, reward=reward, n_steps=4)
    env = gym.make("CellEnv-Reprogram-v0", adata=train, spec=SPEC, target="A", predictor=model, reward=reward)
    assert env.unwrapped.dynamics.world.reward is reward
    assert env.unwrapped.dynamics.world.transition.predictor is model


@pytest.mark.slow  # ~20 s unloaded (90 s on the shared machine under load)
def test_trajectory_forecast_beats_no_change_and_linear_extrapolation() -> None:
    from cellgym.predictors.cellgen import TIME_SPEC, forecast_scores, simulate_time_course

    train, test = simulate_time_course(100, 6, seed=0), simulate_time_course(100, 6, seed=1)
    model = make_predictor("cellgen", **SMALL, epochs=50)
    model.fit(train, TIME_SPEC, batch_size=100, seed=0)
    assert model.trajectory and model.times == [0, 1, 2, 3, 4, 5]
    out = model.predict(test[test.obs.time == 1], start=1, steps=3)
    assert (out.obs["time"] == 4).all()
    scores = forecast_scores(model, test, (1, 3))
    for k in (1, 3):
        ed = scores.loc[k, "energy_distance"]
        assert ed["cellgen"] < ed["nochange"] and ed["cellgen"] < ed["linear_mean"], scores
    with pytest.raises(Exception, match="cannot roll"):
        model.predict(test[:5], start=4, steps=3)


def test_cellgym_fit_logs_gan_scalars_to_tensorboard_and_divergence_is_one_line(tmp_path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cellgym.agents.cli import main

    h5 = tmp_path / "screen.h5ad"
    _screen(n=30).write_h5ad(h5)
    small = ["n_hidden:32", "n_latent:16", "cond_dim:16", "n_tokens:4", "token_dim:8"]
    common = ["fit", "--predictor", "cellgen", "--data", str(h5), "--context-key", "line", "--counts", "none", "--epochs", "3"]
    assert main([*common, "--out", str(tmp_path / "m"), "--tensorboard-log", str(tmp_path / "tb"), "--predictor-kwargs", *small]) == 0
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"fit/critic_loss", "fit/generator_loss", "fit/gradient_penalty", "fit/wasserstein", "fit/energy_distance"} <= tags
    assert len(ea.Scalars("fit/wasserstein")) == 3
    assert isinstance(Predictor.load(tmp_path / "m"), CellGen)
    capsys.readouterr()
    rc = main([*common, "--out", str(tmp_path / "bad"), "--predictor-kwargs", *small, "learning_rate:1.0e12", "--epochs", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len([line for line in err if "diverged" in line]) == 1 and "Traceback" not in "\n".join(err)


def test_grouped_energy_distance_matches_the_evaluation_metric_per_group() -> None:
    from cellgym.predictors.metrics import energy_distance, energy_distance_torch

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(0.7, 1.0, size=(50, 4))
    gx, gy = np.repeat([0, 1], 30), np.repeat([0, 1], 25)
    grouped = energy_distance_torch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(gx), torch.from_numpy(gy))
    for k in (0, 1):
        assert float(grouped[k]) == pytest.approx(energy_distance(x[gx == k], y[gy == k], max_cells=None))
    u = energy_distance_torch(torch.from_numpy(x), torch.from_numpy(y), unbiased=True)
    assert float(u) < energy_distance(x, y, max_cells=None)  # the U-statistic drops the zero diagonal
    single = energy_distance_torch(torch.from_numpy(x[:3]), torch.from_numpy(y[:3]), torch.tensor([0, 0, 1]),
                                   torch.tensor([0, 0, 1]), unbiased=True)
    assert torch.isnan(single[1]) and torch.isfinite(single[0])


def test_batches_with_one_cell_per_condition_do_not_stop_training() -> None:
    adata = _screen(n=10)  # batches of 2 cells: most hold two conditions with one cell each (no U-statistic)
    model = make_predictor("cellgen", **SMALL, epochs=1)
    report = model.fit(adata, SPEC, batch_size=2, seed=0)
    assert all(np.isfinite(v).all() for v in report.history.values())
