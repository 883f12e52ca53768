"""Cross-species cell-type trees: hierarchical clustering of (species, cell type) centroids in ``X_galaxy``.

Galaxy draws multi-species trees of cell types; here the centroids of every (species, cell type) pair
are clustered with SciPy's average-linkage (UPGMA) on Euclidean distances, written as Newick (branch
lengths = merge-height differences) and drawn as a dendrogram PNG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..base.errors import DataSpecError

__all__ = ["CellTypeTree", "celltype_tree"]


@dataclass
class CellTypeTree:
    """Leaves ``"<species>|<cell type>"``, their centroids, the SciPy linkage and the Newick string."""

    leaves: list[str]
    centroids: np.ndarray
    linkage: np.ndarray
    newick: str

    def clusters(self, n: int) -> dict[str, int]:
        """Leaf -> cluster id when the tree is cut into ``n`` clusters."""
        from scipy.cluster.hierarchy import fcluster

        return dict(zip(self.leaves, fcluster(self.linkage, n, criterion="maxclust").tolist(), strict=True))

    def sister_pairs(self) -> set[frozenset[str]]:
        """Pairs of leaves that are each other's only sibling (a cherry) in the tree."""
        n = len(self.leaves)
        return {frozenset((self.leaves[int(a)], self.leaves[int(b)])) for a, b, *_ in self.linkage if a < n and b < n}

    def write(self, prefix: str | Path, *, title: str = "") -> tuple[Path, Path]:
        """``<prefix>.nwk`` and ``<prefix>.png`` (dendrogram), both written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.cluster.hierarchy import dendrogram

        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        nwk, png = prefix.with_suffix(".nwk"), prefix.with_suffix(".png")
        tmp = nwk.with_name(f".{nwk.name}.{os.getpid()}.tmp")
        tmp.write_text(self.newick + "\n")
        os.replace(tmp, nwk)
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(self.leaves) + 1.5))
        dendrogram(self.linkage, labels=self.leaves, orientation="left", ax=ax, color_threshold=0)
        ax.set_xlabel("average-linkage distance in X_galaxy")
        ax.set_title(title or "cell types across species", fontsize=10)
        fig.tight_layout()
        tmp = png.with_name(f".{png.stem}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, png)
        return nwk, png


def _newick(linkage: np.ndarray, leaves: list[str]) -> str:
    from scipy.cluster.hierarchy import to_tree

    def quote(name: str) -> str:
        return "'" + name.replace("'", "''") + "'"

    def walk(node, parent_height: float) -> str:
        length = f":{max(parent_height - node.dist, 0.0):.6g}"
        if node.is_leaf():
            return quote(leaves[node.id]) + length
        return f"({walk(node.left, node.dist)},{walk(node.right, node.dist)}){length}"

    root = to_tree(linkage)
    text = walk(root, root.dist)
    return text[: text.rindex(":")] + ";"  # the root has no branch length


def celltype_tree(embedding: np.ndarray, species: np.ndarray | pd.Series, celltype: np.ndarray | pd.Series,
                  *, method: str = "average", min_cells: int = 1) -> CellTypeTree:
    """Tree of the (species, cell type) centroids of ``embedding`` (N, d), e.g. ``adata.obsm['X_galaxy']``.

    Pairs with fewer than ``min_cells`` cells are left out.
    """
    from scipy.cluster.hierarchy import linkage

    emb = np.asarray(embedding, dtype=np.float64)
    frame = pd.DataFrame({"species": np.asarray(species, dtype=str), "celltype": np.asarray(celltype, dtype=str)})
    if emb.ndim != 2 or emb.shape[0] != len(frame):
        raise DataSpecError(f"celltype_tree: embedding {emb.shape} does not match {len(frame)} species / cell-type labels.")
    leaves, centroids = [], []
    for (s, c), rows in frame.groupby(["species", "celltype"], sort=True).indices.items():
        if len(rows) >= min_cells:
            leaves.append(f"{s}|{c}")
            centroids.append(emb[rows].mean(0))
    if len(leaves) < 2:
        raise DataSpecError(f"celltype_tree: {len(leaves)} (species, cell type) group(s) with >= {min_cells} cells; need 2.")
    cent = np.stack(centroids)
    link = linkage(cent, method=method, metric="euclidean")
    return CellTypeTree(leaves, cent, link, _newick(link, leaves))
