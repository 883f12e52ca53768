"""Macrogenes (Rosen et al., SATURN, Nature Methods 2024): genes of every species grouped by their embeddings.

Per embedding *modality* (``"protein"``: protein-language-model embeddings such as ESM2; ``"text"``:
embeddings of the genes' functional descriptions), the genes of all species are pooled and clustered
by k-means (scikit-learn ``KMeans``, k-means++ initialisation, seeded) into ``K`` centroids, the
macrogenes. Every gene ``g`` of every species gets a weight for every macrogene ``k`` from the rank
``r(g, k)`` of centroid ``k`` among the Euclidean distances of ``g``'s embedding to all centroids
(``r = 1`` for the nearest), as SATURN's ``score_genes_against_centroids`` ("default" scores) does::

    w(g, k) = 2 * ln(1 + 1 / r(g, k)) ** 2          # 0.96 for the nearest, 0.33, 0.17, ... ~2/r^2

A cell's macrogene expression is its log1p-normalised expression times the species' weight matrix,
``m = x @ W_species`` (G_species x K), per modality; the blocks are concatenated in modality order
(protein first, then text). A gene without an embedding in a modality has a zero row there and is
listed in :attr:`Macrogenes.missing` (reported, never silently filled).

Files: :meth:`Macrogenes.save` writes a ``.npz`` (no pickle; loaded with ``allow_pickle=False``)::

    format                      "cellgym.galaxy.macrogenes/1"
    species, modalities         1-D unicode arrays
    centers/<modality>          (K_m, d_m) float32 k-means centroids
    genes/<species>             1-D unicode array: the species' genes (rows of its weights)
    weights/<species>/<modality> (G_species, K_m) float32

:meth:`Macrogenes.export_saturn_pickle` additionally writes SATURN's ``<modality>_to_macrogenes.pkl``
dict ``{"<species>_<gene>": np.ndarray (K,)}`` for SATURN users; cellgym itself never reads pickle.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base.errors import CellgymError
from ..genes import GeneEmbeddingError, GeneEmbeddings

__all__ = ["MODALITIES", "MacrogeneError", "Macrogenes", "build_macrogenes", "rank_weights"]

MODALITIES: tuple[str, ...] = ("protein", "text")
FORMAT = "cellgym.galaxy.macrogenes/1"


class MacrogeneError(CellgymError, ValueError):
    """Macrogenes cannot be built, applied or read (too few genes, unknown species, corrupt file)."""


def rank_weights(genes_emb: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """SATURN's gene -> macrogene weights ``2 ln(1 + 1/r)^2`` (G, K) from distance ranks (1 = nearest)."""
    g = torch.as_tensor(genes_emb, dtype=torch.float64)
    c = torch.as_tensor(centers, dtype=torch.float64)
    dist = torch.cdist(g, c)
    ranks = torch.empty_like(dist)
    order = dist.argsort(dim=1, stable=True)
    ranks.scatter_(1, order, torch.arange(1, c.shape[0] + 1, dtype=dist.dtype).expand_as(order).contiguous())
    return (2.0 * torch.log1p(1.0 / ranks) ** 2).to(torch.float32).numpy()


