"""GEM-1: module on random tensors, models on a tiny simulated screen, tasks, checkpoints, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellgym.predictors import DataSpec, DataSpecError, GeneMismatchError, Predictor, split
from cellgym.predictors.base import UnknownPerturbationError
from cellgym.predictors.evaluation import evaluate
from cellgym.predictors.gem1 import Gem1Bulk, Gem1ClassifierReward, Gem1Module, Gem1SC, MetadataGroups
from cellgym.registry import make_predictor, make_reward

SPEC = DataSpec(context_key="cell_type", batch_key="batch")


def simulate(n: int = 600, g: int = 40, seed: int = 0) -> ad.AnnData:
    """Counts of 2 cell types x 2 batches under control, A, B, C and A+B (log-additive effects)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["control", "A", "B", "C", "A+B"], n)
    cell_type = rng.choice(["t1", "t2"], n)
    batch = rng.choice(["b1", "b2"], n)
    base = np.log(rng.gamma(2.0, 1.0, (2, g)))
    effect = {p: rng.normal(0, 1.2, g) * (rng.random(g) < 0.3) for p in "ABC"}
    logits = base[(cell_type == "t2").astype(int)].copy()
    for p in "ABC":
        logits += np.array([p in lab.split("+") for lab in labels])[:, None] * effect[p]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = rng.poisson(probs * rng.integers(500, 1500, n)[:, None]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "cell_type": cell_type, "batch": batch}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    return simulate()


@pytest.fixture(scope="module")
def fitted(data: ad.AnnData) -> Gem1SC:
    model = Gem1SC(n_hidden=64)
    model.fit(data, SPEC, epochs=40, seed=0)  # 25 before issue 14: the matched-control path learns the classifier later
    return model


# ------------------------------------------------------------------------------------------------ module
@pytest.mark.parametrize("likelihood", ["gaussian", "multinomial", "nb"])
def test_module_loss_finite_and_grads_reach_every_block(likelihood: str) -> None:
    torch.manual_seed(0)
    m = Gem1Module(30, (2, 3, 4 + 1), 4, [3], n_latent=(2, 3, 4), n_hidden=16, likelihood=likelihood)
    b = 8
    counts = torch.poisson(torch.full((b, 30), 3.0))
    batch = {
        "x": torch.log1p(counts), "target": torch.log1p(counts) if likelihood == "gaussian" else counts,
        "library": counts.sum(1), "m_technical": torch.eye(2)[torch.randint(2, (b,))],
        "m_biological": torch.eye(3)[torch.randint(3, (b,))],
        "m_perturbation": torch.cat([(torch.rand(b, 4) < 0.3).float(), torch.zeros(b, 1)], 1),
        "y_biological": torch.randint(3, (b, 1)),
    }
    out = m.loss(batch)
    assert torch.isfinite(out.loss)
    assert {"reconstruction", "kl_technical", "kl_biological", "kl_perturbation", "classifier_ce"} <= set(out.components)
    out.loss.backward()
    for name in ("encoder.1.weight", "decoder.1.weight", "priors.0.linear.weight", "priors.2.linear.weight", "bio_classifier.weight"):
        assert m.get_parameter(name).grad.abs().sum() > 0, name
    y = m.predict_batch(batch["x"], batch["m_perturbation"][:, :4], None)
    assert y.shape == (b, 30) and (y >= 0).all()
    # a control row (no perturbation) is returned unchanged: de_pred is exactly 0
    assert torch.allclose(m.eval().predict_batch(batch["x"], torch.zeros(b, 4), None), batch["x"])


def test_multinomial_sampling_keeps_each_rows_total() -> None:
    from cellgym.predictors.gem1._module import multinomial_counts

    probs = torch.softmax(torch.randn(5, 20), -1)
    totals = torch.tensor([0.0, 1.0, 10.0, 500.0, 37.0])
    c = multinomial_counts(probs, totals, torch.Generator().manual_seed(0))
    assert torch.equal(c.sum(1), totals)


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.slow
def test_fit_learns_and_beats_nochange_on_held_out_combo(data: ad.AnnData) -> None:
    sp_ = split(data, SPEC, "combos", seed=0, holdout=["A+B"])
    model = Gem1SC(n_hidden=64)
    res = evaluate(data, SPEC, sp_, ["baseline.nochange", model], fit_kwargs={"gem1.sc": {"epochs": 40}})
    hist = res.metrics
    assert hist.loc["baseline.nochange", "pearson_delta"] == 0.0
    assert hist.loc["gem1.sc", "pearson_delta"] > 0.3
    assert hist.loc["gem1.sc", "mse_delta"] < hist.loc["baseline.nochange", "mse_delta"]


