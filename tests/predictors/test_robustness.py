"""Issue 9, defects 6, 10, 11: nothing silently wrong in the data contract and predictor checkpoints."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

from cellgym.predictors import DataSpec, Predictor, expression, split, validate
from cellgym.predictors.base.errors import CheckpointError, DataSpecError
from cellgym.registry import make_predictor


# ------------------------------------------------------------------------------------------ defect 6
@pytest.mark.parametrize("sparse", [False, True])
def test_integer_counts_with_a_negative_value_name_the_cell_and_gene(screen_counts, spec, sparse) -> None:
    """--counts auto read integer counts with one -3 as log1p data and ran to the end (mse 0.821 vs 0.177)."""
    data = screen_counts.copy()
    x = np.asarray(data.X.toarray() if sp.issparse(data.X) else data.X, dtype=np.float32)
    x[7, 3] = -3
    data.X = sp.csr_matrix(x) if sparse else x
    cell, gene = data.obs_names[7], data.var_names[3]
    with pytest.raises(DataSpecError, match=rf"-3 at cell '{cell}' \(row 7\), gene '{gene}' \(column 3\)"):
        validate(data, spec)
    with pytest.raises(DataSpecError, match="counts cannot be negative"):
        make_predictor("baseline.mean").fit(data, spec, seed=0)
    validate(data, DataSpec(context_key="cell_type", counts=None))  # declared not counts: the user's call


def test_log_data_with_negatives_is_still_log_data(screen, spec) -> None:
    data = screen.copy()
    data.X = np.asarray(data.X, dtype=np.float32) - 0.25  # centred, not integers
    validate(data, spec)


def test_declared_counts_with_a_negative_value_name_the_cell(screen_counts) -> None:
    data = screen_counts.copy()
    data.layers["counts"] = np.asarray(data.X.toarray() if sp.issparse(data.X) else data.X).copy()
    data.layers["counts"][2, 0] = -1
    with pytest.raises(DataSpecError, match=rf"cell '{data.obs_names[2]}' \(row 2\)"):
        validate(data, DataSpec(context_key="cell_type", counts="counts"))


# ----------------------------------------------------------------------------------------- defect 10
def _log1p_screen(seed: int = 0) -> ad.AnnData:
    """Three cell types, 12 genes, 4 perturbations; log1p-like expression >= 0, and a gene near 0 in type t1
    that every perturbation lowers elsewhere (so a shift learned elsewhere overshoots below 0 in t1)."""
    rng = np.random.default_rng(seed)
    genes, perts, types = 12, ["P0", "P1", "P2", "P3"], ["t0", "t1", "t2"]
    effects = {p: rng.normal(scale=0.8, size=genes) for p in perts}
    for p in perts:
        effects[p][0] = -1.5  # every perturbation silences g0, expressed at 2 in t0 and t2 but at 0.1 in t1
    xs, obs = [], []
    for t in types:
        base = rng.uniform(0.05, 3.0, size=genes)
        base[0] = 0.1 if t == "t1" else 2.0
        for label in ["control", *perts]:
            mean = base + (0 if label == "control" else effects[label] * rng.uniform(0.5, 1.5))
            xs.append(np.clip(mean + rng.normal(scale=0.1, size=(30, genes)), 0, None))
            obs += [(label, t)] * 30
    frame = pd.DataFrame(obs, columns=["perturbation", "cell_type"], index=[f"c{i}" for i in range(len(obs))])
    return ad.AnnData(np.vstack(xs).astype(np.float32), obs=frame, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))


@pytest.mark.parametrize("name", ["baseline.mean", "baseline.additive", "baseline.linear"])
def test_predictions_are_never_below_zero(name: str) -> None:
    """The shift baselines returned negative log-expression on a held-out cell type (min -0.40)."""
    screen, spec = _log1p_screen(), DataSpec(context_key="cell_type", counts=None)
    s = split(screen, spec, "contexts", holdout=["t1"])
    model = make_predictor(name)
    model.fit(screen[s.train], spec, seed=0)
    test = screen[s.test]
    control = screen[(screen.obs["perturbation"] == "control").to_numpy()
                     & screen.obs["cell_type"].isin(s.holdout).to_numpy()]
    labels = test.obs["perturbation"].astype(str).unique().tolist()
    raw = np.concatenate([model.predict(control, lab, clamp=False).X for lab in labels])
    clamped = np.concatenate([model.predict(control, lab).X for lab in labels])
    assert raw.min() < 0.0 <= clamped.min()  # the defect reproduced, and fixed
    np.testing.assert_array_equal(clamped, np.maximum(raw, 0.0))  # clipping is all that changed
    # the env-facing path is clamped in the same place
    x = torch.from_numpy(expression(control, spec))
    pert = model.encode_perturbations([labels[0]] * control.n_obs)
    ctx = model.encode_contexts(control.obs["cell_type"].astype(str))
    assert model.predict_batch(x, pert, ctx).min() >= 0.0
    assert torch.equal(model.predict_batch(x, pert, ctx), model.predict_batch(x, pert, ctx, clamp=False).clamp_min(0))


def test_a_shift_below_zero_is_clipped(tmp_path) -> None:
    """A control at 0.5 and an effect of -2 learned in another context: raw -1.5, clamped 0."""
    obs = pd.DataFrame({"perturbation": ["control", "control", "A", "A", "control", "control"],
                        "cell_type": ["a", "a", "a", "a", "b", "b"]}, index=[f"c{i}" for i in range(6)])
    x = np.array([[2.0, 1], [2, 1], [0, 1], [0, 1], [0.5, 1], [0.5, 1]], dtype=np.float32)
    data = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["g0", "g1"]))
    spec = DataSpec(context_key="cell_type", counts=None)
    model = make_predictor("baseline.mean")
    model.fit(data, spec, seed=0)
    control_b = data[4:6]
    assert model.predict(control_b, "A", clamp=False).X[:, 0] == pytest.approx([-1.5, -1.5])
    assert model.predict(control_b, "A").X[:, 0] == pytest.approx([0.0, 0.0])
    model.save(tmp_path / "m")
    assert Predictor.load(tmp_path / "m").predict(control_b, "A").X[:, 0] == pytest.approx([0.0, 0.0])


def test_models_of_data_with_negative_values_are_not_clamped(screen, spec) -> None:
    """Scaled or centred expression may be negative: then there is no floor to clip at."""
    data = screen.copy()
    data.X = np.asarray(data.X) - 3.0
    model = make_predictor("baseline.mean")
    model.fit(data, spec, seed=0)
    assert model.output_floor is None
    control = data[(data.obs["perturbation"] == "control").to_numpy()]
    assert model.predict(control, "G0").X.min() < 0


# ----------------------------------------------------------------------------------------- defect 11
def test_reordered_vocabularies_in_a_checkpoint_are_refused(screen, spec, tmp_path) -> None:
    model = make_predictor("baseline.additive")
    model.fit(screen, spec, seed=0)
    model.save(tmp_path / "m")
    Predictor.load(tmp_path / "m")  # intact: loads
    for key in ("genes", "perturbations"):
        config = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
        original = list(config[key])
        config[key] = [original[1], original[0], *original[2:]]
        (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        with pytest.raises(CheckpointError, match="checksum differs"):
            Predictor.load(tmp_path / "m")
        config[key] = original
        (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    Predictor.load(tmp_path / "m")


def test_a_malicious_predictor_weights_file_never_suggests_weights_only_false(screen, spec, tmp_path) -> None:
    import pickle

    model = make_predictor("baseline.mean")
    model.fit(screen, spec, seed=0)
    model.save(tmp_path / "m")
    with (tmp_path / "m" / "weights.pt").open("wb") as fh:
        pickle.dump({"x": print}, fh)
    with pytest.raises(CheckpointError) as info:
        Predictor.load(tmp_path / "m")
    assert "weights_only" not in str(info.value) and "never loads" in str(info.value)


def test_genes_only_in_raw_get_a_hint(screen, spec) -> None:
    data = screen.copy()
    data.raw = data
    data = data[:, []].copy()
    with pytest.raises(DataSpecError, match=r"adata.raw.to_adata\(\)"):
        validate(data, spec)


def test_a_directory_as_data_is_named_a_folder(tmp_path, capsys) -> None:
    from cellgym.agents.cli import main

    (tmp_path / "screen.h5ad").write_bytes(b"")
    assert main(["evaluate", "--data", str(tmp_path), "--split", "perturbations", "--predictors", "baseline.mean"]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a file" in err and "screen.h5ad" in err and "no such file" not in err
