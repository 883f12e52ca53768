"""Vector-env steps/s of an ensemble world (K members) against one member, same task, same invocation.

Run: ``.venv/bin/python benchmarks/ensemble_speed.py [--data ../shared/data/perturb/norman19_mcfaline23_devel.h5ad]
[--members baseline.linear] [--k 5] [--num-envs 64] [--seconds 3]``.

The world is the generic data task (``CellEnv-Reprogram-v0``) on the Norman19 part of the shared file,
control cells towards a held-in double, ``target.energy`` reward (``uncertainty.penalised`` for the
ensemble, so the disagreement is computed too). Prints a Markdown table; it measures, never fails on time.
"""

from __future__ import annotations

import argparse

import anndata as ad
import torch
from vector_env import steps_per_second  # same measurement as benchmarks/vector_env.py

from cellgym.envs.reprogram import ReprogramVectorEnv
from cellgym.predictors import DataSpec
from cellgym.predictors.ensemble import EnsemblePredictor
from cellgym.predictors.rewards import EnergyDistanceReward, UncertaintyPenalisedReward
from cellgym.registry import make_predictor


def main() -> None:
    """Print one member vs the K-member ensemble, env-steps/s and the cost ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/perturb/norman19_mcfaline23_devel.h5ad")
    parser.add_argument("--members", nargs="+", default=["baseline.linear"])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--n-cells", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    adata = ad.read_h5ad(args.data)
    adata = adata[(adata.obs["dataset"] == "norman19").to_numpy()].copy()
    spec = DataSpec(context_key="cell_type")
    target = "KLF1+MAP2K6"
    goal = EnergyDistanceReward(adata.X[(adata.obs["perturbation"] == target).to_numpy()].toarray())
    single = make_predictor(args.members[0])
    single.fit(adata, spec, seed=0)
    worlds = {f"one member ({args.members[0]})": (single, goal)}
    for unseen in ("family", "prior"):  # prior: + the members' draws for perturbations they never saw
        ens = EnsemblePredictor(members=args.members, n_members=args.k, unseen=unseen)
        ens.fit(adata, spec, seed=0)
        worlds[f"ensemble of {args.k}, unseen={unseen}"] = (ens, UncertaintyPenalisedReward(goal, ens, lam=1.0))
    rates = {}
    for name, (model, reward) in worlds.items():
        venv = ReprogramVectorEnv(args.num_envs, world="data", adata=adata, spec=spec, target=target, predictor=model,
                                  reward=reward, n_cells=args.n_cells)
        rates[name] = steps_per_second(venv, args.seconds)
    base = next(iter(rates.values()))
    print(f"{args.num_envs} envs x {args.n_cells} cells x {adata.n_vars} genes, torch threads 1, {args.seconds:.0f} s each\n")
    print("| world | env-steps/s | cost per step vs one member |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {r:,.0f} | {base / r:.2f}x |")


if __name__ == "__main__":
    main()