@dataclass
class Macrogenes:
    """Macrogene centroids per modality and each species' gene -> macrogene weights.

    Attributes
    ----------
    species
        Species names, in the order they were given.
    modalities
        Modalities present, in block order (a subset of ``MODALITIES``, protein first).
    centers
        ``{modality: (K_m, d_m) float32}`` k-means centroids.
    genes
        ``{species: [gene, ...]}`` the rows of that species' weights.
    weights
        ``{species: {modality: (G_species, K_m) float32}}``.
    missing
        ``{species: {modality: [genes without an embedding there]}}`` (their rows are zero).
    """

    species: list[str]
    modalities: list[str]
    centers: dict[str, np.ndarray]
    genes: dict[str, list[str]]
    weights: dict[str, dict[str, np.ndarray]]
    missing: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        """Macrogenes per modality, in block order."""
        return [int(self.centers[m].shape[0]) for m in self.modalities]

    @property
    def n_macrogenes(self) -> int:
        """Total width of the concatenated macrogene expression."""
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        """Column names of the concatenated macrogene expression: ``protein_0 ... text_0 ...``."""
        return [f"{m}_{k}" for m in self.modalities for k in range(self.centers[m].shape[0])]

    def matrix(self, species: str) -> np.ndarray:
        """The species' full weight matrix (G_species, sum K_m): the modality blocks side by side."""
        self._check_species(species)
        return np.concatenate([self.weights[species][m] for m in self.modalities], axis=1)

    def transform(self, x: np.ndarray, genes: Sequence[str], species: str) -> np.ndarray:
        """Macrogene expression (N, sum K_m) = ``x`` (N, G; log1p-normalised, columns ``genes``) @ W.

        ``genes`` must be the species' genes in the order the weights were built for (the data the
        macrogenes were fitted on); a different gene list raises :class:`MacrogeneError`.
        """
        self._check_species(species)
        if list(map(str, genes)) != self.genes[species]:
            theirs = set(self.genes[species])
            extra = [g for g in genes if g not in theirs][:3]
            raise MacrogeneError(
                f"macrogenes of {species!r}: the cells' {len(genes)} genes differ from the {len(theirs)} the weights "
                f"were built for (e.g. unknown {extra}); subset and order the cells' genes as Macrogenes.genes[{species!r}]."
            )
        return np.asarray(x, dtype=np.float32) @ self.matrix(species)

    def _check_species(self, species: str) -> None:
        if species not in self.weights:
            raise MacrogeneError(f"no macrogene weights for species {species!r}; known species are {self.species}.")

    # ------------------------------------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the documented ``.npz`` atomically (temporary name in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT),
            "species": np.array(self.species, dtype=str),
            "modalities": np.array(self.modalities, dtype=str),
        }
        for m in self.modalities:
            arrays[f"centers/{m}"] = self.centers[m].astype(np.float32)
        for s in self.species:
            arrays[f"genes/{s}"] = np.array(self.genes[s], dtype=str)
            for m in self.modalities:
                arrays[f"weights/{s}/{m}"] = self.weights[s][m].astype(np.float32)
                arrays[f"missing/{s}/{m}"] = np.array(self.missing.get(s, {}).get(m, []), dtype=str)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Macrogenes:
        """Read a file written by :meth:`save` (``allow_pickle=False``: no code can run)."""
        path = Path(path)
        if not path.is_file():
            raise MacrogeneError(f"no macrogene file at {str(path)!r}; write one with Macrogenes.save or `cellgym fit --predictor galaxy`.")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z or str(z["format"]) != FORMAT:
                    raise MacrogeneError(f"{path}: not a cellgym macrogene file (expected format {FORMAT!r}).")
                species = [str(s) for s in z["species"]]
                modalities = [str(m) for m in z["modalities"]]
                return cls(
                    species=species,
                    modalities=modalities,
                    centers={m: z[f"centers/{m}"] for m in modalities},
                    genes={s: [str(g) for g in z[f"genes/{s}"]] for s in species},
                    weights={s: {m: z[f"weights/{s}/{m}"] for m in modalities} for s in species},
                    missing={s: {m: [str(g) for g in z[f"missing/{s}/{m}"]] for m in modalities} for s in species},
                )
        except (KeyError, ValueError, OSError) as exc:
            if isinstance(exc, MacrogeneError):
                raise
            raise MacrogeneError(f"{path}: unreadable macrogene file ({type(exc).__name__}: {exc}); rewrite it.") from None

    def export_saturn_pickle(self, folder: str | Path, prefix: str = "all") -> list[Path]:
        """SATURN-style ``<prefix>-<modality>_to_macrogenes.pkl``: ``{"<species>_<gene>": weights (K,)}``.

        An export for SATURN's own scripts only; cellgym never loads pickle (use :meth:`load`).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for m in self.modalities:
            table = {f"{s}_{g}": self.weights[s][m][i].copy() for s in self.species for i, g in enumerate(self.genes[s])}
            path = folder / f"{prefix}-{'esm' if m == 'protein' else m}_to_macrogenes.pkl"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(table, protocol=4))
            os.replace(tmp, path)
            out.append(path)
        return out


def build_macrogenes(
    genes: Mapping[str, Sequence[str]],
    embeddings: Mapping[str, Mapping[str, GeneEmbeddings]],
    *,
    n_macrogenes: int | Mapping[str, int] = 2000,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 300,
) -> Macrogenes:
    """k-means macrogenes per modality over the union of every species' gene embeddings.

    Parameters
    ----------
    genes
        ``{species: genes}`` the genes of each species' expression data (the weights' rows).
    embeddings
        ``{modality: {species: GeneEmbeddings}}`` with modality in ``MODALITIES``; each modality must
        cover every species. Genes without an embedding get zero rows and are listed in ``missing``.
    n_macrogenes
        Clusters per modality (one number, or ``{modality: K}``); SATURN's default is 2000.
    seed, n_init, max_iter
        scikit-learn ``KMeans`` options (k-means++ initialisation, seeded).
    """
    from sklearn.cluster import KMeans

    unknown = [m for m in embeddings if m not in MODALITIES]
    if unknown or not embeddings:
        raise MacrogeneError(f"macrogene modalities must be among {list(MODALITIES)}, got {list(embeddings)}.")
    species = list(genes)
    modalities = [m for m in MODALITIES if m in embeddings]
    centers: dict[str, np.ndarray] = {}
    weights: dict[str, dict[str, np.ndarray]] = {s: {} for s in species}
    missing: dict[str, dict[str, list[str]]] = {s: {} for s in species}
    for m in modalities:
        absent = [s for s in species if s not in embeddings[m]]
        if absent:
            raise MacrogeneError(f"{m} embeddings: no embeddings for species {absent}; give one file per species.")
        dims = {embeddings[m][s].dim for s in species}
        if len(dims) != 1:
            raise MacrogeneError(f"{m} embeddings have different widths across species {sorted(dims)}; use one embedding model for all species.")
        blocks, present = {}, {}
        for s in species:
            try:
                mat, ok = embeddings[m][s].align(list(genes[s]))
            except GeneEmbeddingError as exc:
                raise MacrogeneError(f"{m} embeddings of {s}: {exc}") from None
            blocks[s], present[s] = mat.numpy(), ok.numpy()
            missing[s][m] = [g for g, p in zip(genes[s], present[s], strict=True) if not p]
        pooled = np.concatenate([blocks[s][present[s]] for s in species]).astype(np.float64)
        k = n_macrogenes[m] if isinstance(n_macrogenes, Mapping) else int(n_macrogenes)
        if not 1 <= k <= pooled.shape[0]:
            raise MacrogeneError(
                f"{m}: n_macrogenes={k} but only {pooled.shape[0]} genes (all species) have embeddings; "
                f"pass n_macrogenes between 1 and {pooled.shape[0]}."
            )
        km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed).fit(pooled)
        centers[m] = km.cluster_centers_.astype(np.float32)
        for s in species:
            w = np.zeros((len(genes[s]), k), dtype=np.float32)
            if present[s].any():
                w[present[s]] = rank_weights(blocks[s][present[s]], centers[m])
            weights[s][m] = w
    return Macrogenes(species, modalities, centers, {s: [str(g) for g in genes[s]] for s in species}, weights, missing)
