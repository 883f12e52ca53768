"""Galaxy: macrogenes, cross-species integration, perturbation transfer, trees, reward, env, CLI.

Test bed (``cellgym.predictors.galaxy.two_species``): pbmc68k_reduced (bundled with scanpy) or the
Norman 2019 screen split in two halves; half 2 becomes a generated species B (30 % annotated 1:1
orthologs, unannotated orthologs, merged paralog families, lost genes, a species shift and noise).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cellgym.predictors import Predictor
from cellgym.predictors.galaxy import (
    GalaxyEmbeddingReward,
    GalaxyPredictor,
    MacrogeneError,
    Macrogenes,
    build_macrogenes,
    celltype_tree,
    concat_pca,
    label_transfer_accuracy,
    ortholog_pca,
    rank_weights,
    species_entropy,
    two_species,
)
from cellgym.predictors.genes import GeneEmbeddings
from cellgym.predictors.metrics import pearson_delta

KEY = "bulk_labels"
MAJOR = ["CD14+ Monocyte", "CD19+ B", "CD4+/CD25 T Reg", "CD8+ Cytotoxic T", "Dendritic"]


@pytest.fixture(scope="module")
def pbmc_bed():
    import scanpy as sc

    return two_species(sc.datasets.pbmc68k_reduced().raw.to_adata(), seed=0)


@pytest.fixture(scope="module")
def pbmc_model(pbmc_bed):
    """Galaxy on A (labelled) and B (labels withheld), protein modality = the test bed's gene embeddings."""
    b = pbmc_bed.b.copy()
    del b.obs[KEY]
    model = GalaxyPredictor(celltype_key=KEY, n_macrogenes=150, n_latent=16, epochs=40)
    report = model.fit({"A": pbmc_bed.a, "B": b}, protein_embeddings={"A": pbmc_bed.emb_a, "B": pbmc_bed.emb_b},
                       batch_size=128, seed=0)
    return model, report


# ------------------------------------------------------------------------------------------- macrogenes
def test_rank_weights_follow_saturn_formula() -> None:
    centers = np.array([[0.0], [1.0], [3.0], [10.0]])
    w = rank_weights(np.array([[0.9], [9.0]]), centers)
    ranks = np.array([[2, 1, 3, 4], [4, 3, 2, 1]])
    np.testing.assert_allclose(w, 2 * np.log1p(1 / ranks) ** 2, rtol=1e-6)
    assert w[0].argmax() == 1 and w[1].argmax() == 3


def test_macrogenes_report_missing_genes_and_reload_exactly(tmp_path, pbmc_bed) -> None:
    genes_a = list(pbmc_bed.a.var_names)
    emb_a = pbmc_bed.emb_a.subset(genes_a[10:])  # 10 genes without an embedding
    mg = build_macrogenes({"A": genes_a, "B": list(pbmc_bed.b.var_names)},
                          {"protein": {"A": emb_a, "B": pbmc_bed.emb_b}}, n_macrogenes=40, seed=0)
    assert mg.missing["A"]["protein"] == genes_a[:10]
    w = mg.matrix("A")
    assert w.shape == (len(genes_a), 40) and not w[:10].any() and (w[10:] > 0).all()
    path = mg.save(tmp_path / "mg.npz")
    again = Macrogenes.load(path)
    x = pbmc_bed.a.X
    np.testing.assert_array_equal(again.transform(x, genes_a, "A"), mg.transform(x, genes_a, "A"))
    assert again.missing == mg.missing
    pkl = mg.export_saturn_pickle(tmp_path)
    assert [p.name for p in pkl] == ["all-esm_to_macrogenes.pkl"]
    with pytest.raises(MacrogeneError, match=r"pickle|not a cellgym"):
        Macrogenes.load(pkl[0])
    with pytest.raises(MacrogeneError, match="n_macrogenes=5000"):
        build_macrogenes({"A": genes_a}, {"protein": {"A": pbmc_bed.emb_a}}, n_macrogenes=5000)
    with pytest.raises(MacrogeneError, match="unknown"):
        mg.transform(x[:, :5], ["nope", *genes_a[1:5]], "A")


def test_macrogene_blocks_protein_then_text(pbmc_bed) -> None:
    genes = {"A": list(pbmc_bed.a.var_names), "B": list(pbmc_bed.b.var_names)}
    rng = np.random.default_rng(0)
    text = {s: GeneEmbeddings(g, rng.normal(size=(len(g), 8))) for s, g in genes.items()}
    mg = build_macrogenes(genes, {"text": text, "protein": {"A": pbmc_bed.emb_a, "B": pbmc_bed.emb_b}},
                          n_macrogenes={"protein": 30, "text": 20})
    assert mg.modalities == ["protein", "text"] and mg.sizes == [30, 20] and mg.names[30] == "text_0"
    m = mg.transform(pbmc_bed.b.X, genes["B"], "B")
    np.testing.assert_allclose(m[:, 30:], pbmc_bed.b.X @ mg.weights["B"]["text"], rtol=1e-5)