def test_loss_falls_and_classifier_learns(fitted: Gem1SC, data: ad.AnnData) -> None:
    # the history of the fixture's fit is not kept; refit a few epochs and compare the ends
    rep = Gem1SC(n_hidden=64).fit(data, SPEC, epochs=8, seed=1)
    assert rep.history["loss"][-1] < 0.8 * rep.history["loss"][0]
    out = fitted.classify_samples(data)
    assert (out.obs["pred_cell_type"].to_numpy() == data.obs["cell_type"].to_numpy()).mean() > 0.95
    assert out.obsm["prob_cell_type"].shape == (data.n_obs, 2)
    assert out.obsm["z_perturbation"].shape == (data.n_obs, 16)


def test_four_tasks_shapes_modes_and_determinism(fitted: Gem1SC, data: ad.AnnData) -> None:
    obs = data.obs.iloc[:6]
    a = fitted.predict_expression(obs, mode="mean", replicates=2)
    assert a.shape == (12, data.n_vars) and list(a.obs["replicate"][:2]) == [0, 1]
    np.testing.assert_allclose(a.X, fitted.predict_expression(obs, mode="mean", replicates=2).X)
    s1 = fitted.predict_expression(obs, mode="sample", seed=3, fixed_total_count=800)
    s2 = fitted.predict_expression(obs, mode="sample", seed=3, fixed_total_count=800)
    np.testing.assert_array_equal(s1.X, s2.X)
    assert np.all(s1.X.sum(1) == 800) and np.all(s1.X == np.round(s1.X))  # multinomial draws of the library
    shared = fitted.predict_expression(obs, mode="sample", seed=0, share_technical=True, replicates=2)
    assert shared.n_obs == 12
    r = fitted.ref_predict_perturbation(data, mode="mean")
    n_pert = int((data.obs["perturbation"] != "control").sum())
    assert r.shape == (n_pert, data.n_vars) and r.layers["de_pred"].shape == r.shape
    p = fitted.predict_perturbation(obs, mode="sample", seed=0)
    assert p.shape == (6, data.n_vars) and np.isfinite(p.layers["de_pred"]).all()


def test_ref_prediction_recovers_the_true_effect_direction(fitted: Gem1SC, data: ad.AnnData) -> None:
    r = fitted.ref_predict_perturbation(data, mode="mean")
    x = np.log1p(data.X.toarray() / data.X.toarray().sum(1, keepdims=True) * 1e4)
    lab = data.obs["perturbation"].to_numpy()
    true = x[lab == "A"].mean(0) - x[lab == "control"].mean(0)
    pred = r.layers["de_pred"][r.obs["perturbation"].to_numpy() == "A"].mean(0)
    assert np.corrcoef(true, pred)[0, 1] > 0.8


def test_save_load_identical_and_mismatch_errors(fitted: Gem1SC, data: ad.AnnData, tmp_path) -> None:
    fitted.save(tmp_path / "m")
    loaded = Predictor.load(tmp_path / "m")
    ctrl = data[data.obs["perturbation"] == "control"]
    np.testing.assert_array_equal(fitted.predict(ctrl, "A+B").X, loaded.predict(ctrl, "A+B").X)
    np.testing.assert_array_equal(fitted.classify_samples(data).obsm["z_biological"], loaded.classify_samples(data).obsm["z_biological"])
    with pytest.raises(GeneMismatchError, match="expected the 40 genes"):
        loaded.classify_samples(data[:, :30])
    other = data.copy()
    other.obs["batch"] = other.obs["batch"].astype(str).replace({"b1": "b9"})
    with pytest.raises(DataSpecError, match=r"unknown value\(s\) \['b9'\] in obs\['batch'\] \(technical"):
        loaded.ref_predict_perturbation(other)
    with pytest.raises(DataSpecError, match="obs column 'cell_type' of the biological metadata group is missing"):
        loaded.predict_expression(data.obs.drop(columns="cell_type"))


