"""Write the perturbation screen of ``CellEnv-Reprogram-HSC-v0``'s simulator, to fit a learned HSC world on.

Run (the whole sim-to-real loop from the command line)::

    python examples/hsc_screen.py --out runs/hsc_screen.h5ad
    cellgym fit --predictor baseline.additive --data runs/hsc_screen.h5ad --out runs/fit/hsc_additive \\
        --counts none --context-key none
    cellgym train --env CellEnv-Reprogram-HSC-v0 --algo maskable_ppo --env-kwargs predictor:runs/fit/hsc_additive
    cellgym enjoy --env CellEnv-Reprogram-HSC-v0 --algo maskable_ppo --episodes 100 --truth grn.boolean

``X`` holds the simulated 0/1 gene states (the task's cells), ``obs['cell_type']`` each cell's fate (not a
context, hence ``--context-key none``), and there are no counts (``--counts none``).
"""

from __future__ import annotations

import argparse

import torch

from cellgym.envs.reprogram import hsc_screen

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="hsc_screen.h5ad", help="output .h5ad")
    parser.add_argument("--cells", type=int, default=100, help="cells per condition")
    parser.add_argument("--doubles", type=int, default=40, help="random double perturbations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    screen = hsc_screen(n_cells_per_condition=args.cells, doubles=args.doubles, seed=args.seed)
    screen.write_h5ad(args.out)
    print(f"{screen.n_obs} cells x {screen.n_vars} genes, {screen.obs['perturbation'].nunique()} conditions -> {args.out}")
