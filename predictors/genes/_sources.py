"""Gene-embedding sources named by a string, resolved into :class:`GeneEmbeddings` (State, GEM-1)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._files import GeneEmbeddingError, GeneEmbeddings, load_embeddings
from ._graph import ADJ_SUFFIXES, EDGE_SUFFIXES, coexpression_embeddings, graph_embeddings

log = logging.getLogger(__name__)

COEXPRESSION = "coexpression"


def resolve_sources(
    sources: Sequence[str], x: np.ndarray, genes: Sequence[str], *, dim: int, seed: int | None
) -> list[GeneEmbeddings]:
    """Load every source: ``"coexpression"`` (the data's co-expression graph), a ``.pt`` file
    (``{gene: tensor}``), a network edge list (``.tsv/.txt/.csv/.parquet``), or ``matrix.npz::genes.txt``
    (an adjacency matrix with its gene-name file). ``dim`` is the width of graph embeddings."""
    out = []
    for source in sources or [COEXPRESSION]:
        source = str(source)
        if source == COEXPRESSION:
            out.append(coexpression_embeddings(x, genes, dim=dim, seed=seed))
            continue
        matrix, _, names = source.partition("::")
        path = Path(matrix)
        if path.suffix == ".pt":
            out.append(load_embeddings(path))
        elif path.suffix in EDGE_SUFFIXES or path.suffix in ADJ_SUFFIXES:
            out.append(graph_embeddings(path, genes_file=names or None, dim=dim, seed=seed))
        else:
            raise GeneEmbeddingError(
                f"gene-embedding source {source!r}: expected 'coexpression', a .pt file of {{gene: tensor}}, a network "
                f"edge list ({', '.join(EDGE_SUFFIXES)}) or 'matrix.npz::genes.txt'."
            )
    return out


def embedding_table(
    sources: list[GeneEmbeddings], names: Sequence[str], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (n, sum of dims), present (n,) bool)`` for ``names``: the sources side by side.

    A name is present only if every source has it (the concatenation is never part-zero); the missing
    names are logged per source, and the caller applies its documented fallback to them. A file source
    that covers none of ``names`` raises :class:`GeneEmbeddingError` naming the file (the data's own
    co-expression graph may cover none of them, e.g. perturbation targets outside the measured genes).
    """
    mats, present = [], np.ones(len(names), dtype=bool)
    for src in sources:
        default = src.source.startswith("co-expression")
        m, p = src.align(list(names), min_overlap=0 if default else 1)
        missing = src.missing(list(names))
        if missing:
            log.info("%s: %d of %d %s have no embedding in %s (first: %s)", what, len(missing), len(names), what,
                     src.source, missing[:5])
        mats.append(m.numpy())
        present &= p.numpy()
    return np.concatenate(mats, axis=1).astype(np.float32), present