def test_count_models_refuse_log_data_clearly(data: ad.AnnData) -> None:
    logged = data.copy()
    logged.X = sp.csr_matrix(np.log1p(data.X.toarray()))
    for name in ("gem1.nb", "gem1.sc"):
        with pytest.raises(DataSpecError, match=r"needs raw counts.*gem1.bulk"):
            make_predictor(name).fit(logged, SPEC, epochs=1)
    Gem1Bulk(n_hidden=16).fit(logged, SPEC, epochs=1)  # the Gaussian bulk model takes log data


def test_bulk_multinomial_option_and_bad_options(data: ad.AnnData) -> None:
    m = Gem1Bulk(likelihood="multinomial", n_hidden=16)
    m.fit(data, SPEC, epochs=2)
    assert m.module.likelihood == "multinomial"
    with pytest.raises(DataSpecError, match="likelihood must be one of"):
        make_predictor("gem1.nb", likelihood="gaussian")
    with pytest.raises(DataSpecError, match="unknown metadata group"):
        Gem1SC(groups={"technicl": ["batch"]})


def test_metadata_groups_yaml_and_defaults(tmp_path) -> None:
    f = tmp_path / "groups.yaml"
    f.write_text("technical: [bio_rep]\nbiological: cell_type\nnumeric: [dose]\n")
    g = MetadataGroups.from_yaml(f)
    assert g.resolve(DataSpec(batch_key="batch")) == {
        "technical": ("bio_rep",), "biological": ("cell_type",), "perturbation": (), "numeric": ("dose",)}
    assert MetadataGroups().resolve(SPEC)["technical"] == ("batch",)
    with pytest.raises(DataSpecError, match="must be a list of obs column names"):
        MetadataGroups.from_dict({"technical": 3})


def test_numeric_dose_feature_and_non_numeric_rejected(data: ad.AnnData) -> None:
    d = data.copy()
    d.obs["dose"] = np.where(d.obs["perturbation"] == "control", 0.0, 1.0)
    m = Gem1SC(n_hidden=16, groups={"numeric": ["dose"]})
    m.fit(d, SPEC, epochs=1)
    assert m.module.priors[2].n_in == len(m.perturbations) + 1 + 1
    d.obs["dose"] = "high"
    with pytest.raises(DataSpecError, match="declared a numeric perturbation feature"):
        Gem1SC(groups={"numeric": ["dose"]}).fit(d, SPEC, epochs=1)


def test_unseen_perturbation_only_when_declared(fitted: Gem1SC, data: ad.AnnData) -> None:
    ctrl = data[data.obs["perturbation"] == "control"]
    with pytest.raises(UnknownPerturbationError, match="'Z'"):
        fitted.predict(ctrl, "A+Z")  # a name nobody declared is an error, not a silent guess
    fitted.config["extra_perturbations"] = ["Z"]
    try:
        with pytest.warns(UserWarning, match=r"\['Z'\] were not seen in training"):
            out = fitted.predict(ctrl, "A+Z")
    finally:
        fitted.config["extra_perturbations"] = []
    assert np.isfinite(out.X).all()


