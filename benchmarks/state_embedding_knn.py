"""state.embedding (SE) vs PCA: kNN label accuracy of held-out cells in each space, same genes, one run.

Data: mcfaline23 (3 glioblastoma lines, 500 HVGs, label = cell line) from the shared devel file, and
``scanpy.datasets.pbmc68k_reduced()`` (700 cells, its 765 log-normalised genes in ``.raw``, label =
``bulk_labels``, 10 cell types). Per data set: a seeded 70/30 cell split; SE is pretrained on the 70%
(``--epochs``, CPU defaults) and PCA (32 components, the width of ``X_state``) fitted on the same cells;
a 15-nearest-neighbour classifier trained on the 70% labels the 30%.

    .venv/bin/python benchmarks/state_embedding_knn.py [--epochs 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "norman19_mcfaline23_devel.h5ad"


def knn_accuracy(z: np.ndarray, labels: np.ndarray, test: np.ndarray) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(15).fit(z[~test], labels[~test])
    return float((clf.predict(z[test]) == labels[test]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad
    import scanpy as sc
    from sklearn.decomposition import PCA

    from cellgym.predictors import DataSpec, expression
    from cellgym.predictors.state import StateEmbedding

    sets = []
    if DATA.exists():
        mcf = ad.read_h5ad(DATA)
        mcf = mcf[mcf.obs["dataset"] == "mcfaline23"].copy()
        sets.append(("mcfaline23 (cell line)", mcf, mcf.obs["cell_type"].astype(str).to_numpy()))
    else:
        print(f"{DATA} is absent; skipping mcfaline23")
    pbmc = sc.datasets.pbmc68k_reduced()
    sets.append(("pbmc68k_reduced (cell type)", pbmc.raw.to_adata(), pbmc.obs["bulk_labels"].astype(str).to_numpy()))
    spec = DataSpec(counts=None)
    print(f"SE {args.epochs} epochs, CPU defaults; kNN k=15 on a 70/30 cell split (seed 0); CPU s of this process")
    print("| data | cells x genes | classes | SE kNN acc | PCA-32 kNN acc | SE fit CPU s |")
    print("|---|---|---|---|---|---|")
    for name, adata, labels in sets:
        test = np.random.default_rng(0).random(adata.n_obs) < 0.3
        model = StateEmbedding()
        cpu = time.process_time()
        model.fit(adata[~test].copy(), spec, epochs=args.epochs, seed=0)
        fit_s = time.process_time() - cpu
        z = model.transform(adata)
        x = expression(adata, spec)
        pcs = PCA(32, random_state=0).fit(x[~test]).transform(x)
        print(f"| {name} | {adata.n_obs} x {adata.n_vars} | {len(set(labels))} | {knn_accuracy(z, labels, test):.3f} | "
              f"{knn_accuracy(pcs, labels, test):.3f} | {fit_s:.0f} |")


if __name__ == "__main__":
    main()
