"""CellGen training speed next to gem1.nb on the same data in one run (Papalexi THP-1 subset, CPU, one thread).

Both models are fitted on the same cells (default: 4,000 Papalexi cells x 299 genes, raw counts; gem1.nb
reads the counts, cellgen their log1p-normalised expression), same batch size, in this process, and the
script prints CPU seconds per epoch, cells per CPU-second and the ratio. A cellgen epoch makes one critic
step per batch (with the gradient penalty's double backward) and a generator step every ``n_critic``
batches, so it costs several VAE epochs. A benchmark prints figures; it never passes or fails on time.

    .venv/bin/python benchmarks/cellgen_speed.py [--cells 4000] [--epochs 2] [--n-critic 1 5]
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
    parser.add_argument("--cells", type=int, default=4000, help="cells drawn (seed 0) from Papalexi; 0 = all")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-critic", type=int, nargs="+", default=[1, 5], help="cellgen settings to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad

    from cellgym.predictors import DataSpec
    from cellgym.registry import make_predictor

    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent; this benchmark needs the shared Papalexi file.")
    adata = ad.read_h5ad(DATA)
    adata = adata[adata.obs["perturbation"] != "unassigned"]
    if args.cells and args.cells < adata.n_obs:
        adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, args.cells, replace=False))]
    adata = adata.copy()
    spec = DataSpec()
    print(f"Papalexi THP-1: {adata.n_obs} cells x {adata.n_vars} genes; batch {args.batch_size}; {args.epochs} epochs; "
          f"torch threads {torch.get_num_threads()}. CPU s = this process's CPU time (fair on a shared machine).")
    print("| model | CPU s / epoch | cells / CPU s | vs gem1.nb | wall s / epoch |")
    print("|---|---|---|---|---|")
    runs = [("gem1.nb", {})] + [(f"cellgen (n_critic={k})", {"n_critic": k}) for k in args.n_critic]
    reference = None
    for label, kwargs in runs:
        model = make_predictor("cellgen" if label.startswith("cellgen") else label, **kwargs)
        cpu, wall = time.process_time(), time.perf_counter()
        report = model.fit(adata, spec, epochs=args.epochs, batch_size=args.batch_size, seed=0)
        cpu, wall = (time.process_time() - cpu) / report.epochs, (time.perf_counter() - wall) / report.epochs
        cps = adata.n_obs / cpu
        reference = reference or cps
        print(f"| {label} | {cpu:.2f} | {cps:,.0f} | {cps / reference:.2f}x | {wall:.2f} |")


if __name__ == "__main__":
    main()