def simulate_weak_and_strong(n: int = 1500, g: int = 40, seed: int = 0) -> ad.AnnData:
    """Counts of a screen like Papalexi's: weak singles W1..W6 share one effect; S1, S2 have strong effects
    that only half of their cells show (the others escape the knockout)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["control"] * 3 + [f"W{i}" for i in range(1, 7)] + ["S1", "S2"], n)
    base = np.log(rng.gamma(2.0, 1.0, g))
    shared = rng.normal(0, 0.4, g) * (rng.random(g) < 0.5)
    strong = {s: rng.normal(0, 2.5, g) * (rng.random(g) < 0.3) for s in ("S1", "S2")}
    is_w = np.char.startswith(labels.astype(str), "W")
    shows = rng.random(n) < 0.5
    logits = base + is_w[:, None] * shared
    for s, eff in strong.items():
        logits += ((labels == s) & shows)[:, None] * eff
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = rng.poisson(probs * rng.integers(150, 400, n)[:, None]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "batch": rng.choice(["b1", "b2"], n)}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


def test_unseen_single_at_least_as_good_as_the_mean_baseline() -> None:
    """Held-out weak singles share the effect of the training weak singles, which baseline.mean captures.

    Issue 4's bug (gem1.sc -0.012 vs mean 0.567), fixed in issue 14: training cells are decoded with their
    matched controls' technical / biological latents and an unseen single adds the mean of the seen singles'
    predicted changes, close to what baseline.mean predicts (measured: gem1.sc 0.572, baseline.mean 0.567).
    """
    data = simulate_weak_and_strong()
    spec = DataSpec(batch_key="batch")
    sp_ = split(data, spec, "perturbations", seed=0, holdout=["W5", "W6"])
    # the opt-in matched-control path for every training cell (the defaults keep Norman19 combinations but learn a
    # seen weak single at r 0.19 here; see Gem1Base's docstring)
    model = Gem1SC(n_hidden=64, matched_controls=True, prior_decode_rate=1.0, extra_perturbations=["W5", "W6"])
    models = ["baseline.mean", model]
    res = evaluate(data, spec, sp_, models, fit_kwargs={"gem1.sc": {"epochs": 60}})
    r = res.metrics["pearson_delta"]
    print(f"held-out weak singles, pearson_delta: baseline.mean {r['baseline.mean']:.3f}, gem1.sc {r['gem1.sc']:.3f}")
    assert r["baseline.mean"] > 0.4  # the simulation gives the mean baseline something to find
    assert r["gem1.sc"] >= r["baseline.mean"]


def test_transition_sample_mode_is_seeded(fitted: Gem1SC, data: ad.AnnData) -> None:
    x = torch.from_numpy(np.log1p(data.X[:10].toarray() / data.X[:10].toarray().sum(1, keepdims=True) * 1e4))
    pert = fitted.encode_perturbations(["A"] * 10)
    a = fitted.sample_batch(x, pert, generator=torch.Generator().manual_seed(1))
    b = fitted.sample_batch(x, pert, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, fitted.predict_batch(x, pert))


def test_classifier_reward(fitted: Gem1SC, data: ad.AnnData) -> None:
    x = np.log1p(data.X.toarray() / data.X.toarray().sum(1, keepdims=True) * 1e4).astype(np.float32)
    ct = data.obs["cell_type"].to_numpy()
    cells = torch.from_numpy(np.stack([x[ct == "t1"][:50], x[ct == "t2"][:50]]))
    reward = make_reward("gem1.classifier", predictor=fitted, goal="t2")
    d = reward.distance(cells)
    assert d.shape == (2,) and d[1] < 0.3 < 0.7 < d[0]
    with pytest.raises(DataSpecError, match="unknown goal label 't3'"):
        Gem1ClassifierReward(fitted, goal="t3")


# --------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_mcfaline23_cell_line_classification_far_above_chance(shared_data) -> None:
    adata = ad.read_h5ad(shared_data / "perturb/norman19_mcfaline23_devel.h5ad")
    adata = adata[adata.obs["dataset"] == "mcfaline23"].copy()
    spec = DataSpec(context_key="cell_type")
    rng = np.random.default_rng(0)
    test = rng.random(adata.n_obs) < 0.3
    model = Gem1Bulk()
    model.fit(adata[~test].copy(), spec, epochs=30, seed=0)
    out = model.classify_samples(adata[test].copy())
    acc = (out.obs["pred_cell_type"].to_numpy() == adata.obs["cell_type"].to_numpy()[test]).mean()
    print(f"mcfaline23 held-out cell-line accuracy {acc:.3f} on {int(test.sum())} cells (chance 1/3)")
    assert acc > 0.9  # chance is 1/3


@pytest.mark.slow
def test_plan_found_in_the_learned_world_succeeds_in_the_true_world(tmp_path, monkeypatch) -> None:
    """BFS in CellEnv-Reprogram-Screen-v0 (GEM-1 fitted on a grn.sergio screen), replayed in the SERGIO world."""
    import gymnasium as gym

    import cellgym.envs  # noqa: F401  (registers the tasks)
    from cellgym.registry import make_agent

    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    learned = gym.make("CellEnv-Reprogram-Screen-v0")
    true = gym.make("CellEnv-Reprogram-SERGIO-v0")
    assert learned.unwrapped.perturbations == true.unwrapped.perturbations  # one action vocabulary
    agent = make_agent("bfs")
    obs, info = learned.reset(seed=0)
    agent.reset(learned)
    plan: list[int] = []
    for _ in range(6):
        a = int(agent.act(obs, learned))
        obs, _, term, trunc, info = learned.step(np.int64(a))
        plan.append(a)
        if term or trunc:
            break
    assert info["success"], info
    true.reset(seed=0)
    for a in [a for a in plan if a < len(true.unwrapped.perturbations)]:
        _, _, term, _, tinfo = true.step(np.int64(a))
    print("plan", [learned.unwrapped.perturbations[a] for a in plan if a < 8], "true-world success", tinfo["success"])
    assert tinfo["success"], tinfo


def test_latent_representation_as_scvi_tools_users_expect(fitted: Gem1SC, data: ad.AnnData) -> None:
    z = fitted.get_latent_representation(data)
    classified = fitted.classify_samples(data)
    assert z.shape[0] == data.n_obs and np.allclose(classified.obsm["X_gem1"], z, atol=1e-5)
    start, stop = classified.uns["X_gem1_blocks"]["biological"]
    bio = fitted.get_latent_representation(data, block="biological")
    assert np.allclose(z[:, start:stop], bio, atol=1e-5) and np.allclose(classified.obsm["z_biological"], bio, atol=1e-5)
    # the biological block separates the cell types (what its classifier was trained for)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    labels = data.obs["cell_type"].astype(str).to_numpy()
    assert cross_val_score(LogisticRegression(max_iter=500), bio, labels, cv=3).mean() > 0.9
    with pytest.raises(Exception, match="expected one of"):
        fitted.get_latent_representation(data, block="nope")


# ------------------------------------------------------------------------------ issue 14: unseen and combos
def test_ridge_weights_sum_to_one_and_fall_back_to_the_equal_mean() -> None:
    from cellgym.predictors.gem1._model import ridge_weights

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 5))
    y = emb @ rng.normal(size=(5, 30))  # effects that the embedding predicts exactly
    alpha, lam, _ = ridge_weights(emb, y, emb[:3] + 0.01)
    assert np.isfinite(lam) and np.allclose(alpha.sum(1), 1.0)
    assert np.corrcoef((alpha @ y)[0], y[0])[0, 1] > 0.99  # the new row near training row 0 gets its effect
    noise = rng.normal(size=(12, 30))  # effects the embedding says nothing about: equal weights (mean_of_seen)
    alpha, lam, loo = ridge_weights(emb, noise, emb[:2])
    assert lam == float("inf") and np.allclose(alpha, 1 / 12) and loo["inf"] == min(loo.values())


def test_held_out_combination_as_sum_of_singles_close_to_additive(data: ad.AnnData) -> None:
    """Held-out A+B from singles A, B: the matched-pair delta term with additive composition (gem1.bulk's and
    gem1.nb's default) comes close to the additive baseline (measured: 0.974 vs 0.995; GEM-1's objective with
    latent composition 0.790, below baseline.mean's 0.890)."""
    sp_ = split(data, SPEC, "combos", seed=0, holdout=["A+B"])
    model = Gem1SC(n_hidden=64, delta_weight=10.0, combination="sum")
    res = evaluate(data, SPEC, sp_, ["baseline.mean", "baseline.additive", model], fit_kwargs={"gem1.sc": {"epochs": 30}})
    r = res.metrics["pearson_delta"]
    print(f"held-out A+B pearson_delta: mean {r['baseline.mean']:.3f} additive {r['baseline.additive']:.3f} gem1.sc {r['gem1.sc']:.3f}")
    assert r["gem1.sc"] > r["baseline.mean"] + 0.5 * (r["baseline.additive"] - r["baseline.mean"])
    assert r["gem1.sc"] > 0.8


def simulate_gene_families(n: int = 1400, g: int = 40, seed: int = 0) -> tuple[ad.AnnData, dict[str, torch.Tensor]]:
    """Knockouts of 10 genes of two families; a family shares one effect; family identity is in the embedding."""
    rng = np.random.default_rng(seed)
    targets = [f"g{j}" for j in range(10)]
    family = np.array([0, 1] * 5)
    labels = rng.choice(["control"] * 3 + targets, n)
    base = np.log(rng.gamma(2.0, 1.0, g))
    effects = rng.normal(0, 1.5, (2, g)) * (rng.random((2, g)) < 0.4)
    fam = {t: family[i] for i, t in enumerate(targets)}
    logits = base + np.stack([effects[fam[lab]] if lab in fam else np.zeros(g) for lab in labels])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = rng.poisson(probs * rng.integers(300, 800, n)[:, None]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "batch": rng.choice(["b1", "b2"], n)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    centre = rng.normal(0, 1, (2, 8))
    emb = {f"g{j}": torch.tensor(centre[family[j % 10]] + rng.normal(0, 0.2, 8), dtype=torch.float32) for j in range(g)}
    return adata, emb


def test_unseen_gene_gets_its_own_effect_from_its_embedding(tmp_path) -> None:
    """Two gene families with different effects: the equal-weight mean of the seen singles blurs them (as
    baseline.mean does); the ridge map from the target's embedding picks the family (measured: pearson_delta
    0.984 vs 0.675, baseline.mean 0.675)."""
    from cellgym.predictors.genes import GeneEmbeddings, save_embeddings

    adata, emb = simulate_gene_families()
    genes = sorted(emb)
    save_embeddings(GeneEmbeddings(genes, torch.stack([emb[k] for k in genes]), source="test"), tmp_path / "emb.pt")
    spec = DataSpec(batch_key="batch")
    held = ["g8", "g9"]
    sp_ = split(adata, spec, "perturbations", seed=0, holdout=held)
    mapped = Gem1SC(n_hidden=64, delta_weight=10.0, extra_perturbations=held, gene_embeddings=[str(tmp_path / "emb.pt")])
    res = evaluate(adata, spec, sp_, ["baseline.mean", mapped], fit_kwargs={"gem1.sc": {"epochs": 30}})
    assert mapped.mapped == held and np.isfinite(mapped.mapping_report["lambda"])
    plain = Predictor.load(mapped.save(tmp_path / "m"))  # the mapping is saved and loaded with the model
    assert plain.mapped == held and torch.equal(plain.module.extra_alpha, mapped.module.extra_alpha)
    plain.mapped = plain.unseen_columns = []  # the same fitted model without the mapping: equal-weight mean of the seen singles
    plain.module.extra_alpha = torch.zeros(0, len(plain.perturbations))
    res_plain = evaluate(adata, spec, sp_, [plain])
    r = res.metrics["pearson_delta"]
    r_plain = float(res_plain.metrics["pearson_delta"].iloc[0])
    print(f"held-out family knockouts: mean {r['baseline.mean']:.3f} mean_of_seen {r_plain:.3f} mapped {r['gem1.sc']:.3f}")
    assert r["gem1.sc"] > 0.9 and r["gem1.sc"] > r_plain + 0.2 and r["gem1.sc"] > r["baseline.mean"] + 0.2


def test_unseen_single_without_embedding_gets_the_measured_mean_change(data: ad.AnnData, tmp_path) -> None:
    """gem1.nb's default for an unseen single the model knows nothing about: every cell of a context is shifted by
    the equal-weight mean of the seen singles' measured changes there (combinations excluded), then clamped at 0;
    listed in ``from_measured`` and kept by save / load. (On Papalexi's held-out knockouts this is what lifts
    gem1.nb from 0.089 to baseline.mean's 0.127, benchmarks/gem1_decompose.py.)"""
    from cellgym.predictors.base import expression

    train = data[data.obs["perturbation"] != "C"].copy()
    model = make_predictor("gem1.nb", n_hidden=32, extra_perturbations=["C"])
    model.fit(train, SPEC, epochs=2, seed=0)
    assert model.config["unseen_effect"] == "measured" and model.from_measured == ["C"]
    x = expression(train, SPEC)
    labels = train.obs["perturbation"].astype(str).to_numpy()
    cell_type = train.obs["cell_type"].astype(str).to_numpy()
    loaded = Predictor.load(model.save(tmp_path / "m"))
    assert loaded.from_measured == ["C"]
    for t in ("t1", "t2"):
        ctrl = x[(labels == "control") & (cell_type == t)]
        expected = np.mean([x[(labels == s) & (cell_type == t)].mean(0) - ctrl.mean(0) for s in ("A", "B")], 0)
        ctx = model.encode_contexts([t]).expand(len(ctrl))
        for m in (model, loaded):
            with pytest.warns(UserWarning, match="measured mean change"):
                pert = m.encode_perturbations(["C"]).expand(len(ctrl), -1)
            out = m.predict_batch(torch.from_numpy(ctrl), pert, ctx).numpy()
            np.testing.assert_allclose(out, np.clip(ctrl + expected, 0, None), atol=1e-5)
        # a seen single still gets the model's own predicted change, not the measured mean
        seen = model.predict_batch(torch.from_numpy(ctrl), model.encode_perturbations(["A"]).expand(len(ctrl), -1), ctx).numpy()
        assert np.abs(seen - np.clip(ctrl + expected, 0, None)).max() > 1e-3
    # a checkpoint of the previous version (no measured_effect, unseen_effect="mean_of_seen") still loads
    import yaml

    folder = tmp_path / "m"
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    del cfg["extra"]["from_measured"]
    cfg["config"]["unseen_effect"] = "mean_of_seen"
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    weights = torch.load(folder / "weights.pt", weights_only=True)
    del weights["measured_effect"]
    torch.save(weights, folder / "weights.pt")
    old = Predictor.load(folder)
    assert old.module.measured_effect is None and old.config["unseen_effect"] == "mean_of_seen" and old.from_measured == []


def test_unseen_weak_singles_at_least_the_mean_baseline_with_gem1_nb() -> None:
    """Held-out weak singles sharing the training weak singles' effect (Papalexi-like screen with strong knockouts
    that dominate the mean): gem1.nb's default prediction scores at least baseline.mean's pearson_delta (minus
    0.01); the same fit predicting them from its own predicted changes is printed beside it."""
    data = simulate_weak_and_strong()
    spec = DataSpec(batch_key="batch")
    sp_ = split(data, spec, "perturbations", seed=0, holdout=["W5", "W6"])
    model = make_predictor("gem1.nb", n_hidden=64, extra_perturbations=["W5", "W6"])
    res = evaluate(data, spec, sp_, ["baseline.mean", model], fit_kwargs={"gem1.nb": {"epochs": 10}})
    r = res.metrics["pearson_delta"]
    model.module.unseen_effect = "mean_of_seen"
    r_own = float(evaluate(data, spec, sp_, [model]).metrics["pearson_delta"].iloc[0])
    print(f"held-out weak singles, pearson_delta: baseline.mean {r['baseline.mean']:.3f}, gem1.nb {r['gem1.nb']:.3f} "
          f"(mean_of_seen {r_own:.3f})")
    assert r["baseline.mean"] > 0.4
    assert r["gem1.nb"] >= r["baseline.mean"] - 0.01


def test_unseen_knockout_of_a_measured_gene_gets_its_targets_own_change() -> None:
    """Knockouts that lower their own target gene (as CRISPR knockouts of Papalexi's measured targets do) plus a
    shared effect: an unseen knockout of a measured gene gets the measured mean change plus the seen knockouts'
    mean own-target change at its target, which baseline.mean spreads over the other targets (Papalexi held-out
    knockouts: 0.127 -> 0.145 at seed 0, 0.362 -> 0.402 at seed 1)."""
    rng = np.random.default_rng(0)
    g, n = 40, 1200
    targets = [f"g{j}" for j in range(10)]
    labels = rng.choice(["control"] * 3 + targets, n)
    logits = np.log(rng.gamma(2.0, 1.0, g)) + (labels != "control")[:, None] * rng.normal(0, 0.3, g) * (rng.random(g) < 0.5)
    for j, t in enumerate(targets):
        logits[labels == t, j] -= 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = rng.poisson(probs * rng.integers(300, 800, n)[:, None]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)])
    data = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    spec = DataSpec()
    sp_ = split(data, spec, "perturbations", seed=0, holdout=["g8", "g9"])
    model = make_predictor("gem1.nb", n_hidden=32, extra_perturbations=["g8", "g9"])
    res = evaluate(data, spec, sp_, ["baseline.mean", model], fit_kwargs={"gem1.nb": {"epochs": 2}})
    r = res.metrics["pearson_delta"]
    print(f"held-out self-knockdowns, pearson_delta: baseline.mean {r['baseline.mean']:.3f}, gem1.nb {r['gem1.nb']:.3f}, "
          f"own-target change {float(model.module.target_effect):.2f}")
    assert model.own_target == ["g8", "g9"] and float(model.module.target_effect) < -0.5
    assert r["gem1.nb"] > r["baseline.mean"] + 0.1
