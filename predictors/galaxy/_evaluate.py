"""Cross-species integration metrics and the ortholog baselines Galaxy is compared against."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["concat_pca", "label_transfer_accuracy", "ortholog_pca", "species_entropy"]


def label_transfer_accuracy(emb_a: np.ndarray, labels_a, emb_b: np.ndarray, labels_b, *, seed: int = 0) -> float:
    """Accuracy on B of a logistic regression (scikit-learn, standardised inputs) trained on A's cells."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(np.asarray(emb_a), np.asarray(labels_a, dtype=str))
    return float((clf.predict(np.asarray(emb_b)) == np.asarray(labels_b, dtype=str)).mean())


def species_entropy(emb: np.ndarray, species, *, k: int = 15) -> float:
    """Mean over cells of the entropy of species among the ``k`` nearest neighbours, / log(n species).

    1.0: neighbourhoods as mixed as the species balance allows (for equal sizes); 0.0: no mixing.
    """
    from sklearn.neighbors import NearestNeighbors

    codes, uniq = pd.factorize(np.asarray(species, dtype=str))
    idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb, return_distance=False)[:, 1:]
    counts = np.stack([(codes[idx] == s).sum(1) for s in range(len(uniq))], axis=1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(counts > 0, counts * np.log(counts), 0.0), axis=1)
    return float(ent.mean() / np.log(len(uniq)))


def _pca(blocks: list[np.ndarray], n_comps: int, seed: int) -> list[np.ndarray]:
    from sklearn.decomposition import PCA

    z = [(b - b.mean(0)) / (b.std(0) + 1e-6) for b in blocks]  # per-species standardisation
    stacked = np.concatenate(z)
    emb = PCA(n_components=min(n_comps, *stacked.shape), random_state=seed).fit_transform(stacked)
    cuts = np.cumsum([b.shape[0] for b in blocks])[:-1]
    return np.split(emb, cuts)


def ortholog_pca(x_a: np.ndarray, genes_a, x_b: np.ndarray, genes_b, one2one: pd.DataFrame, *, n_comps: int = 32,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: PCA of both species on their annotated 1:1 orthologs only (each standardised per species)."""
    ia = {g: i for i, g in enumerate(genes_a)}
    ib = {g: i for i, g in enumerate(genes_b)}
    pairs = [(ia[a], ib[b]) for a, b in zip(one2one["gene_a"], one2one["gene_b"], strict=True) if a in ia and b in ib]
    ca, cb = (list(c) for c in zip(*pairs, strict=True))
    ea, eb = _pca([x_a[:, ca], x_b[:, cb]], n_comps, seed)
    return ea, eb


def concat_pca(x_a: np.ndarray, genes_a, x_b: np.ndarray, genes_b, *, n_comps: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: raw concatenation on the union of gene names (absent genes zero), standardised per species, PCA."""
    union = list(dict.fromkeys([*genes_a, *genes_b]))
    col = {g: i for i, g in enumerate(union)}
    blocks = []
    for x, genes in ((x_a, genes_a), (x_b, genes_b)):
        full = np.zeros((x.shape[0], len(union)), np.float32)
        full[:, [col[g] for g in genes]] = x
        blocks.append(full)
    ea, eb = _pca(blocks, n_comps, seed)
    return ea, eb
