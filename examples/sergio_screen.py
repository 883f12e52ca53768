"""Simulate a SERGIO perturbation screen with known ground truth and score predictors on it.

Run::

    python examples/sergio_screen.py --out /tmp/sergio_screen.h5ad
    cellgym evaluate --data /tmp/sergio_screen.h5ad --split combos \\
        --predictors baseline.nochange baseline.mean baseline.additive baseline.linear

Without ``--network`` the simulator uses its seeded random 20-gene network; pass the SERGIO DS1
folder (``../shared/data/grn/sergio_ds1``) for the published 100-gene, 9-cell-type network.
"""

from __future__ import annotations

import argparse

import torch

from cellgym.predictors.grn import SergioPredictor, simulate_screen


def main() -> None:
    """Write the screen and print what it holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", help="SERGIO data-set folder (default: seeded random network)")
    parser.add_argument("--out", default="sergio_screen.h5ad", help="output .h5ad")
    parser.add_argument("--cells", type=int, default=100, help="cells per condition and cell type")
    parser.add_argument("--contexts", nargs="+", default=["type0", "type1"], help="cell types to screen")
    parser.add_argument("--doubles", type=int, default=8, help="random double perturbations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    sim = SergioPredictor(network=args.network)
    # knock out the master regulators and their first targets, and overexpress two of them
    net = sim.network
    master = [net.genes[i] for i in net.master]
    targets = [net.genes[int(t)] for t in dict.fromkeys(net.tgt[: 3 * len(master)].tolist())][:3]
    singles = [f"{g}_KO" for g in master + targets] + [f"{g}_OE" for g in master[:2]]
    adata = simulate_screen(
        sim, n_cells_per_condition=args.cells, perturbations=singles, doubles=args.doubles,
        contexts=args.contexts, seed=args.seed,
    )
    adata.write_h5ad(args.out)
    print(adata)
    print(adata.obs["perturbation"].value_counts().to_string())
    print(f"wrote {args.out}; evaluate with:\n  cellgym evaluate --data {args.out} --split combos "
          "--predictors baseline.nochange baseline.mean baseline.additive baseline.linear")


if __name__ == "__main__":
    main()
