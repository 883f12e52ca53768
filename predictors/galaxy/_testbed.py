"""A two-species test bed made from one real data set (real cross-species data is not available offline).

:func:`two_species` splits the cells of a log1p AnnData in two disjoint halves. Half 1 is species A as
measured. Half 2 becomes species B through a generated orthology map (seeded):

- ``one2one`` (fraction ``annotated``): renamed one-to-one and listed in the ortholog table, as a
  curated orthology database would list it;
- ``unannotated``: renamed one-to-one but *absent* from the ortholog table (true orthologs that
  annotation misses in distant species);
- ``paralogs`` (fraction ``merged``): families of 2-3 A genes that are a single B gene, whose counts are
  the family's summed counts (``log1p(sum expm1(x))``); many-to-one, so not in the 1:1 table;
- ``lost`` (fraction ``lost``): no B gene.

B's expression gets a species-specific per-gene shift ``N(0, shift)`` on expressed values, Gaussian
technical noise ``N(0, noise)`` (clipped at 0) and a shuffled gene order. Gene embeddings: A's are the
genes' loadings on the top ``dim`` principal components of A's standardised expression (a co-expression
embedding derived from the data); a B gene's embedding is its A ortholog's (a family's mean) plus
``N(0, embedding_noise * scale)``, mimicking protein similarity of orthologs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..base.errors import DataSpecError
from ..genes import GeneEmbeddings

__all__ = ["TwoSpecies", "pca_gene_embeddings", "two_species"]


@dataclass
class TwoSpecies:
    """The two species' AnnData, their gene embeddings and the orthology table (``gene_a, gene_b, kind``)."""

    a: object
    b: object
    emb_a: GeneEmbeddings
    emb_b: GeneEmbeddings
    orthology: pd.DataFrame

    @property
    def one_to_one(self) -> pd.DataFrame:
        """The annotated 1:1 orthologs (what an ortholog-based method can use)."""
        return self.orthology[self.orthology["kind"] == "one2one"]


def pca_gene_embeddings(x: np.ndarray, genes: list[str], dim: int = 32, seed: int = 0) -> GeneEmbeddings:
    """Genes' loadings (scaled by the singular values) on the top ``dim`` PCs of standardised ``x`` (N, G)."""
    from sklearn.decomposition import PCA

    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    pca = PCA(n_components=min(dim, *z.shape), random_state=seed).fit(z)
    loadings = pca.components_.T * np.sqrt(pca.explained_variance_)
    return GeneEmbeddings(genes, loadings.astype(np.float32), source="PCA loadings")


def two_species(
    adata,
    *,
    annotated: float = 0.3,
    merged: float = 0.15,
    lost: float = 0.1,
    shift: float = 0.3,
    noise: float = 0.1,
    dim: int = 32,
    embedding_noise: float = 0.3,
    seed: int = 0,
    split_key: str | None = None,
) -> TwoSpecies:
    """Species A (half the cells) and a generated species B (the other half) from a log1p AnnData.

    ``split_key``: an obs column whose groups are each halved (e.g. the perturbation), so both species
    have every group; default: cells are halved at random.
    """
    import anndata as ad
    import scipy.sparse as sp

    if not 0 <= annotated + merged + lost <= 1:
        raise DataSpecError(f"two_species: annotated + merged + lost = {annotated + merged + lost} must be within [0, 1].")
    rng = np.random.default_rng(seed)
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = np.asarray(x, dtype=np.float32)
    if (x < 0).any():
        raise DataSpecError("two_species needs log1p expression (non-negative) in X; use adata.raw.to_adata() for scaled data.")
    n, g = x.shape
    if split_key is None:
        half = rng.permutation(n) < n // 2
    else:
        half = np.zeros(n, bool)
        for _, rows in adata.obs.groupby(split_key, observed=True).indices.items():
            half[rng.permutation(rows)[: len(rows) // 2]] = True
    genes_a = [str(v) for v in adata.var_names]
    order = rng.permutation(g)
    n_ann, n_merged, n_lost = int(annotated * g), int(merged * g), int(lost * g)
    kind = np.full(g, "unannotated", dtype=object)
    kind[order[:n_ann]] = "one2one"
    kind[order[n_ann : n_ann + n_merged]] = "paralog"
    kind[order[n_ann + n_merged : n_ann + n_merged + n_lost]] = "lost"
    # B genes: one per kept single gene, one per paralog family (families of 2-3 A genes)
    families: list[list[int]] = [[i] for i in np.flatnonzero((kind == "one2one") | (kind == "unannotated"))]
    para = list(rng.permutation(np.flatnonzero(kind == "paralog")))
    while para:
        size = 3 if len(para) >= 5 and rng.random() < 0.5 else min(2, len(para))
        families.append([int(i) for i in para[:size]])
        para = para[size:]
    perm = rng.permutation(len(families))
    families = [families[i] for i in perm]
    genes_b = [f"sp2_{k:05d}" for k in range(len(families))]
    xb_src = x[~half]
    xb = np.stack([np.log1p(np.expm1(xb_src[:, f]).sum(1)) for f in families], axis=1)
    expressed = xb > 0
    xb = xb + expressed * rng.normal(0.0, shift, size=(1, len(families))).astype(np.float32)
    xb = np.clip(xb + rng.normal(0.0, noise, size=xb.shape), 0.0, None).astype(np.float32)
    emb_a = pca_gene_embeddings(x[half], genes_a, dim=dim, seed=seed)
    scale = float(emb_a.matrix.std())
    mat_b = np.stack([emb_a.matrix.numpy()[f].mean(0) for f in families])
    mat_b = mat_b + rng.normal(0.0, embedding_noise * scale, size=mat_b.shape)
    emb_b = GeneEmbeddings(genes_b, mat_b.astype(np.float32), source="species B: ortholog embedding + noise")
    rows = [(genes_a[i], genes_b[k], "one2one" if kind[i] == "one2one" else ("paralog" if len(f) > 1 else "unannotated"))
            for k, f in enumerate(families) for i in f]
    rows += [(genes_a[i], None, "lost") for i in np.flatnonzero(kind == "lost")]
    orthology = pd.DataFrame(rows, columns=["gene_a", "gene_b", "kind"])
    a = ad.AnnData(x[half], obs=adata.obs[half].copy(), var=pd.DataFrame(index=pd.Index(genes_a, dtype=str)))
    b = ad.AnnData(xb, obs=adata.obs[~half].copy(), var=pd.DataFrame(index=pd.Index(genes_b, dtype=str)))
    return TwoSpecies(a, b, emb_a, emb_b, orthology)
