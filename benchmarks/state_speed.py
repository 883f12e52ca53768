"""state.transition training and prediction speed next to baseline.linear and gem1.nb, same data, one run.

Data: Papalexi THP-1 (raw counts; gem1.nb needs them), ``unassigned`` cells dropped, a seeded subset of
``--cells`` cells x 299 genes, one torch thread. Training cells/s counts the cells a model's loss sees
per CPU second (state.transition: predicted cells of its sets; gem1.nb: minibatch cells; baseline.linear:
its closed-form fit over all cells). Predict cells/s is ``predict_batch`` on the control cells (as the
evaluation harness and the environments call it), in chunks of 8192. CPU seconds are this process's
(fair on a shared machine); a benchmark prints figures and never fails on time.

    .venv/bin/python benchmarks/state_speed.py [--cells 6000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "papalexi2021_thp1_lowmoi.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--names", nargs="+", default=["baseline.linear", "gem1.nb", "state.transition"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad

    from cellgym.predictors import DataSpec, expression
    from cellgym.registry import make_predictor

    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent; this benchmark needs the shared Papalexi file.")
    adata = ad.read_h5ad(DATA)
    adata = adata[adata.obs["perturbation"] != "unassigned"]
    rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, min(args.cells, adata.n_obs), replace=False))
    adata = adata[rows].copy()
    spec = DataSpec()
    ctrl = adata[adata.obs["perturbation"] == "control"]
    x = torch.from_numpy(expression(ctrl, spec))
    print(f"Papalexi THP-1 subset: {adata.n_obs} cells x {adata.n_vars} genes ({ctrl.n_obs} controls); {args.epochs} epochs; "
          f"torch threads {torch.get_num_threads()}; CPU seconds of this process (machine shared)")
    print("| model | train cells / CPU s | train CPU s | predict cells / CPU s |")
    print("|---|---|---|---|")
    for name in args.names:
        model = make_predictor(name)
        cpu = time.process_time()
        report = model.fit(adata, spec, epochs=args.epochs, seed=0)
        train_cpu = time.process_time() - cpu
        seen = report.n_obs * max(report.epochs, 1)
        pert = model.encode_perturbations([model.perturbations[0]] * x.shape[0])
        model.predict_batch(x[:64], pert[:64])  # warm-up
        cpu, reps = time.process_time(), 5
        for _ in range(reps):
            for s in range(0, x.shape[0], 8192):
                model.predict_batch(x[s : s + 8192], pert[s : s + 8192])
        pred_cpu = (time.process_time() - cpu) / reps
        print(f"| {name} | {seen / train_cpu:,.0f} | {train_cpu:.1f} | {x.shape[0] / pred_cpu:,.0f} |")


if __name__ == "__main__":
    main()
