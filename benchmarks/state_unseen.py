"""Unseen Papalexi knockouts: state.transition with gene embeddings vs baseline.mean, on the same split.

The split is ``cellgym evaluate``'s ``--split perturbations --exclude perturbation=unassigned`` (seed 0,
30% of the 25 knockouts held out). state.transition predicts a held-out knockout from the gene embedding
of its target, with two sources:

1. ``coexpression``: spectral embeddings of the training data's co-expression graph (the default). It
   covers only targets that are among the 299 measured genes; the others cannot be predicted (coverage).
2. a ``{gene: tensor}`` ``.pt`` file in the format of State's / SATURN's ESM2 files, made here because no
   protein-language-model weights are reachable offline: character 2-4-gram TF-IDF of the gene symbols,
   reduced by truncated SVD to 16 dims. Paralogues share symbol stems (STAT1/STAT2/STAT3, IFNGR1/IFNGR2,
   IRF1/IRF7), so it is a crude stand-in for sequence similarity that covers every target.

3. ``onehot``: no features for unseen knockouts, so every held-out one is predicted from the effect prior
   (``unseen_fallback="prior"``: the unknown-perturbation token plus the context's mean effect).

With the effect prior (default) a target without an embedding is predicted from the prior, so every
source predicts all groups; ``model.from_prior`` lists those. Prints the metrics per source, on each
source's predicted groups, next to baseline.mean on the same
groups, and the per-knockout pearson_delta.

    .venv/bin/python benchmarks/state_unseen.py [--epochs 20] [--out runs/state_unseen]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb" / "papalexi2021_thp1_lowmoi.h5ad"


def symbol_embeddings(symbols: list[str], dim: int = 16):
    """The symbol-family stand-in for protein embeddings (see the module docstring)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from cellgym.predictors.genes import GeneEmbeddings

    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit_transform(symbols)
    z = TruncatedSVD(dim, random_state=0).fit_transform(tfidf)
    return GeneEmbeddings(symbols, torch.from_numpy(z).float(), source="symbol n-gram SVD")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/state_unseen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import anndata as ad

    from cellgym.predictors import DataSpec, evaluate, split
    from cellgym.predictors.genes import save_embeddings
    from cellgym.predictors.state import StateTransition

    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent; this benchmark needs the shared Papalexi file.")
    adata = ad.read_h5ad(DATA)
    adata = adata[adata.obs["perturbation"] != "unassigned"].copy()
    spec = DataSpec()
    sp = split(adata, spec, "perturbations", seed=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    pt = save_embeddings(symbol_embeddings(sorted(set(map(str, adata.var_names)) | set(targets))), out / "symbol_family.pt")
    held = list(sp.holdout)
    print(f"Papalexi THP-1: {adata.n_obs} cells; held out {len(held)}: {', '.join(held)}; {args.epochs} epochs")
    models = {
        "coexpression": StateTransition(extra_perturbations=held),
        "symbol .pt": StateTransition(gene_embeddings=[str(pt)], extra_perturbations=held),
        "onehot (prior only)": StateTransition(perturbation_features="onehot", extra_perturbations=held),
    }
    fit = {"state.transition": {"epochs": args.epochs}}
    parts = [evaluate(adata, spec, sp, ["baseline.mean"]).per_perturbation.assign(source="baseline.mean")]
    for source, model in models.items():  # one call each: both are named state.transition
        parts.append(evaluate(adata, spec, sp, [model], fit_kwargs=fit).per_perturbation.assign(source=source))
    per = pd.concat(parts, ignore_index=True)
    per.to_csv(out / "per_perturbation.csv", index=False)
    mean = per[per["source"] == "baseline.mean"].set_index("perturbation")
    cols = ["pearson_delta", "mse_delta", "energy_distance", "discrimination"]
    print("| source | groups predicted | " + " | ".join(f"{c} (ST / mean)" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for source in models:
        rows = per[(per["source"] == source) & per["predicted"]].set_index("perturbation")
        cells = [f"{rows[c].mean():.3f} / {mean.loc[rows.index, c].mean():.3f}" for c in cols]
        print(f"| {source} | {len(rows)}/{len(held)} ({', '.join(rows.index)}) | " + " | ".join(cells) + " |")
    table = per.pivot_table(index="perturbation", columns="source", values="pearson_delta", dropna=False)
    with pd.option_context("display.width", 200):
        print("pearson_delta per held-out knockout (NaN = no embedding for the target):")
        print(table.round(3).to_string())
    print(f"wrote {out / 'per_perturbation.csv'}")


if __name__ == "__main__":
    main()
