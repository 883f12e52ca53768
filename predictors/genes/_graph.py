"""Gene embeddings from gene networks: edge lists, adjacency matrices, or the data's co-expression graph.

A network (STRING-style ``gene1 gene2 score`` edge list as TSV/CSV/Parquet; or a square adjacency matrix
``.npy``/``.npz`` with a gene-name file, one name a line, for GO / Reactome / co-expression networks) is
embedded spectrally (:func:`spectral_embeddings`: a diffusion map over the normalised Laplacian's
eigenvectors, with numpy / ``scipy.sparse.linalg``). Genes without an edge have no embedding: they are *missing* (reported by
:meth:`GeneEmbeddings.missing`), never zero-filled. Each connected component is embedded on its own
(eigenmaps of a disconnected graph are degenerate); components smaller than ``min_component`` genes are
dropped as missing.

Without a file, :func:`coexpression_embeddings` builds the default source from the training data: a
symmetric k-nearest-neighbour graph of genes by absolute Pearson correlation across cells (the
co-expression networks of WGCNA, Langfelder & Horvath 2008, sparsified to k neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._files import GeneEmbeddingError, GeneEmbeddings

__all__ = [
    "coexpression_embeddings",
    "coexpression_graph",
    "graph_embeddings",
    "read_adjacency",
    "read_edge_list",
    "spectral_embeddings",
]

EDGE_SUFFIXES = (".tsv", ".txt", ".csv", ".parquet", ".pq")
ADJ_SUFFIXES = (".npy", ".npz")


def read_edge_list(path: str | Path) -> tuple[sp.csr_matrix, list[str]]:
    """A weighted undirected graph from an edge list: ``(adjacency (n, n) csr, gene names)``.

    The first three columns are ``gene1 gene2 score`` (STRING's ``protein1 protein2 combined_score``);
    a missing third column means weight 1. TSV/TXT (whitespace or tab), CSV or Parquet; a header line is
    detected (a non-numeric third field). Duplicate edges keep the largest score; self-loops are dropped.
    """
    path = Path(path)
    fix = "expected rows 'gene1 gene2 score' (TSV/CSV/Parquet), e.g. STRING's protein.links files"
    if not path.is_file():
        raise GeneEmbeddingError(f"no gene-network file at {str(path)!r}; {fix}.")
    try:
        if path.suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            sep = "," if path.suffix == ".csv" else r"\s+"
            df = pd.read_csv(path, sep=sep, header=None, comment="#", dtype=str, engine="python")
            if df.shape[1] >= 3 and pd.to_numeric(df.iloc[:1, 2], errors="coerce").isna().all():
                df = df.iloc[1:]  # a header line
            elif df.shape[1] == 2 and len(df) and str(df.iloc[0, 0]).lower() in ("gene1", "protein1", "source", "from"):
                df = df.iloc[1:]
    except Exception as exc:  # pandas/pyarrow raise many types for foreign files
        raise GeneEmbeddingError(f"{path}: cannot be read as an edge list ({type(exc).__name__}: {exc}); {fix}.") from None
    if df.shape[1] < 2 or len(df) == 0:
        raise GeneEmbeddingError(f"{path}: found {df.shape[1]} column(s) and {len(df)} row(s); {fix}.")
    a, b = df.iloc[:, 0].astype(str).to_numpy(), df.iloc[:, 1].astype(str).to_numpy()
    w = pd.to_numeric(df.iloc[:, 2], errors="coerce").to_numpy(np.float64) if df.shape[1] >= 3 else np.ones(len(df))
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GeneEmbeddingError(f"{path}: score {df.iloc[row, 2]!r} of edge {a[row]}-{b[row]} is not a number >= 0; {fix}.")
    genes, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    i, j = codes[: len(a)], codes[len(a) :]
    keep = i != j
    adj = sp.coo_matrix((w[keep], (i[keep], j[keep])), shape=(len(genes), len(genes))).tocsr()
    adj = adj.maximum(adj.T)  # undirected; duplicates keep the larger score
    return adj.tocsr(), genes.tolist()


def read_adjacency(matrix: str | Path, genes: str | Path) -> tuple[sp.csr_matrix, list[str]]:
    """A square adjacency matrix (``.npy`` dense or ``.npz`` scipy sparse) and its gene names (one a line)."""
    matrix, genes = Path(matrix), Path(genes)
    fix = "expected a square (n, n) .npy/.npz matrix of edge weights >= 0 and a text file of its n gene names, one a line"
    for f in (matrix, genes):
        if not f.is_file():
            raise GeneEmbeddingError(f"no file at {str(f)!r}; {fix}.")
    try:
        adj = sp.load_npz(matrix) if matrix.suffix == ".npz" else sp.csr_matrix(np.load(matrix, allow_pickle=False))
    except Exception as exc:  # numpy/scipy raise many types for foreign files
        raise GeneEmbeddingError(f"{matrix}: cannot be read as an adjacency matrix ({type(exc).__name__}); {fix}.") from None
    names = [line.strip() for line in genes.read_text().splitlines() if line.strip()]
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] != len(names):
        raise GeneEmbeddingError(f"{matrix}: shape {adj.shape} does not match the {len(names)} gene names of {genes}; {fix}.")
    adj = sp.csr_matrix(adj, dtype=np.float64)
    if not np.isfinite(adj.data).all() or (adj.data < 0).any():
        raise GeneEmbeddingError(f"{matrix}: holds negative or non-finite weights; {fix}.")
    if len(set(names)) != len(names):
        raise GeneEmbeddingError(f"{genes}: gene names are not unique; {fix}.")
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj.maximum(adj.T).tocsr(), names


def coexpression_graph(x: np.ndarray, k: int = 15) -> sp.csr_matrix:
    """Symmetric kNN co-expression graph (G, G) of the genes (columns) of ``x`` (N, G).

    Weights are absolute Pearson correlations across cells; each gene keeps its ``k`` strongest
    partners; the union of both directions is kept. Constant genes have no edges.
    """
    x = np.asarray(x, dtype=np.float64)
    g = x.shape[1]
    xc = x - x.mean(0)
    norm = np.sqrt((xc**2).sum(0))
    ok = norm > 0
    corr = np.zeros((g, g))
    z = xc[:, ok] / norm[ok]
    corr[np.ix_(ok, ok)] = np.abs(z.T @ z)
    np.fill_diagonal(corr, 0.0)
    k = min(k, max(g - 1, 1))
    nbr = np.argpartition(-corr, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(g), k)
    w = corr[rows, nbr.ravel()]
    adj = sp.csr_matrix((w, (rows, nbr.ravel())), shape=(g, g))
    adj.eliminate_zeros()
    return adj.maximum(adj.T).tocsr()


def spectral_embeddings(
    adj: sp.spmatrix, genes: Sequence[str], *, dim: int = 32, seed: int | None = 0, min_component: int | None = None,
    source: str = "graph",
) -> GeneEmbeddings:
    """Diffusion-map embeddings (dim) of the genes of a weighted graph, component by component.

    The top eigenvectors of the normalised adjacency ``D^-1/2 A D^-1/2`` (those of the smallest
    eigenvalues of the normalised Laplacian, as in Laplacian eigenmaps, Belkin & Niyogi 2003), the trivial
    one dropped, mapped back by ``D^-1/2`` and weighted by their eigenvalues (the diffusion map at t = 1,
    Coifman & Lafon 2006), so that the smooth, community-level directions dominate the noisy ones.
    Dense ``numpy.linalg.eigh`` up to 3000 genes per component, ``scipy.sparse.linalg.eigsh`` above.
    Components with fewer than ``min_component`` genes (default ``dim + 2``) and isolated genes are left
    out (missing). Signs are fixed (largest entry positive); each component is scaled to unit mean
    squared norm per gene.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import eigsh

    adj = sp.csr_matrix(adj, dtype=np.float64)
    genes = [str(g) for g in genes]
    min_component = dim + 2 if min_component is None else min_component
    n_comp, comp = connected_components(adj, directed=False)
    degree = np.asarray(adj.sum(1)).ravel()
    keep_genes: list[str] = []
    blocks: list[np.ndarray] = []
    for c in range(n_comp):
        idx = np.flatnonzero((comp == c) & (degree > 0))
        if idx.size < min_component:
            continue
        inv_sqrt = 1.0 / np.sqrt(degree[idx])
        s_mat = sp.diags(inv_sqrt) @ adj[idx][:, idx] @ sp.diags(inv_sqrt)
        if idx.size <= 3000:
            w, u = np.linalg.eigh(s_mat.toarray())
        else:
            v0 = np.random.default_rng(seed).uniform(-1, 1, idx.size)
            w, u = eigsh(s_mat.tocsr(), k=dim + 1, which="LA", v0=v0)
        order = np.argsort(-w)[1 : dim + 1]
        emb = inv_sqrt[:, None] * u[:, order] * w[order]
        emb *= np.sign(emb[np.abs(emb).argmax(0), np.arange(emb.shape[1])])
        emb /= max(float(np.sqrt((emb**2).sum(1).mean())), 1e-12)
        blocks.append(emb)
        keep_genes += [genes[i] for i in idx]
    if not blocks:
        raise GeneEmbeddingError(
            f"{source}: no connected group of at least {min_component} genes; the network is too sparse for "
            f"{dim}-dim spectral embeddings. Use a denser network or a smaller dim."
        )
    return GeneEmbeddings(keep_genes, torch.from_numpy(np.concatenate(blocks)).float(), source=source)


def graph_embeddings(
    path: str | Path, *, genes_file: str | Path | None = None, dim: int = 32, seed: int | None = 0
) -> GeneEmbeddings:
    """Spectral gene embeddings of a network file: an edge list, or an adjacency matrix + ``genes_file``."""
    path = Path(path)
    if path.suffix in ADJ_SUFFIXES:
        if genes_file is None:
            raise GeneEmbeddingError(f"{path}: an adjacency matrix needs its gene names; pass genes_file=<one name a line>.")
        adj, names = read_adjacency(path, genes_file)
    elif path.suffix in EDGE_SUFFIXES:
        adj, names = read_edge_list(path)
    else:
        raise GeneEmbeddingError(
            f"{path}: unknown network file type {path.suffix!r}; expected an edge list ({', '.join(EDGE_SUFFIXES)}) or an "
            f"adjacency matrix ({', '.join(ADJ_SUFFIXES)}) with genes_file."
        )
    return spectral_embeddings(adj, names, dim=dim, seed=seed, source=str(path))


def coexpression_embeddings(
    x: np.ndarray, genes: Sequence[str], *, dim: int = 32, k: int = 15, seed: int | None = 0
) -> GeneEmbeddings:
    """Spectral embeddings of the data's own co-expression graph (:func:`coexpression_graph`): the default source."""
    return spectral_embeddings(coexpression_graph(x, k=k), genes, dim=dim, seed=seed, source="co-expression graph of the training data")
