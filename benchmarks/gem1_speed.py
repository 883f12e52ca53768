"""GEM-1 training speed on Papalexi THP-1 (20.7k cells x 299 genes, raw counts), CPU, batch 128, one thread.

Prints cells/s per epoch for each GEM-1 variant (and, with ``--profile``, the top operators of one
epoch by self CPU time). Reference: scvi-tools' SCVI on the same data and machine kind trains at about
14k cells/s (1.33 s per epoch). A benchmark prints figures; it never passes or fails on time.

    .venv/bin/python benchmarks/gem1_speed.py [--epochs 3] [--profile]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "papalexi2021_thp1_lowmoi.h5ad"
SCVI_CELLS_PER_S = 14_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--names", nargs="+", default=["gem1.sc", "gem1.nb", "gem1.bulk"])
    parser.add_argument("--profile", action="store_true", help="profile one epoch of the first model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad

    from cellgym.predictors import DataSpec
    from cellgym.predictors.base import train_module
    from cellgym.registry import make_predictor

    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent; this benchmark needs the shared Papalexi file.")
    adata = ad.read_h5ad(DATA)
    spec = DataSpec(batch_key="bio_rep")  # all 20,729 cells, as in the scvi-tools reference
    print(f"Papalexi THP-1: {adata.n_obs} cells x {adata.n_vars} genes; batch 128; torch threads {torch.get_num_threads()}")
    print("CPU s = this process's CPU time (fair on a shared machine); wall s = elapsed time.")
    print("| model | CPU s / epoch | cells / CPU s | vs SCVI (14k cells/s) | wall s / epoch |")
    print("|---|---|---|---|---|")
    for name in args.names:
        model = make_predictor(name)
        cpu, wall = time.process_time(), time.perf_counter()
        report = model.fit(adata, spec, epochs=args.epochs, batch_size=128, seed=0)
        cpu, wall = (time.process_time() - cpu) / report.epochs, (time.perf_counter() - wall) / report.epochs
        cps = adata.n_obs / cpu
        print(f"| {name} | {cpu:.2f} | {cps:,.0f} | {cps / SCVI_CELLS_PER_S:.2f}x | {wall:.2f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        model = make_predictor(args.names[0])
        model.fit(adata, spec, epochs=1, batch_size=128, seed=0)  # builds module + tensors
        data = model.fit_data(adata)
        tensors = {"x": data.x, "target": model._target(data), "library": data.library, **data.meta}
        optimizer = torch.optim.AdamW(model.module.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_module(model.module, tensors, epochs=1, batch_size=128, seed=0, optimizer=optimizer)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
