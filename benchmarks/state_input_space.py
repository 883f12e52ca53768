"""state.transition in gene space vs in state.embedding (SE) space, on one split, in one run.

The same split and seed as ``cellgym evaluate --split contexts --holdout U87MG --subset dataset=mcfaline23``:
fits ``baseline.mean``, ``state.transition`` on the genes (default) and ``state.transition`` with
``input_space="embedding"`` (an SE model fitted on the training cells for ``--se-epochs`` epochs, frozen;
ST works on its cell embeddings and a decoder maps the change back to genes), and prints one table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_input_space.py [--holdout U87MG] [--se-epochs 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "norman19_mcfaline23_devel.h5ad"
COLUMNS = ["pearson_delta", "r2_scgen_top100", "energy_distance", "fit_epochs", "fit_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--holdout", default="U87MG")
    parser.add_argument("--se-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import anndata as ad

    from cellgym.predictors import DataSpec, evaluate, split
    from cellgym.predictors.state import StateTransition

    adata = ad.read_h5ad(args.data)
    adata = adata[adata.obs["dataset"].astype(str) == "mcfaline23"].copy()
    spec = DataSpec(context_key="cell_type", counts=None)
    sp = split(adata, spec, "contexts", holdout=[args.holdout], seed=args.seed)
    rows = []
    for label, entry in [("baseline.mean", "baseline.mean"), ("state.transition (genes)", StateTransition()),
                         ("state.transition (SE embedding)",
                          StateTransition(input_space="embedding", embedding_epochs=args.se_epochs))]:
        res = evaluate(adata, spec, sp, [entry], seed=args.seed)
        rows.append(res.metrics.iloc[0][[c for c in COLUMNS if c in res.metrics.columns]].rename(label))
    print(f"held-out cell line {args.holdout} (mcfaline23), seed {args.seed}")
    print(pd.DataFrame(rows).round(3).to_string())


if __name__ == "__main__":
    main()
