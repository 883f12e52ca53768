"""CellGen on the shared screens: the evaluation table, distribution fidelity and the critic's AUC, in one run.

For one split the script runs :func:`cellgym.predictors.evaluate` (the code behind ``cellgym
evaluate``; same seed, same fits; the table equals the CLI's except for the GEM-1 row, fitted for
``--gem1-epochs`` epochs here to keep the run short) with ``cellgen`` next to the four
baselines and a GEM-1 model, then, on the fitted cellgen and ``baseline.mean``:

- distribution fidelity per held-out group: energy distance, per-gene variance (Pearson r of the
  predicted and real per-gene variances, and mean predicted / real variance), and the Pearson r of
  the gene-gene correlation matrices (upper triangles) on the group's top-50 DE genes;
- the critic's AUC: real held-out perturbed cells against ``baseline.nochange``'s predictions of them
  (the context's control cells), both scored by the critic under the held-out condition.

    .venv/bin/python benchmarks/cellgen_report.py mcfaline23 --holdout U87MG
    .venv/bin/python benchmarks/cellgen_report.py norman19
    .venv/bin/python benchmarks/cellgen_report.py papalexi
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb"


def load(which: str, holdout: list[str] | None, seed: int):
    import anndata as ad

    from cellgym.predictors import DataSpec, split

    if which == "papalexi":
        a = ad.read_h5ad(SHARED / "papalexi2021_thp1_lowmoi.h5ad")
        a = a[a.obs["perturbation"] != "unassigned"].copy()
        spec = DataSpec()
        return a, spec, split(a, spec, "perturbations", seed=seed, holdout=holdout), "gem1.nb"
    a = ad.read_h5ad(SHARED / "norman19_mcfaline23_devel.h5ad")
    a = a[a.obs["dataset"] == which].copy()
    spec = DataSpec(context_key="cell_type")
    kind = "combos" if which == "norman19" else "contexts"
    return a, spec, split(a, spec, kind, seed=seed, holdout=holdout), "gem1.bulk"


def _upper_r(a: np.ndarray, b: np.ndarray) -> float:
    iu = np.triu_indices(a.shape[1], 1)
    ca, cb = np.corrcoef(a.T)[iu], np.corrcoef(b.T)[iu]
    ok = np.isfinite(ca) & np.isfinite(cb)
    return float(np.corrcoef(ca[ok], cb[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=["mcfaline23", "norman19", "papalexi"])
    parser.add_argument("--holdout", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="folder for metrics.csv, fidelity.csv")
    parser.add_argument("--gem1-epochs", type=int, default=20, help="GEM-1 epochs (its own default when 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sklearn.metrics import roc_auc_score

    from cellgym.predictors import evaluate, expression
    from cellgym.predictors import metrics as M
    from cellgym.registry import make_predictor

    adata, spec, sp, gem = load(args.data, args.holdout, args.seed)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    train_singles = {s for lab in set(labels[sp.train]) for s in spec.split_label(lab)}
    extra = sorted({s for lab in set(labels[sp.test]) for s in spec.split_label(lab)} - train_singles)
    cellgen = make_predictor("cellgen", extra_perturbations=extra)
    mean = make_predictor("baseline.mean", extra_perturbations=extra)
    start = time.perf_counter()
    res = evaluate(adata, spec, sp, ["baseline.nochange", mean, "baseline.additive", "baseline.linear", gem, cellgen],
                   seed=args.seed, fit_kwargs={gem: {"epochs": args.gem1_epochs}} if args.gem1_epochs else None)
    print(f"{args.data} split={sp.kind} holdout={list(sp.holdout)[:8]} ({len(sp.test)} test cells); "
          f"evaluate took {time.perf_counter() - start:.0f} s")
    cols = ["pearson_delta", "r2_de", "mse_delta", "de_overlap", "direction_agreement", "discrimination", "energy_distance", "coverage"]
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(res.metrics[cols].round(3).to_string())

    x = expression(adata, spec)
    ctx = adata.obs[spec.context_key].astype(str).to_numpy() if spec.context_key else np.full(adata.n_obs, "", object)
    train = np.zeros(adata.n_obs, bool)
    train[sp.train] = True
    test = ~train
    rows = []
    for i, (c, lab) in enumerate(sorted(set(zip(ctx[test], labels[test], strict=True)))):
        real = x[test & (ctx == c) & (labels == lab)]
        ctrl = x[train & (ctx == c) & (labels == spec.control)]
        ctrl_t = torch.from_numpy(ctrl)
        ctx_ix = torch.zeros(ctrl.shape[0], dtype=torch.long)
        if spec.context_key:
            ctx_ix[:] = int(mean.encode_contexts([c])[0])
        pert = cellgen.encode_perturbations([lab] * ctrl.shape[0])
        preds = {"cellgen": cellgen.predict_batch(ctrl_t, pert).numpy(),
                 "baseline.mean": mean.predict_batch(ctrl_t, mean.encode_perturbations([lab] * ctrl.shape[0]), ctx_ix).numpy()}
        de = M.de_genes(real, ctrl, 50)
        for name, p in preds.items():
            vr, vp = real.var(0), p.var(0)
            rows.append({"predictor": name, "context": c, "perturbation": lab,
                         "energy_distance": M.energy_distance(p, real, seed=args.seed + i),
                         "var_r": float(np.corrcoef(vp, vr)[0, 1]), "var_ratio": float(vp.mean() / vr.mean()),
                         "corr_r_top50": _upper_r(p[:, de], real[:, de])})
        s_real = cellgen.critic_score(torch.from_numpy(real), lab).numpy()
        s_ctrl = cellgen.critic_score(ctrl_t, lab).numpy()
        auc = roc_auc_score(np.r_[np.ones_like(s_real), np.zeros_like(s_ctrl)], np.r_[s_real, s_ctrl])
        rows.append({"predictor": "critic_auc", "context": c, "perturbation": lab, "auc": float(auc)})
    fid = pd.DataFrame(rows)
    summary = fid.groupby("predictor")[["energy_distance", "var_r", "var_ratio", "corr_r_top50", "auc"]].mean()
    print("distribution fidelity (mean over held-out groups) and critic AUC (real held-out vs nochange predictions):")
    print(summary.round(3).to_string())
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        res.metrics.to_csv(args.output / "metrics.csv")
        res.per_perturbation.to_csv(args.output / "per_perturbation.csv", index=False)
        fid.to_csv(args.output / "fidelity.csv", index=False)


if __name__ == "__main__":
    main()
