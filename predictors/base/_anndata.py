"""AnnData conventions of predictions (scverse users' expectations) and the log1p input check."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._data import TARGET_SUM, DataSpec, _counts_matrix

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_log1p", "prediction_anndata"]

#: a prediction is stored sparse (when its input was) if at least this fraction of its entries is zero
SPARSE_ZEROS = 0.5


def check_log1p(adata: AnnData, spec: DataSpec, where: str = "predict") -> None:
    """Warn (one line) when ``X`` is read as log1p expression but does not look like ``log1p(1e4-normalised)``.

    Raw counts (where the spec finds them) are normalised here, so they need no check. Otherwise a missing
    ``uns['log1p']`` (what ``scanpy.pp.log1p`` records) or cells whose ``expm1`` totals exceed 1e4 (e.g. CPM,
    target sum 1e6) are flagged; totals below 1e4 are not, since a gene subset (HVGs) lowers them.
    """
    if adata.n_obs == 0 or _counts_matrix(adata, spec) is not None:
        return
    if "log1p" not in adata.uns:
        warnings.warn(f"{where}: adata.uns has no 'log1p', but the model reads X as log1p(counts normalised to 1e4 per "
                      "cell); run sc.pp.normalize_total(adata, target_sum=1e4) and sc.pp.log1p(adata), or pass raw "
                      "counts (DataSpec(counts=...)).", UserWarning, stacklevel=3)
        return
    x = adata.X[: min(adata.n_obs, 500)]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    total = float(np.median(np.expm1(x.astype(np.float64)).sum(1)))
    if total > 1.1 * TARGET_SUM:
        warnings.warn(f"{where}: cells sum to ~{total:,.0f} after expm1, but the model assumes log1p of counts "
                      f"normalised to {TARGET_SUM:,.0f} per cell; renormalise with target_sum=1e4.", UserWarning,
                      stacklevel=3)


def prediction_anndata(control: AnnData, y: np.ndarray, rows: np.ndarray | None, labels: np.ndarray,
                       ctx_labels: np.ndarray, spec: DataSpec, genes: list[str]) -> AnnData:
    """The prediction for ``control``'s cells as an AnnData that keeps their identity.

    ``obs`` keeps the input's columns; ``obs_names`` are the input's, suffixed with the predicted condition
    (and ``-<k>`` for the k-th resampled cell when ``rows`` are given); ``obs['source_cell']`` names the input
    cell; the perturbation (and context) columns hold the predicted condition. ``X`` is sparse (CSR) when the
    input's was and at least half the prediction is zeros (sampled counts, Boolean states).
    """
    from anndata import AnnData

    obs = control.obs.iloc[rows].copy() if rows is not None else control.obs.copy()
    source = obs.index.astype(str).to_numpy()
    obs[spec.perturbation_key] = pd.Categorical(labels.astype(str))
    if spec.context_key is not None:
        obs[spec.context_key] = pd.Categorical(ctx_labels.astype(str))
    obs["source_cell"] = source
    names = pd.Index([f"{s}-{p}" for s, p in zip(source, labels.astype(str), strict=True)])
    if rows is not None:
        names = pd.Index([f"{n}-{k}" for k, n in enumerate(names)])
    obs.index = names
    X = y
    if sp.issparse(control.X) and y.size and (y == 0).mean() >= SPARSE_ZEROS:
        X = sp.csr_matrix(y)
    out = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    if not out.obs_names.is_unique:  # input obs_names that were not unique stay distinguishable
        out.obs_names_make_unique()
    return out
