"""Galaxy speed: macrogene construction and training, 2 species x 5k cells x 2k genes, CPU, one thread.

Data are simulated (log1p of negative-binomial counts from a rank-10 program model per species; gene
embeddings of width ``--dim`` with ortholog structure), since only the shapes matter for speed.
Prints seconds for the k-means (scikit-learn ``KMeans``, k-means++, one init) over the 4k pooled genes
into ``--macrogenes`` clusters, for the rank weights, for the macrogene expression of all cells, and
training cells/s (batch 256) with and without the adversary and classifier (the same invocation).
A benchmark prints figures; it never passes or fails on time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/galaxy_speed.py [--cells 5000 --genes 2000 --macrogenes 2000 --epochs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def simulate(n_cells: int, n_genes: int, dim: int, seed: int):
    import anndata as ad
    import pandas as pd

    from cellgym.predictors.genes import GeneEmbeddings

    rng = np.random.default_rng(seed)
    programs = rng.gamma(1.0, 1.0, size=(10, n_genes))
    emb = rng.normal(size=(n_genes, dim)).astype(np.float32)
    out = {}
    for s, name in enumerate(("human", "mouse")):
        usage = rng.dirichlet(np.full(10, 0.3), size=n_cells)
        mean = usage @ programs * (1.0 + 0.3 * s)
        counts = rng.negative_binomial(2, 2 / (2 + mean))
        x = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
        genes = [f"{name}_{i}" for i in range(n_genes)]
        obs = pd.DataFrame({"cell_type": usage.argmax(1).astype(str)}, index=[f"c{i}" for i in range(n_cells)])
        out[name] = (ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)),
                     GeneEmbeddings(genes, emb + 0.2 * rng.normal(size=emb.shape).astype(np.float32)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--macrogenes", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128, help="gene-embedding width (ESM2-650M: 1280; MiniLM: 384)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from cellgym.predictors.galaxy import GalaxyPredictor, build_macrogenes

    data = simulate(args.cells, args.genes, args.dim, seed=0)
    adatas = {s: a for s, (a, _) in data.items()}
    genes = {s: list(a.var_names) for s, a in adatas.items()}
    emb = {"protein": {s: e for s, (_, e) in data.items()}}
    t0 = time.perf_counter()
    mg = build_macrogenes(genes, emb, n_macrogenes=args.macrogenes, seed=0)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s, a in adatas.items():
        mg.transform(a.X, genes[s], s)
    t_transform = time.perf_counter() - t0
    n = sum(a.n_obs for a in adatas.values())
    print(f"2 species x {args.cells} cells x {args.genes} genes, {args.macrogenes} macrogenes, embedding dim {args.dim}")
    print(f"macrogenes (k-means over {2 * args.genes} genes + rank weights): {t_build:.1f} s")
    print(f"macrogene expression of {n} cells: {t_transform:.2f} s ({n / t_transform:,.0f} cells/s)")
    rates = {}
    for label, kw in (("full objective", {}), ("reconstruction only", {"adversary_weight": 0.0, "classifier_weight": 0.0})):
        model = GalaxyPredictor(celltype_key="cell_type", n_macrogenes=args.macrogenes, epochs=args.epochs,
                                validation_fraction=0.1, **kw)
        report = model.fit(adatas, macrogenes=mg, batch_size=256, seed=0)
        rates[label] = report.n_obs * report.epochs / report.seconds
        print(f"training, {label}: {rates[label]:,.0f} cells/s ({report.epochs} epochs of {report.n_obs} cells, "
              f"{report.seconds:.1f} s incl. per-epoch validation)")
    print(f"adversary + classifier cost: {rates['reconstruction only'] / rates['full objective']:.2f}x (same invocation)")


if __name__ == "__main__":
    main()
