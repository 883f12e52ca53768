"""Galaxy on the two-species test bed: label transfer, species mixing, perturbation transfer, cell-type tree.

Test bed (``cellgym.predictors.galaxy.two_species``): a real data set's cells are halved; half 2 becomes a
generated species B (30 % annotated 1:1 orthologs, 45 % unannotated orthologs, 15 % merged into
paralog families, 10 % lost; a per-gene species shift, technical noise, shuffled gene order). Gene
embeddings: A's are PCA loadings of A's expression, B's the ortholog's plus noise.

1. pbmc68k_reduced (bundled with scanpy; 10 cell types): Galaxy is fitted with A's cell types only;
   a logistic regression trained on A's embedding predicts B's types. Compared: the annotated
   1:1-ortholog PCA and raw concatenation (union of gene names). Species mixing: kNN species entropy.
2. Norman 2019 K562 CRISPRa (``../shared/data``): Galaxy is fitted on A (control + 33 perturbations)
   and B's controls only; A's perturbations are transferred to B and scored against B's held-out
   perturbed cells (pearson_delta; "no change" scores 0), next to copying A's deltas onto the 1:1
   orthologs.

Run: ``OMP_NUM_THREADS=1 python examples/galaxy_two_species.py --seeds 0 1 2 --plot docs/galaxy_two_species.png``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from cellgym.predictors.galaxy import (
    GalaxyPredictor,
    celltype_tree,
    concat_pca,
    label_transfer_accuracy,
    ortholog_pca,
    species_entropy,
    two_species,
)
from cellgym.predictors.metrics import pearson_delta

KEY = "bulk_labels"
NORMAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "norman19_mcfaline23_devel.h5ad"


def integration(seed: int, tree_png: str | None) -> dict[str, tuple[float, float]]:
    import scanpy as sc

    bed = two_species(sc.datasets.pbmc68k_reduced().raw.to_adata(), seed=seed)
    a, b = bed.a, bed.b
    unlabelled = b.copy()
    del unlabelled.obs[KEY]
    model = GalaxyPredictor(celltype_key=KEY, n_macrogenes=150, n_latent=16, epochs=40)
    model.fit({"A": a, "B": unlabelled}, protein_embeddings={"A": bed.emb_a, "B": bed.emb_b}, batch_size=128, seed=seed)
    embs = {"galaxy": (model.embed(a, "A"), model.embed(b, "B")),
            "1:1 ortholog PCA": ortholog_pca(a.X, list(a.var_names), b.X, list(b.var_names), bed.one_to_one),
            "raw concatenation": concat_pca(a.X, list(a.var_names), b.X, list(b.var_names))}
    species = ["A"] * a.n_obs + ["B"] * b.n_obs
    out = {name: (label_transfer_accuracy(u, a.obs[KEY], v, b.obs[KEY]), species_entropy(np.concatenate([u, v]), species))
           for name, (u, v) in embs.items()}
    if tree_png:
        ea, eb = embs["galaxy"]
        tree = celltype_tree(np.concatenate([ea, eb]), species, np.concatenate([a.obs[KEY], b.obs[KEY]]), min_cells=10)
        tree.write(Path(tree_png).with_suffix(""), title="pbmc68k test bed: (species | cell type) centroids in X_galaxy")
    return out


def transfer(seed: int, mode: str) -> dict[str, float]:
    full = ad.read_h5ad(NORMAN)
    bed = two_species(full[full.obs["dataset"] == "norman19"].copy(), split_key="perturbation", seed=seed)
    b = bed.b
    labels = b.obs["perturbation"].astype(str).to_numpy()
    controls = b[labels == "control"].copy()
    model = GalaxyPredictor(n_macrogenes=200, epochs=30, transfer=mode)
    model.fit({"A": bed.a, "B": controls}, protein_embeddings={"A": bed.emb_a, "B": bed.emb_b}, seed=seed)
    base = controls.X.mean(0)
    la = bed.a.obs["perturbation"].astype(str).to_numpy()
    ia = {g: i for i, g in enumerate(bed.a.var_names)}
    ib = {g: i for i, g in enumerate(b.var_names)}
    pairs = [(ia[x], ib[y]) for x, y in zip(bed.one_to_one["gene_a"], bed.one_to_one["gene_b"], strict=True)]
    src, dst = (list(t) for t in zip(*pairs, strict=True))
    scores = {"galaxy": [], "1:1 orthologs": []}
    for p in sorted(set(labels) - {"control"}):
        true = b.X[labels == p].mean(0)
        scores["galaxy"].append(pearson_delta(model.predict(controls, p).X.mean(0), true, base))
        delta = np.zeros(b.n_vars, np.float32)
        delta[dst] = (bed.a.X[la == p].mean(0) - bed.a.X[la == "control"].mean(0))[src]
        scores["1:1 orthologs"].append(pearson_delta(base + delta, true, base))
    return {k: float(np.mean(v)) for k, v in scores.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--modes", nargs="+", default=["latent", "macrogene", "basal"])
    parser.add_argument("--plot", default=None, help="figure PNG (the tree goes next to it as *_tree.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    integ = [integration(s, args.plot.replace(".png", "_tree.png") if args.plot and s == args.seeds[0] else None)
             for s in args.seeds]
    names = list(integ[0])
    print(f"pbmc68k two-species bed, {len(args.seeds)} seed(s) (mean ± sd): label transfer A->B accuracy | kNN species entropy")
    for n in names:
        acc = [r[n][0] for r in integ]
        ent = [r[n][1] for r in integ]
        print(f"  {n:>18}: {np.mean(acc):.3f} ± {np.std(acc):.3f} | {np.mean(ent):.3f} ± {np.std(ent):.3f}")
    pert = {}
    if NORMAN.exists():
        for mode in args.modes:
            runs = [transfer(s, mode) for s in args.seeds]
            pert[f"galaxy ({mode})"] = [r["galaxy"] for r in runs]
            pert["1:1 orthologs"] = [r["1:1 orthologs"] for r in runs]
        pert["no change"] = [0.0] * len(args.seeds)
        print("Norman19 two-species bed: mean pearson_delta over 33 transferred perturbations (B's true cells held out)")
        for n, v in pert.items():
            print(f"  {n:>20}: {np.mean(v):.3f} ± {np.std(v):.3f}")
    else:
        print(f"skipped perturbation transfer: {NORMAN} is absent")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, idx, title in ((axes[0], 0, "label transfer A -> B (accuracy)"), (axes[1], 1, "species mixing (kNN entropy)")):
            vals = [[r[n][idx] for r in integ] for n in names]
            bars = ax.bar(names, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], color=["tab:purple", "tab:gray", "tab:brown"])
            ax.bar_label(bars, labels=[f"{np.mean(v):.2f}" for v in vals])
            ax.set_title(title, fontsize=10)
            ax.set_ylim(0, 1.05)
            ax.tick_params(axis="x", labelsize=8)
        if pert:
            bars = axes[2].bar(list(pert), [np.mean(v) for v in pert.values()], yerr=[np.std(v) for v in pert.values()])
            axes[2].bar_label(bars, labels=[f"{np.mean(v):.2f}" for v in pert.values()])
            axes[2].set_title("perturbation transfer A -> B (pearson_delta)", fontsize=10)
            axes[2].tick_params(axis="x", labelsize=7, rotation=20)
        fig.suptitle(f"Galaxy on generated two-species test beds ({len(args.seeds)} seeds)", fontsize=11)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
