"""``Predictor.predict`` output follows AnnData conventions; inputs that are not log1p(1e4) get one warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from simulated_screens import counts_variant, simulate_screen

from cellgym.predictors import DataSpec
from cellgym.registry import make_predictor

SPEC = DataSpec(context_key="cell_type")


@pytest.fixture(scope="module")
def fitted():
    adata, _ = simulate_screen()
    adata.uns["log1p"] = {"base": None}
    model = make_predictor("baseline.additive")
    model.fit(adata, SPEC, seed=0)
    return model, adata


def test_predict_keeps_obs_and_names(fitted):
    model, adata = fitted
    control = adata[(adata.obs["perturbation"] == "control") & (adata.obs["cell_type"] == "A")][:5].copy()
    out = model.predict(control, "G0+G1")
    assert list(out.obs_names) == [f"{n}-G0+G1" for n in control.obs_names]
    assert (out.obs["source_cell"] == control.obs_names).all()
    assert (out.obs["batch"].to_numpy() == control.obs["batch"].to_numpy()).all()  # other columns kept
    assert set(out.obs["perturbation"]) == {"G0+G1"} and set(out.obs["cell_type"]) == {"A"}
    sampled = model.predict(control, ["G0", "G1", "G2", "G3", "G4"], n_samples=8, seed=0)
    assert sampled.obs_names.is_unique and sampled.n_obs == 8
    assert all(name.startswith(f"{src}-{p}-") for name, src, p in
               zip(sampled.obs_names, sampled.obs["source_cell"], sampled.obs["perturbation"], strict=True))


def test_sparse_in_sparse_out_only_when_mostly_zero(fitted):
    model, adata = fitted
    control = adata[(adata.obs["perturbation"] == "control") & (adata.obs["cell_type"] == "A")][:5].copy()
    dense_pred = model.predict(control, "G0")
    control.X = sp.csr_matrix(control.X)
    assert not sp.issparse(model.predict(control, "G0").X)  # a dense mean prediction stays dense
    from cellgym.predictors.base._anndata import prediction_anndata

    y = np.zeros((5, adata.n_vars), np.float32)
    y[:, 0] = 1.0
    out = prediction_anndata(control, y, None, np.array(["G0"] * 5, dtype=object), np.array(["A"] * 5, dtype=object),
                             SPEC, list(adata.var_names))
    assert sp.issparse(out.X) and np.array_equal(out.X.toarray(), y)
    assert np.allclose(dense_pred.X, model.predict(control, "G0").X)  # same numbers either way


def test_log1p_check_warns_once_per_cause(fitted):
    model, adata = fitted
    control = adata[adata.obs["perturbation"] == "control"][:5].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(control, "G0")
    assert not [w for w in caught if "log1p" in str(w.message)]
    del control.uns["log1p"]
    with pytest.warns(UserWarning, match="no 'log1p'"):
        model.predict(control, "G0")
    control.uns["log1p"] = {"base": None}
    control.X = np.log1p(np.expm1(control.X) / np.expm1(control.X).sum(1, keepdims=True) * 1e6)  # CPM
    with pytest.warns(UserWarning, match="assumes log1p of counts normalised to 10,000"):
        model.predict(control, "G0")
    counts = counts_variant(adata)[:5].copy()  # raw counts are normalised by the model: no warning
    counts.uns.pop("log1p", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(counts, "G0")
    assert not [w for w in caught if "log1p" in str(w.message)]
