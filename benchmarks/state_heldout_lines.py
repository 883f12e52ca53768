"""``state.transition`` vs ``baseline.mean`` on each held-out McFaline-Figueroa cell line, for several seeds, in one run.

For each line and seed this is ``cellgym evaluate --data ../shared/data/perturb/norman19_mcfaline23_devel.h5ad
--split contexts --holdout LINE --subset dataset=mcfaline23 --predictors baseline.mean state.transition --seed S``
(the data is read once); it prints pearson_delta and energy distance of both predictors per (line, seed),
and the mean over seeds. ``--n-members`` sets ``state.transition``'s ensemble size (default: its automatic
choice). Timings are CPU seconds on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_heldout_lines.py [--lines A172 T98G U87MG] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "norman19_mcfaline23_devel.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--lines", nargs="+", default=["A172", "T98G", "U87MG"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-members", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import anndata as ad

    from cellgym.predictors import DataSpec, evaluate, split
    from cellgym.predictors.state import StateTransition

    adata = ad.read_h5ad(args.data)
    adata = adata[adata.obs["dataset"].astype(str) == "mcfaline23"].copy()
    spec = DataSpec(context_key="cell_type", counts=None)
    rows = []
    for line in args.lines:
        for seed in args.seeds:
            sp = split(adata, spec, "contexts", holdout=[line], seed=seed)
            res = evaluate(adata, spec, sp, ["baseline.mean", StateTransition(n_members=args.n_members)], seed=seed).metrics
            mean, st = res.loc["baseline.mean"], res.loc["state.transition"]
            rows.append({"line": line, "seed": seed, "mean pearson": mean["pearson_delta"], "ST pearson": st["pearson_delta"],
                         "mean energy": mean["energy_distance"], "ST energy": st["energy_distance"],
                         "ST fit s": st["fit_seconds"]})
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    table["ST pearson > mean"] = table["ST pearson"] > table["mean pearson"]
    table["ST energy < mean"] = table["ST energy"] < table["mean energy"]
    print(f"\nstate.transition (n_members={args.n_members or 'auto'}) vs baseline.mean, held-out mcfaline23 lines")
    print(table.round(3).to_string(index=False))
    print("\nmean over seeds")
    print(table.groupby("line")[["mean pearson", "ST pearson", "mean energy", "ST energy"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
