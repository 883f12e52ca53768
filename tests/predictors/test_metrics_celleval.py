"""Cross-check of ``de_overlap`` against cell-eval itself (dev-only: ``pip install -e .[crosscheck]``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellgym.predictors import metrics as M


@pytest.mark.slow
def test_de_overlap_matches_cell_eval_overlap_at_50(tmp_path):
    ad = pytest.importorskip("anndata")
    cell_eval = pytest.importorskip("cell_eval")
    rng = np.random.default_rng(0)
    n_genes = 300
    ctrl = rng.normal(2.0, 0.5, size=(80, n_genes))
    real = rng.normal(2.0, 0.5, size=(60, n_genes))
    real[:, 200:220] += 1.5
    pred = ctrl[:60] + rng.normal(0, 0.01, size=(60, n_genes))
    pred[:, 200:210] += 1.5  # half the real DE genes
    pred[:, 230:240] += 0.8  # and ten wrong ones
    ctrl, real, pred = (np.clip(a, 0, None) for a in (ctrl, real, pred))  # log1p data is >= 0

    def screen(x):
        obs = pd.DataFrame({"target": ["non-targeting"] * len(ctrl) + ["P1"] * len(x)})
        obs.index = obs.index.astype(str)
        return ad.AnnData(np.vstack([ctrl, x]).astype(np.float32), obs=obs)

    ev = cell_eval.MetricsEvaluator(
        adata_pred=screen(pred), adata_real=screen(real), control_pert="non-targeting", pert_col="target",
        num_threads=1, outdir=str(tmp_path),
    )
    res, _ = ev.compute(profile="de", write_csv=False)
    ours = M.de_overlap(M.de_genes(pred, ctrl, 50), M.de_genes(real, ctrl, 50), 50)
    assert ours == pytest.approx(float(res["overlap_at_50"][0]), abs=0.05)
    assert 0.3 < ours < 0.7