# ------------------------------------------------------------------------------------------ integration
def test_galaxy_learns_and_transfers_labels_better_than_orthologs(pbmc_model, pbmc_bed) -> None:
    model, report = pbmc_model
    rec = report.history["reconstruction"]
    assert rec[-1] < 0.6 * rec[0]
    assert 0 <= model.best_epoch < 40 and len(report.history["val_score"]) == 40
    a, b = pbmc_bed.a, pbmc_bed.b
    ea, eb = model.embed(a, "A"), model.embed(b, "B")
    oa, ob = ortholog_pca(a.X, list(a.var_names), b.X, list(b.var_names), pbmc_bed.one_to_one)
    ca, cb = concat_pca(a.X, list(a.var_names), b.X, list(b.var_names))
    acc = {name: label_transfer_accuracy(u, a.obs[KEY], v, b.obs[KEY]) for name, (u, v) in
           {"galaxy": (ea, eb), "ortholog": (oa, ob), "concat": (ca, cb)}.items()}
    assert acc["galaxy"] > acc["ortholog"] > acc["concat"], acc
    species = ["A"] * a.n_obs + ["B"] * b.n_obs
    assert species_entropy(np.concatenate([ea, eb]), species) > 0.8 > species_entropy(np.concatenate([ca, cb]), species)


def test_outputs_reload_and_reproduce_macrogene_expression(tmp_path, pbmc_model, pbmc_bed) -> None:
    import anndata as ad

    model, report = pbmc_model
    out = model.write_outputs(tmp_path, {"A": pbmc_bed.a, "B": pbmc_bed.b}, history=report)
    merged = ad.read_h5ad(out["merged"])
    assert merged.n_obs == pbmc_bed.a.n_obs + pbmc_bed.b.n_obs and merged.obsm["X_galaxy"].shape[1] == 16
    weights = Macrogenes.load(tmp_path / "macrogenes.npz")
    for s, part in (("A", pbmc_bed.a), ("B", pbmc_bed.b)):
        again = weights.transform(part.X, list(part.var_names), s)
        np.testing.assert_array_equal(again, merged[merged.obs["species"] == s].X)
    loaded = Predictor.load(tmp_path / "model")
    assert isinstance(loaded, GalaxyPredictor)
    np.testing.assert_array_equal(loaded.embed(pbmc_bed.b, "B"), ad.read_h5ad(out["B"]).obsm["X_galaxy"])
    assert pd.read_csv(out["log"])["val_score"].notna().all()


def test_fit_rejects_bad_input(pbmc_bed) -> None:
    from cellgym.predictors import DataSpecError

    with pytest.raises(DataSpecError, match=r"galaxy\.fit takes"):
        GalaxyPredictor().fit(pbmc_bed.a.X)
    with pytest.raises(DataSpecError, match="gene embeddings"):
        GalaxyPredictor().fit({"A": pbmc_bed.a, "B": pbmc_bed.b})
    with pytest.raises(DataSpecError, match=r"species \['B'\]"):
        GalaxyPredictor().fit({"A": pbmc_bed.a, "B": pbmc_bed.b}, protein_embeddings={"A": pbmc_bed.emb_a})


# ------------------------------------------------------------------------------------------------ trees
def test_tree_topology_on_known_centroids() -> None:
    rng = np.random.default_rng(0)
    types = rng.normal(scale=5.0, size=(4, 6))
    emb = np.concatenate([types[t] + rng.normal(scale=0.3, size=(20, 6)) for s in range(2) for t in range(4)])
    species = np.repeat(["human", "mouse"], 80)
    celltype = np.tile(np.repeat([f"t{t}" for t in range(4)], 20), 2)
    tree = celltype_tree(emb, species, celltype)
    assert tree.sister_pairs() == {frozenset((f"human|t{t}", f"mouse|t{t}")) for t in range(4)}
    assert tree.newick.endswith(";") and tree.newick.count("'human|") == 4


