"""GEM-1 on held-out perturbations of the shared real files: one fit, every inference variant, next to the baselines.

Fits each GEM-1 training configuration once per split and scores its ``predict_batch`` variants
(``combination`` "sum" / "latent", ``unseen_effect`` "measured" / "mean_of_seen" / "latent" / "generic") with
:func:`cellgym.predictors.evaluation.evaluate` (the variants are inference-time switches of the same
fitted module), next to the baselines fitted on the same split. Prints pearson_delta, mse_delta and the
energy distance of each. Figures only; it never passes or fails.

    .venv/bin/python benchmarks/gem1_unseen.py norman19 --max-epochs 60 [--delta-weight 0]
    .venv/bin/python benchmarks/gem1_unseen.py papalexi --max-epochs 30 --gene-embeddings coexpression
    .venv/bin/python benchmarks/gem1_unseen.py mcfaline23 --holdout U87MG --max-epochs 30
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb"
BASELINES = ["baseline.nochange", "baseline.mean", "baseline.additive", "baseline.linear"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["norman19", "papalexi", "mcfaline23"])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--holdout", nargs="*", default=None, help="contexts (mcfaline23) or perturbations held out")
    parser.add_argument("--predictor", default=None, help="GEM-1 variant (default gem1.bulk; gem1.nb on papalexi)")
    parser.add_argument("--matched-controls", action="store_true")
    parser.add_argument("--prior-decode-rate", type=float, default=None)
    parser.add_argument("--gene-embeddings", nargs="*", default=[])
    parser.add_argument("--delta-weight", type=float, default=None, help="default: the predictor's (10; gem1.sc 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad

    from cellgym.predictors import DataSpec, split
    from cellgym.predictors.evaluation import evaluate
    from cellgym.registry import make_predictor

    if args.dataset == "papalexi":
        adata = ad.read_h5ad(DATA / "papalexi2021_thp1_lowmoi.h5ad")
        adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"].copy()
        spec, kind, name = DataSpec(context_key=None), "perturbations", args.predictor or "gem1.nb"
    else:
        adata = ad.read_h5ad(DATA / "norman19_mcfaline23_devel.h5ad")
        adata = adata[adata.obs["dataset"] == args.dataset].copy()
        spec, name = DataSpec(context_key="cell_type", counts=None), args.predictor or "gem1.bulk"
        kind = "combos" if args.dataset == "norman19" else "contexts"
    sp = split(adata, spec, kind, args.seed, holdout=args.holdout)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    held = sorted(set(labels[sp.test]))
    train_singles = {s for lab in set(labels[sp.train]) for s in spec.split_label(lab)}
    extra = sorted({s for lab in held for s in spec.split_label(lab)} - train_singles)
    print(f"{args.dataset} split {kind} seed {args.seed}: {len(held)} held-out labels {held[:12]}; unseen singles {extra}")
    kwargs = {"extra_perturbations": extra, "gene_embeddings": args.gene_embeddings}
    if args.matched_controls:
        kwargs["matched_controls"] = True
    if args.delta_weight is not None:
        kwargs["delta_weight"] = args.delta_weight
    if args.prior_decode_rate is not None:
        kwargs["prior_decode_rate"] = args.prior_decode_rate
    model = make_predictor(name, **kwargs)
    t0 = time.perf_counter()
    model.fit(adata[sp.train].copy(), spec, epochs=args.max_epochs, seed=args.seed)
    fit_s = time.perf_counter() - t0
    variants = {}
    for comb in ("sum", "latent"):
        for eff in ("measured", "mean_of_seen", "latent", "generic"):
            if not extra and eff != "mean_of_seen":
                continue
            v = copy.deepcopy(model)
            v.module.combination, v.module.unseen_effect = comb, eff
            variants[f"{name}[{comb},{eff}]"] = v
    rows = []
    if not args.no_baselines:
        rows.append(evaluate(adata, spec, sp, BASELINES, seed=args.seed).metrics)
    for label, v in variants.items():
        m = evaluate(adata, spec, sp, [v], seed=args.seed).metrics
        m.index = [label]
        rows.append(m)
    import pandas as pd

    table = pd.concat(rows)[["pearson_delta", "mse_delta", "energy_distance", "coverage"]]
    print(f"{name} fitted in {fit_s:.0f} s wall (max {args.max_epochs} epochs, early stopping; shared machine); options {kwargs}")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
