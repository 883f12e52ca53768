"""State (ST + SE), graph gene embeddings, the shared torch energy distance and the few-shot split."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

from cellgym.predictors import DataSpec, Predictor, evaluate, split
from cellgym.predictors.base import UnknownPerturbationError
from cellgym.predictors.genes import (
    GeneEmbeddingError,
    GeneEmbeddings,
    coexpression_embeddings,
    graph_embeddings,
    save_embeddings,
)
from cellgym.predictors.metrics import energy_distance, energy_distance_torch
from cellgym.predictors.state import StateEmbedding, StateEmbeddingReward, StateTransition, set_layout
from cellgym.predictors.state._prior import fit_effect_prior

G, MODULE = 40, 8  # 5 co-expression modules of 8 genes


def simulate(seed: int = 0, n: int = 60, contexts: tuple[str, ...] = ("c1", "c2"), shift: float = 0.5) -> ad.AnnData:
    """Cells with 5 co-expression modules; knocking down gene k lowers its module (and k most)."""
    rng = np.random.default_rng(seed)
    targets = [f"g{k}" for k in (0, 1, 2, 8, 9, 10, 16, 17, 24, 25)]
    xs, labels, ctxs = [], [], []
    for c, ctx in enumerate(contexts):
        base = 2.0 + shift * c * (np.arange(G) % 3 == 0)
        for lab in ["control", *targets]:
            a = rng.normal(0, 0.6, size=(n, G // MODULE)).repeat(MODULE, axis=1)
            x = base + a + rng.normal(0, 0.3, size=(n, G))
            if lab != "control":
                k = int(lab[1:])
                x[:, (k // MODULE) * MODULE : (k // MODULE + 1) * MODULE] -= 1.0
                x[:, k] -= 1.0
            xs.append(np.clip(x, 0, None))
            labels += [lab] * n
            ctxs += [ctx] * n
    obs = pd.DataFrame({"perturbation": labels, "cell_type": ctxs}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.concatenate(xs).astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(G)]))


SPEC = DataSpec(context_key="cell_type", counts=None)
FAST = {"set_size": 32, "d_model": 32, "dim_feedforward": 64, "n_heads": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    return simulate()


@pytest.fixture(scope="module")
def fitted(data: ad.AnnData) -> StateTransition:
    model = StateTransition(**FAST)
    model.fit(data, SPEC, epochs=25, seed=0)
    return model


# ------------------------------------------------------------------------------------ energy distance
def test_torch_energy_distance_is_the_numpy_one_and_differentiable() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.normal(1.0, 1.0, size=(20, 5))
    ref = 2 * np.linalg.norm(x[:, None] - y[None], axis=-1).mean() - np.linalg.norm(x[:, None] - x[None], axis=-1).mean() \
        - np.linalg.norm(y[:, None] - y[None], axis=-1).mean()
    assert energy_distance(x, y, max_cells=None) == pytest.approx(ref, rel=1e-9)
    assert energy_distance(x, x, max_cells=None) == pytest.approx(0.0, abs=1e-9)
    tx = torch.tensor(np.stack([x[:20], x[10:]]), requires_grad=True)  # batched: 2 pairs of sets
    ty = torch.tensor(np.stack([y, y]))
    d = energy_distance_torch(tx, ty)
    assert d.shape == (2,) and float(d[0].detach()) == pytest.approx(energy_distance(x[:20], y, max_cells=None), rel=1e-9)
    d.sum().backward()
    assert torch.isfinite(tx.grad).all() and tx.grad.abs().sum() > 0  # finite even on the zero-distance diagonal


# -------------------------------------------------------------------------------------- gene embeddings
def test_graph_embeddings_from_edge_list_and_adjacency(tmp_path) -> None:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(30)]
    rows = [(genes[i], genes[j], 900 if i // 10 == j // 10 else 150) for i in range(30) for j in range(i + 1, 30) if rng.random() < 0.5]
    tsv = tmp_path / "string.tsv"
    tsv.write_text("protein1 protein2 combined_score\n" + "\n".join(f"{a} {b} {w}" for a, b, w in rows) + "\nG40 G41 999\n")
    emb = graph_embeddings(tsv, dim=4)
    assert "G40" not in emb and emb.missing(["G0", "G40"]) == ["G40"]  # a 2-gene component is reported missing
    m = emb.subset(genes).matrix
    z = torch.nn.functional.normalize(m, dim=1) @ torch.nn.functional.normalize(m, dim=1).T
    same = torch.tensor([[i // 10 == j // 10 for j in range(30)] for i in range(30)])
    assert z[same].mean() > z[~same].mean() + 0.3  # strongly linked genes embed close
    pq = tmp_path / "string.parquet"
    pd.DataFrame(rows, columns=["gene1", "gene2", "score"]).to_parquet(pq)
    assert torch.allclose(graph_embeddings(pq, dim=4).subset(genes).matrix.abs(), m.abs(), atol=1e-4)
    adj = sp.lil_matrix((30, 30))
    for a, b, w in rows:
        adj[genes.index(a), genes.index(b)] = w
    sp.save_npz(tmp_path / "adj.npz", adj.tocsr())
    (tmp_path / "genes.txt").write_text("\n".join(genes))
    emb2 = graph_embeddings(tmp_path / "adj.npz", genes_file=tmp_path / "genes.txt", dim=4)
    assert torch.allclose(emb2.subset(genes).matrix.abs(), m.abs(), atol=1e-4)


def test_coexpression_embeddings_group_modules(data: ad.AnnData) -> None:
    emb = coexpression_embeddings(data.X, list(data.var_names), dim=8)
    m = torch.nn.functional.normalize(emb.subset(list(data.var_names)).matrix, dim=1)
    z = m @ m.T
    same = torch.tensor([[i // MODULE == j // MODULE for j in range(G)] for i in range(G)]) & ~torch.eye(G, dtype=torch.bool)
    assert z[same].mean() > z[~same & ~torch.eye(G, dtype=torch.bool)].mean() + 0.3


@pytest.mark.parametrize(
    ("content", "match"),
    [("not a network at all\n", "cannot be read|score|column"), ("a b -3\n", "not a number >= 0"), ("", "cannot be read|0 row")],
)
def test_bad_network_files_fail_in_one_line(tmp_path, content: str, match: str) -> None:
    f = tmp_path / "net.tsv"
    f.write_text(content)
    with pytest.raises(GeneEmbeddingError, match=match) as err:
        graph_embeddings(f, dim=2)
    assert "\n" not in str(err.value) and "net.tsv" in str(err.value)


def test_bad_embedding_files_for_state_fail_in_one_line(tmp_path, data: ad.AnnData) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    save_embeddings(GeneEmbeddings(["TP53", "MYC"], torch.ones(2, 4)), tmp_path / "other.pt")
    for path, match in [(tmp_path / "junk.pt", "cannot be read"), (tmp_path / "other.pt", "only 0 of"),
                        (tmp_path / "x.embeddings", "expected 'coexpression'")]:
        with pytest.raises(GeneEmbeddingError, match=match) as err:
            StateTransition(**FAST, gene_embeddings=[str(path)]).fit(data, SPEC, epochs=1)
        assert "\n" not in str(err.value) and path.name in str(err.value)


# ------------------------------------------------------------------------------------------------ ST
def test_set_layout_keeps_populations_apart_and_balances_sets() -> None:
    pert = torch.tensor([[1.0, 0]] * 5 + [[0, 1.0]] * 3 + [[1.0, 0]] * 2)
    ctx = torch.zeros(10, dtype=torch.long)
    set_id, slot, n_sets, width = set_layout(pert, ctx, set_size=3)
    assert n_sets == 2 + 1 + 1 and width == 3
    assert set_id.tolist() == [0, 1, 0, 1, 0, 2, 2, 2, 3, 3]  # 5 cells -> sets of 3 and 2, round robin
    assert len(set(zip(set_id.tolist(), slot.tolist(), strict=True))) == 10


def test_st_learns_and_beats_mean_on_held_out_contexts(data: ad.AnnData) -> None:
    # without the effect prior the network must learn every effect itself: the set loss halves
    hist = StateTransition(**FAST, effect_prior=False).fit(data, SPEC, epochs=25, seed=0).history["loss"]
    assert hist[-1] < 0.5 * hist[0]
    sp_ = split(data, SPEC, "contexts", holdout=["c2"])
    res = evaluate(data, SPEC, sp_, ["baseline.mean", StateTransition(**FAST)], fit_kwargs={"state.transition": {"epochs": 25}})
    m = res.metrics
    assert m.loc["state.transition", "pearson_delta"] > m.loc["baseline.mean", "pearson_delta"] + 0.2
    assert m.loc["state.transition", "energy_distance"] < m.loc["baseline.mean", "energy_distance"]


def test_st_trains_for_a_held_out_context_and_keeps_w_of_the_perturbation_specific_part() -> None:
    data = simulate(n=30, contexts=("c1", "c2", "c3"))
    train = data[(data.obs["cell_type"] != "c2") | (data.obs["perturbation"] == "control")].copy()
    model = StateTransition(**FAST)
    model.fit(train, SPEC, epochs=2, seed=0)
    m = model.module
    assert m.novel_context.tolist() == [float(c == "c2") for c in model.contexts]  # controls only: novel
    assert float(m.novel_keep) == pytest.approx(model.shrinkage)
    for other, kwargs in ((data, {}), (train, {"novel_rate": 0.0})):  # every context measured / switched off
        off = StateTransition(**FAST, **kwargs)
        off.fit(other, SPEC, epochs=1, seed=0)
        assert float(off.module.novel_context.sum()) == 0
    # novel_keep = 0: in the novel context every perturbation gets the same correction (its identity hidden)
    ctrl = torch.from_numpy(np.asarray(train[(train.obs["cell_type"] == "c2")].X[:16]))
    pert = model.encode_perturbations(["g1", "g16"])
    ctx = torch.full((2,), model.contexts.index("c2"))
    m.novel_keep.fill_(0.0)
    m.eval()
    with torch.no_grad():
        corr = [m.novel_shrink(torch.randn(1, 16, ctrl.shape[1]), ctrl[None], pert[i:i + 1], None, None,
                               torch.ones(1, dtype=torch.bool)) for i in range(2)]
        kept = m.novel_shrink(corr[0] * 0 + 1.0, ctrl[None], pert[:1], None, None, torch.zeros(1, dtype=torch.bool))
    assert torch.allclose(corr[0], corr[1]) and torch.equal(kept, torch.ones_like(kept))  # other contexts untouched
    assert model.predict_sets(ctrl.expand(2, -1, -1).contiguous(), pert, ctx).shape == (2, 16, ctrl.shape[1])


def test_st_ensemble_averages_independent_members_and_its_spread_over_seeds_falls(tmp_path) -> None:
    data = simulate(n=30, contexts=("c1", "c2", "c3"))
    train = data[(data.obs["cell_type"] != "c2") | (data.obs["perturbation"] == "control")].copy()
    ctrl = torch.from_numpy(np.asarray(train[train.obs["cell_type"] == "c2"].X[:24]))
    single = StateTransition(**FAST)
    single.fit(data, SPEC, epochs=1, seed=0)
    assert single.members == 1 and len(single.module.members) == 0

    def novel_delta(model: StateTransition) -> torch.Tensor:
        """(G,) mean predicted change of g1 in the held-out context c2."""
        ctx = torch.full((len(ctrl),), model.contexts.index("c2"))
        pert = model.encode_perturbations(["g1"] * len(ctrl))
        return (model.predict_batch(ctrl, pert, ctx) - model.predict_batch(ctrl, pert * 0, ctx)).mean(0)

    # a held-out context (controls only): three independently initialised members by default, averaged
    runs = {k: [] for k in (1, 3)}
    for seed in range(4):
        for k in (1, 3):
            model = StateTransition(**FAST, n_members=None if k == 3 else 1)
            model.fit(train, SPEC, epochs=4, seed=seed)
            assert model.members == k and len(model.module.members) == k - 1
            runs[k].append(novel_delta(model))
    # the ensemble's prediction varies less with the seed than one member's
    spread = {k: torch.stack(v).std(0).mean().item() for k, v in runs.items()}
    assert spread[3] < 0.8 * spread[1]
    m = model.module
    assert not torch.equal(m.basal[0].weight, m.members[0].basal[0].weight)  # independent initialisations
    ctx = torch.full((1,), model.contexts.index("c2"))
    pert = model.encode_perturbations(["g1"])
    prior, novel = m.prior(pert, ctx), m.novel_context[ctx] > 0
    with torch.no_grad():
        each = [mm._forward_one(ctrl[None], pert, None, prior, None, None, None, novel)[0] for mm in (m, *m.members)]
        assert torch.allclose(m(ctrl[None], pert, prior=prior, novel=novel), torch.stack(each).mean(0), atol=1e-6)
    loaded = Predictor.load(model.save(tmp_path / "ens"))
    assert loaded.members == 3 and torch.equal(novel_delta(loaded), novel_delta(model))
    # untrained heads (all members): the held-out context gets exactly the prior
    for mm in (m, *m.members):
        torch.nn.init.zeros_(mm.head[-1][-1].weight)
        torch.nn.init.zeros_(mm.head[-1][-1].bias)
    x = ctrl[None] + 5.0  # far from 0, so the ReLU does not cut the shift
    with torch.no_grad():
        assert torch.allclose(m(x, pert, prior=prior, novel=novel) - x, prior[:, None].expand_as(x), atol=1e-5)
    with pytest.raises(Exception, match="n_members"):
        StateTransition(n_members=0)


def test_st_predicts_unseen_perturbations_from_coexpression_and_pt_embeddings(tmp_path, data: ad.AnnData) -> None:
    held = ["g2", "g10", "g17"]
    sp_ = split(data, SPEC, "perturbations", holdout=held)
    emb = coexpression_embeddings(data.X, list(data.var_names), dim=8)
    save_embeddings(emb, tmp_path / "protein_like.pt")
    models = [StateTransition(**FAST, extra_perturbations=held),
              StateTransition(**FAST, gene_embeddings=[str(tmp_path / "protein_like.pt")], extra_perturbations=held)]
    res = evaluate(data, SPEC, sp_, ["baseline.mean", models[0]], fit_kwargs={"state.transition": {"epochs": 25}})
    res_pt = evaluate(data, SPEC, sp_, [models[1]], fit_kwargs={"state.transition": {"epochs": 25}})
    mean = res.metrics.loc["baseline.mean", "pearson_delta"]
    assert res.metrics.loc["state.transition", "coverage"] == 1.0
    assert res.metrics.loc["state.transition", "pearson_delta"] > mean + 0.2
    assert res_pt.metrics.loc["state.transition", "pearson_delta"] > mean + 0.2
    onehot = StateTransition(**FAST, perturbation_features="onehot", extra_perturbations=held, unseen_fallback="error")
    onehot.fit(data[sp_.train].copy(), SPEC, epochs=1)
    with pytest.raises(UnknownPerturbationError, match="cannot predict unseen perturbation"):
        onehot.encode_perturbations(["g2"])
    # the default fallback: the unseen single is the control token, and an untrained head adds the prior only
    fallback = StateTransition(**FAST, perturbation_features="onehot", extra_perturbations=held)
    fallback.fit(data[sp_.train].copy(), SPEC, epochs=1)
    assert sorted(fallback.from_prior) == sorted(held) and fallback.unpredictable == []
    torch.nn.init.zeros_(fallback.module.head[-1][-1].weight)
    torch.nn.init.zeros_(fallback.module.head[-1][-1].bias)
    x = torch.from_numpy(data.X[:5] + 5.0)  # far from 0, so the ReLU does not cut the shift
    ctx = torch.zeros(5, dtype=torch.long)
    shift = fallback.predict_batch(x, fallback.encode_perturbations(["g2"] * 5), ctx) - x
    other = torch.arange(G) != 2  # g2 itself also gets the own-target change (tested below)
    assert torch.allclose(shift[:, other], fallback.module.mean_effect[0, other].expand(5, -1), atol=1e-5)


def test_st_save_load_exact_and_batch_equals_sets(tmp_path, fitted: StateTransition, data: ad.AnnData) -> None:
    x = torch.from_numpy(data.X[data.obs["perturbation"].to_numpy() == "control"][:20])
    pert = fitted.encode_perturbations(["g1"] * 20)
    a = fitted.predict_batch(x, pert, torch.zeros(20, dtype=torch.long))
    loaded = Predictor.load(fitted.save(tmp_path / "st"))
    assert isinstance(loaded, StateTransition)
    assert torch.equal(a, loaded.predict_batch(x, pert, torch.zeros(20, dtype=torch.long)))
    sets = fitted.predict_sets(x[None], pert[:1])[0]
    assert torch.allclose(a, sets, atol=1e-5)
    out = fitted.predict(data[:20], "g1+g9", context="c1")
    assert out.shape == (20, G) and (out.X >= 0).all()


def test_st_same_seed_same_model(data: ad.AnnData) -> None:
    a, b, c = (StateTransition(**FAST, perturbation_features="onehot") for _ in range(3))
    a.fit(data, SPEC, epochs=2, seed=1)
    b.fit(data, SPEC, epochs=2, seed=1)
    c.fit(data, SPEC, epochs=2, seed=2)
    sa, sb, sc = (m.module.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_st_sinkhorn_and_mse_losses_train(data: ad.AnnData) -> None:
    pytest.importorskip("geomloss")
    for loss in ("sinkhorn", "mse"):
        model = StateTransition(**FAST, loss=loss, perturbation_features="onehot")
        hist = model.fit(data, SPEC, epochs=6, seed=0).history["loss"]
        assert np.isfinite(hist).all() and hist[-1] < hist[0], (loss, hist)


def test_st_and_se_in_reprogram_env(fitted: StateTransition, data: ad.AnnData) -> None:
    import gymnasium as gym

    from cellgym.envs.testing import check_task

    # the SE reward by name: the data world fits an SE model on its source and goal cells
    kw = {"adata": data, "spec": SPEC, "target": "g1", "predictor": fitted, "context": "c1", "n_cells": 16,
          "reward": "state.embedding"}
    check_task("CellEnv-Reprogram-v0", n_steps=4, **kw)
    env = gym.make("CellEnv-Reprogram-v0", **kw)
    reward = env.unwrapped.dynamics.world.reward
    assert isinstance(reward, StateEmbeddingReward)
    ctx = data.obs["cell_type"].to_numpy() == "c1"
    lab = data.obs["perturbation"].to_numpy()
    d = reward.distance(torch.from_numpy(np.stack([data.X[ctx & (lab == "control")][:30], data.X[ctx & (lab == "g1")][-30:]])))
    assert d[1] < d[0]  # goal-like cells are closer to the goal than the source cells


# ------------------------------------------------------------------------------------------------ SE
def test_se_learns_embeds_and_rewards(tmp_path, data: ad.AnnData) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    ctx_data = simulate(seed=1, n=40, shift=1.5)
    se = StateEmbedding(d_model=32, n_embed=16, sentence_len=24, n_targets=12)
    hist = se.fit(ctx_data, SPEC, epochs=8, seed=0).history
    assert hist["expression_mse"][-1] < 0.7 * hist["expression_mse"][0]
    z = se.transform(ctx_data)
    assert ctx_data.obsm["X_state"].shape == (ctx_data.n_obs, 16)
    ctx = ctx_data.obs["cell_type"].to_numpy()
    test = np.random.default_rng(0).random(ctx_data.n_obs) < 0.3
    acc = (KNeighborsClassifier(15).fit(z[~test], ctx[~test]).predict(z[test]) == ctx[test]).mean()
    assert acc > 0.8  # two contexts: chance 0.5
    loaded = Predictor.load(se.save(tmp_path / "se"))
    assert torch.equal(loaded.embed(ctx_data.X[:10]), se.embed(ctx_data.X[:10]))
    reward = StateEmbeddingReward(tmp_path / "se", target=ctx_data.X[ctx == "c2"][:50])
    d = reward.distance(torch.from_numpy(np.stack([ctx_data.X[ctx == "c1"][:30], ctx_data.X[ctx == "c2"][50:80]])))
    assert d[1] < d[0]
    with pytest.raises(Exception, match="does not predict perturbation"):
        se.predict_batch(torch.zeros(1, G), torch.zeros(1, 0))


def test_cellgym_fit_state_embedding_needs_no_perturbation_column(tmp_path, data: ad.AnnData) -> None:
    from cellgym.agents.cli import main

    cells = ad.AnnData(X=data.X[::3].copy(), var=data.var.copy())  # no obs columns at all
    cells.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["fit", "--predictor", "state.embedding", "--data", str(tmp_path / "cells.h5ad"), "--out",
                 str(tmp_path / "se"), "--epochs", "2", "--predictor-kwargs", "d_model:16", "n_embed:8"]) == 0
    se = Predictor.load(tmp_path / "se")
    assert isinstance(se, StateEmbedding) and se.embed(cells.X[:5]).shape == (5, 8)


# --------------------------------------------------------------------------------------------- splits
def test_fewshot_split_holds_out_some_perturbations_of_one_context(data: ad.AnnData) -> None:
    s = split(data, SPEC, "fewshot", seed=0, holdout=["c2"], test_fraction=0.3)
    obs = data.obs
    test = obs.iloc[s.test]
    assert set(test["cell_type"]) == {"c2"} and "control" not in set(test["perturbation"])
    held = set(test["perturbation"])
    assert len(held) == 3 and all(h.startswith("c2/") for h in s.holdout)
    train = obs.iloc[s.train]
    assert held <= set(train.loc[train["cell_type"] == "c1", "perturbation"])  # seen in the other context
    assert set(train.loc[train["cell_type"] == "c2", "perturbation"]) - {"control"}  # few shots of c2 remain
    assert split(data, SPEC, "fewshot", seed=3).holdout == split(data, SPEC, "fewshot", seed=3).holdout
    with pytest.raises(Exception, match="ONE context"):
        split(data, SPEC, "fewshot", holdout=["c1", "c2"])


# ------------------------------------------------------------------------------------------ effect prior
def _screen(dev: np.ndarray, shared: np.ndarray, n: int = 30, seed: int = 0):
    """FitData of C contexts x P singles (+ controls): cell = control + shared[c] + dev[c, p] + noise."""
    from cellgym.predictors.base import FitData

    rng = np.random.default_rng(seed)
    n_ctx, n_pert, g = dev.shape
    xs, ctx, labels = [], [], []
    for c in range(n_ctx):
        for p in range(-1, n_pert):
            effect = 0.0 if p < 0 else shared[c] + dev[c, p]
            xs.append(3.0 + effect + rng.normal(0, 0.1, (n, g)))
            ctx += [c] * n
            labels += ["control" if p < 0 else f"p{p}"] * n
    labels = np.array(labels, dtype=object)
    pert = np.stack([(labels == f"p{p}") for p in range(n_pert)], 1).astype(np.float32)
    return FitData(x=np.concatenate(xs).astype(np.float32), counts=None, pert=pert, ctx=np.array(ctx), labels=labels,
                   is_control=labels == "control")


def test_effect_prior_shrinks_cross_context_transfer_by_what_transfers() -> None:
    from cellgym.predictors.state._prior import fit_effect_prior

    rng = np.random.default_rng(0)
    perts = [f"p{p}" for p in range(6)]
    shared = np.repeat(rng.normal(0, 1, (1, 20)), 3, 0)  # the contexts share their mean effect
    same = np.repeat(rng.normal(0, 1, (1, 6, 20)), 3, 0)  # each perturbation's effect is the same in every context
    prior, *_ = fit_effect_prior(_screen(same, shared), perts, 4, lambda s: s.split("+"))  # context 3: no cells
    assert prior.shrinkage > 0.9 and prior.context_transfer > 0.9
    dev = same[0] - same[0].mean(0)
    assert np.allclose(prior.mean_effect[3], shared[:3].mean(0) + same[0].mean(0), atol=0.05)  # held-out context: pooled mean effect
    assert np.allclose(prior.transfer[3], dev, atol=0.1)  # ... plus the perturbation's own deviation
    indep = rng.normal(0, 1, (3, 6, 20))  # effects unrelated between contexts: nothing should transfer
    prior2, g_ctx, g_lab, g_prior, _ = fit_effect_prior(_screen(indep, shared), perts, 3, lambda s: s.split("+"))
    assert prior2.shrinkage < 0.25
    # mean effects unrelated between contexts: a context without perturbed cells gets a shrunk pooled mean effect
    own = rng.normal(0, 1, (3, 20))
    prior3, *_ = fit_effect_prior(_screen(same * 0.1, own), perts, 4, lambda s: s.split("+"))
    assert prior3.context_transfer < 0.3
    pooled = prior3.mean_effect[:3].mean(0)
    assert np.allclose(prior3.mean_effect[3], prior3.context_transfer * pooled, atol=1e-5)
    # the prior a group would get were its context held out: u x the other contexts' mean effect + its transfer
    prior4, g_ctx4, g_lab4, _, novel = fit_effect_prior(_screen(same * 0.1, own), perts, 3, lambda s: s.split("+"))
    k4 = int(np.flatnonzero((g_ctx4 == 1) & (g_lab4 == "p2"))[0])
    rest = prior4.mean_effect[[0, 2]].mean(0)
    assert np.allclose(novel[k4], prior4.context_transfer * rest + prior4.transfer[1, 2], atol=1e-5)
    assert fit_effect_prior(_screen(same[:1], shared[:1]), perts, 1, lambda s: s.split("+"))[4] is None  # one context
    # a training group's prior leaves the group out of its context's mean effect
    k = int(np.flatnonzero((g_ctx == 0) & (g_lab == "p0"))[0])
    others = shared[0] + indep[0, 1:].mean(0)
    assert np.allclose(g_prior[k] - prior2.transfer[0, 0], others, atol=0.1)


def test_st_in_se_embedding_space_learns_and_reloads(tmp_path, data: ad.AnnData) -> None:
    model = StateTransition(**FAST, input_space="embedding", embedding_epochs=2, effect_prior=False)
    hist = model.fit(data, SPEC, epochs=12, seed=0).history["loss"]
    assert hist[-1] < hist[0]
    assert model.module.se is not None and not any(p.requires_grad for p in model.module.se.parameters())
    x = torch.from_numpy(data.X[data.obs["perturbation"].to_numpy() == "control"][:20])
    pert = model.encode_perturbations(["g1"] * 20)
    a = model.predict_batch(x, pert, torch.zeros(20, dtype=torch.long))
    loaded = Predictor.load(model.save(tmp_path / "st_se"))
    assert torch.equal(a, loaded.predict_batch(x, pert, torch.zeros(20, dtype=torch.long)))
    real = data.X[(data.obs["perturbation"] == "g1").to_numpy() & (data.obs["cell_type"] == "c1").to_numpy()].mean(0)
    ctrl = x.numpy().mean(0)
    assert np.corrcoef(a.numpy().mean(0) - ctrl, real - ctrl)[0, 1] > 0.5  # the decoded change points the right way


def test_st_batch_token_learns_batch_specific_effects(tmp_path, data: ad.AnnData) -> None:
    bdata = data.copy()
    bdata.obs["plate"] = np.random.default_rng(0).choice(["p1", "p2"], bdata.n_obs)
    hit = (bdata.obs["plate"] == "p2").to_numpy() & (bdata.obs["perturbation"] != "control").to_numpy()
    bdata.X[hit, 32:] += 1.5  # plate p2 responds to every perturbation with genes 32-39 up; p1 does not
    spec = DataSpec(context_key="cell_type", batch_key="plate", counts=None)
    model = StateTransition(**FAST, batch_token=True, perturbation_features="onehot", effect_prior=False)
    model.fit(bdata, spec, epochs=20, seed=0)
    assert model.batches == ["p1", "p2"] and model.module.batch_token.num_embeddings == 3
    x = torch.from_numpy(bdata.X[(bdata.obs["perturbation"] == "control").to_numpy()][:32])[None]
    pert = model.encode_perturbations(["g1"])
    up = {}
    with torch.no_grad():
        for b in range(3):  # p1, p2, unknown (what predict_batch uses)
            y = model.module.forward(x, pert, batch=torch.full((1, 32), b))
            up[b] = float((y - x)[0, :, 32:].mean())
    assert up[1] > up[0] + 0.5, up  # the p2 token carries p2's extra response (1.5)
    assert up[0] - 0.3 < up[2] < up[1] + 0.3
    loaded = Predictor.load(model.save(tmp_path / "st_batch"))
    assert loaded.batches == ["p1", "p2"]
    assert torch.equal(model.predict_batch(x[0], pert.expand(32, -1)), loaded.predict_batch(x[0], pert.expand(32, -1)))
    with pytest.raises(Exception, match="batch_key"):
        StateTransition(**FAST, batch_token=True).fit(data, SPEC, epochs=1)


def test_extrapolation_guard_keeps_unseen_embedded_shift_within_training(data: ad.AnnData) -> None:
    held = ["g2", "g17"]
    sp_ = split(data, SPEC, "perturbations", holdout=held)
    model = StateTransition(**FAST, extra_perturbations=held)
    model.fit(data[sp_.train].copy(), SPEC, epochs=3, seed=0)
    trust = dict(zip(model.perturbations, model.trust, strict=True))
    assert all(trust[q] == 1.0 for q in model.seen)
    assert all(0.0 <= trust[q] < 1.0 for q in held)  # v * cosine to the nearest trained target's embedding
    # in the simulation a knockout lowers its co-expression module, so an embedding neighbour predicts effects
    assert model.embedding_transfer > 0.5 and max(trust[q] for q in held) > 0.4
    module = model.module
    x = torch.from_numpy(data.X[:16] + 5.0)  # far from 0: no ReLU cut
    ctx = torch.zeros(16, dtype=torch.long)
    seen, unseen = model.encode_perturbations(["g1"] * 16), model.encode_perturbations(["g2"] * 16)
    with torch.no_grad():  # an embedding blown up 10^4 x: the free MLP extrapolates far beyond any training effect
        module.pert_matrix[model.perturbations.index("g2")] *= 1e4
        torch.nn.init.normal_(module.head[-1][-1].weight, std=0.5)
    # the prior-only prediction: x + prior + the head's output under the unknown-perturbation token
    with torch.no_grad():
        base = module(x[None], unseen[:1] * 0, prior=module.prior(unseen[:1], ctx[:1]), hidden=torch.tensor([True]))[0]
    fitted_trust = module.trust.clone()
    module.trust[model.perturbations.index("g2")] = 0.999  # full trust: only the norm cap acts
    guarded, guarded_seen = model.predict_batch(x, unseen, ctx), model.predict_batch(x, seen, ctx)
    module.trust.fill_(1.0)  # guard off
    free = model.predict_batch(x, unseen, ctx)
    assert torch.equal(model.predict_batch(x, seen, ctx), guarded_seen)  # trained perturbations untouched
    cap = float(module.max_shift)
    assert float((free - base).mean(0).norm()) > 2 * cap
    assert float((guarded - base).mean(0).norm()) <= cap * 1.001
    module.trust.copy_(torch.where(fitted_trust < 1, 0.0, fitted_trust))  # trust 0: exactly the prior-only prediction
    assert torch.allclose(model.predict_batch(x, unseen, ctx), base, atol=1e-4)


def test_hidden_sets_train_the_unknown_perturbation_token(data: ad.AnnData) -> None:
    held = ["g2", "g17"]
    sp_ = split(data, SPEC, "perturbations", holdout=held)
    model = StateTransition(**FAST, perturbation_features="onehot", extra_perturbations=held, hide_rate=0.5)
    model.fit(data[sp_.train].copy(), SPEC, epochs=1, seed=0)
    assert sorted(model.from_prior) == sorted(held)
    assert model.module.unknown_mask[[model.perturbations.index(q) for q in held]].eq(1).all()
    # the sampler hides only perturbed sets, zeroes their perturbation row and keeps their prior
    from cellgym.predictors.state._transition import SetSampler

    train = model.fit_data(data[sp_.train].copy())
    train.pert = model.encode_perturbations(train.labels, check=False).numpy()
    sampler = SetSampler(train, 8, 0, None, hide_rate=1.0)
    seen: dict[str, torch.Tensor] = {}

    class Capture(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, sets):
            seen.update(sets)
            return type("Out", (), {"loss": self.w.sum()})()

    groups = torch.arange(len(sampler.pert))
    sampler.step(Capture(), {"group": groups}, torch.optim.SGD(Capture().parameters(), lr=0.1))
    assert torch.equal(seen["hidden"], sampler.perturbed)
    assert seen["pert"].abs().sum() == 0  # hidden perturbed sets and controls: no identity
    assert seen["y"].shape[:2] == (len(groups), 8)
    # the token reaches the prediction: an unseen target from the prior = the control token + the unknown vector
    with torch.no_grad():
        tok = model.module.pert_token(model.encode_perturbations(["g2"]))
        ctrl = model.module.pert_token(torch.zeros(1, len(model.perturbations)))
    assert torch.allclose(tok - ctrl, model.module.pert_unknown[None])


def test_st_checkpoint_without_unknown_token_loads(tmp_path, fitted: StateTransition, data: ad.AnnData) -> None:
    path = fitted.save(tmp_path / "st")
    weights = torch.load(path / "weights.pt", weights_only=True)
    weights.pop("pert_unknown")  # a checkpoint from before the unknown-perturbation token
    torch.save(weights, path / "weights.pt")
    loaded = Predictor.load(path)
    assert torch.equal(loaded.module.pert_unknown, torch.zeros_like(loaded.module.pert_unknown))
    x = torch.from_numpy(data.X[:10])
    pert, ctx = fitted.encode_perturbations(["g1"] * 10), torch.zeros(10, dtype=torch.long)
    assert torch.equal(loaded.predict_batch(x, pert, ctx), fitted.predict_batch(x, pert, ctx))


def test_unseen_knockout_of_a_measured_gene_gets_the_own_target_change(tmp_path, data: ad.AnnData) -> None:
    """A held-out knockout whose target is a measured gene lowers it by the seen knockouts' own-target change
    beyond the mean change, whether predicted from its embedding or from the prior; one whose target is not
    among the genes gets the prior unchanged."""
    d = data.copy()
    d.obs["perturbation"] = d.obs["perturbation"].astype(str).replace({"g17": "KO17"})  # a target not measured
    held = ["g2", "KO17"]
    train = d[split(d, SPEC, "perturbations", holdout=held).train].copy()
    # the measured own-target change, straight from the training cells: each seen knockout's change at its own
    # gene minus the mean change there of its context's knockouts (simulated: about -1, the extra drop at k)
    frame = pd.DataFrame(train.X, columns=train.var_names).groupby([train.obs["cell_type"].to_numpy(),
                                                                    train.obs["perturbation"].to_numpy()]).mean()
    own = []
    for ctx in ("c1", "c2"):
        delta = frame.loc[ctx].drop("control") - frame.loc[(ctx, "control")]
        own += [delta.loc[k, k] - delta[k].mean() for k in delta.index if k in train.var_names]
    expected = float(np.mean(own))
    assert expected < -0.5
    x = torch.from_numpy(d.X[:8] + 5.0)  # far from 0: no ReLU cut
    ctx = torch.zeros(8, dtype=torch.long)
    for features in ("onehot", "genes"):  # g2 from the prior / from its co-expression embedding
        model = StateTransition(**FAST, perturbation_features=features, extra_perturbations=held)
        model.fit(train, SPEC, epochs=1, seed=0)
        assert model.own_target == ["g2"] and "KO17" in model.from_prior
        assert ("g2" in model.from_prior) == (features == "onehot")
        torch.nn.init.zeros_(model.module.head[-1][-1].weight)  # the head adds nothing: the prediction is the prior
        torch.nn.init.zeros_(model.module.head[-1][-1].bias)
        mean = model.module.mean_effect[0]
        shift = model.predict_batch(x, model.encode_perturbations(["g2"] * 8), ctx) - x
        assert abs(float((shift[:, 2] - mean[2]).mean()) - expected) < 1e-3
        assert torch.allclose(shift[:, 3:], mean[3:].expand(8, -1), atol=1e-4)  # the other genes: the mean change
        shift_ko = model.predict_batch(x, model.encode_perturbations(["KO17"] * 8), ctx) - x
        assert torch.allclose(shift_ko, mean.expand(8, -1), atol=1e-4)  # not a measured gene: untouched
        # the prior without the own-target term: seen knockouts keep theirs; g2 differs at g2 only
        plain = fit_effect_prior(model.fit_data(train), model.perturbations, 2, model.spec.split_label)[0].transfer
        diff = model.module.transfer.numpy() - plain
        cols = [model.perturbations.index(q) for q in model.seen]
        assert not diff[:, cols].any() and np.flatnonzero(np.abs(diff).sum((0, 1))).tolist() == [2]
    model.save(tmp_path / "st")
    loaded = Predictor.load(tmp_path / "st")
    assert loaded.own_target == ["g2"]
    assert torch.equal(loaded.predict_batch(x, loaded.encode_perturbations(["g2"] * 8), ctx),
                       model.predict_batch(x, model.encode_perturbations(["g2"] * 8), ctx))
    config = yaml.safe_load((tmp_path / "st" / "config.yaml").read_text())
    del config["extra"]["own_target"]  # a checkpoint from before the list
    (tmp_path / "st" / "config.yaml").write_text(yaml.safe_dump(config))
    assert Predictor.load(tmp_path / "st").own_target == []