def test_galaxy_tree_groups_each_type_across_species(tmp_path, pbmc_model, pbmc_bed) -> None:
    model, _ = pbmc_model
    a, b = pbmc_bed.a, pbmc_bed.b
    keep_a, keep_b = a.obs[KEY].isin(MAJOR).to_numpy(), b.obs[KEY].isin(MAJOR).to_numpy()
    emb = np.concatenate([model.embed(a, "A")[keep_a], model.embed(b, "B")[keep_b]])
    species = ["A"] * keep_a.sum() + ["B"] * keep_b.sum()
    types = np.concatenate([a.obs[KEY][keep_a].astype(str), b.obs[KEY][keep_b].astype(str)])
    tree = celltype_tree(emb, species, types)
    assert tree.sister_pairs() == {frozenset((f"A|{t}", f"B|{t}")) for t in MAJOR}
    nwk, png = tree.write(tmp_path / "tree")
    assert nwk.read_text().strip() == tree.newick and png.stat().st_size > 1000


# ------------------------------------------------------------------------------------ perturbation transfer
@pytest.fixture(scope="module")
def norman_bed(shared_data):
    import anndata as ad

    full = ad.read_h5ad(shared_data / "perturb/norman19_mcfaline23_devel.h5ad")
    norman = full[full.obs["dataset"] == "norman19"].copy()
    return two_species(norman, split_key="perturbation", seed=0)


@pytest.fixture(scope="module")
def transfer_model(norman_bed):
    b = norman_bed.b
    controls = b[b.obs["perturbation"] == "control"].copy()
    model = GalaxyPredictor(n_macrogenes=150, epochs=20, source="A", target="B")
    model.fit({"A": norman_bed.a, "B": controls}, protein_embeddings={"A": norman_bed.emb_a, "B": norman_bed.emb_b}, seed=0)
    return model, controls


def test_perturbation_transfer_beats_no_change(transfer_model, norman_bed) -> None:
    model, controls = transfer_model
    b = norman_bed.b
    labels = b.obs["perturbation"].astype(str).to_numpy()
    assert model.genes == list(b.var_names) and "control" not in model.perturbations
    same = model.predict(controls[:5], "control").X
    np.testing.assert_allclose(same, controls[:5].X, atol=1e-6)  # no perturbation: cells unchanged
    base = controls.X.mean(0)
    perts = sorted(set(labels) - {"control"})
    pred = {p: model.predict(controls, p).X.mean(0) for p in perts}
    scores = np.array([[pearson_delta(pred[p], b.X[labels == q].mean(0), base) for q in perts] for p in perts])
    # "no change" scores 0 by definition (cellgym.predictors.metrics.pearson_delta)
    assert np.diag(scores).mean() > 0.1, np.diag(scores)
    # and each transferred effect matches its own perturbation's true effect better than the others'
    assert np.diag(scores).mean() > scores[~np.eye(len(perts), dtype=bool)].mean() + 0.05


def test_basal_transfer_maps_latents(norman_bed) -> None:
    b = norman_bed.b
    controls = b[b.obs["perturbation"] == "control"].copy()
    model = GalaxyPredictor(n_macrogenes=100, epochs=3, transfer="basal")
    model.fit({"A": norman_bed.a, "B": controls}, protein_embeddings={"A": norman_bed.emb_a, "B": norman_bed.emb_b}, seed=0)
    assert model.config["source"] == "A" and model.config["target"] == "B"
    assert torch.isfinite(model.module.delta).all() and model.module.delta.abs().sum() > 0


def test_galaxy_as_reprogram_transition_and_reward(transfer_model, norman_bed) -> None:
    from cellgym.envs.testing import check_task

    model, controls = transfer_model
    b = norman_bed.b
    target = sorted(set(b.obs["perturbation"].astype(str)) - {"control"})[0]
    check_task("CellEnv-Reprogram-v0", adata=b, spec=model.spec, source="control", target=target, predictor=model,
               reward="target.energy", n_steps=6)
    reward = GalaxyEmbeddingReward(model, b[b.obs["perturbation"] == target].X, goal_species="B")
    near = torch.from_numpy(b[b.obs["perturbation"] == target].X[:40])[None]
    far = torch.from_numpy(controls.X[:40])[None]
    assert float(reward(near)) < float(reward(far))
    from_a = GalaxyEmbeddingReward(model, norman_bed.a[norman_bed.a.obs["perturbation"] == "control"].X, goal_species="A")
    # B's controls sit nearer A's controls in X_galaxy than B's most strongly perturbed cells do
    labels = b.obs["perturbation"].astype(str).to_numpy()
    ctrl_mean = np.asarray(b[labels == "control"].X.mean(0)).ravel()
    strongest = max(set(labels) - {"control"},
                    key=lambda p: float(np.linalg.norm(np.asarray(b[labels == p].X.mean(0)).ravel() - ctrl_mean)))
    perturbed = torch.from_numpy(np.asarray(b[labels == strongest].X[:40]))[None]
    assert float(from_a(far)) < float(from_a(perturbed))
