"""``{gene_symbol: tensor}`` embedding files: load (never executing code), align to a gene list, save."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.errors import CellgymError

__all__ = ["GeneEmbeddingError", "GeneEmbeddings", "load_embeddings", "save_embeddings"]


class GeneEmbeddingError(CellgymError, ValueError):
    """A gene-embedding file or source is unreadable, malformed, or does not cover the data's genes."""


@dataclass
class GeneEmbeddings:
    """Embeddings of named genes: ``matrix[i]`` is the embedding of ``genes[i]``.

    Attributes
    ----------
    genes
        Gene symbols (unique), in row order.
    matrix
        Tensor (n_genes, dim) float32.
    source
        Where the embeddings came from (a file path or a description), used in messages.
    """

    genes: list[str]
    matrix: torch.Tensor
    source: str = "embeddings"
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.genes = [str(g) for g in self.genes]
        self.matrix = torch.as_tensor(self.matrix, dtype=torch.float32)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.genes):
            raise GeneEmbeddingError(
                f"{self.source}: expected a ({len(self.genes)}, dim) matrix for {len(self.genes)} genes, "
                f"got shape {tuple(self.matrix.shape)}."
            )
        if len(set(self.genes)) != len(self.genes):
            raise GeneEmbeddingError(f"{self.source}: gene names are not unique; keep one embedding per gene.")
        if not torch.isfinite(self.matrix).all():
            bad = [self.genes[i] for i in torch.nonzero(~torch.isfinite(self.matrix).all(1)).flatten()[:5].tolist()]
            raise GeneEmbeddingError(f"{self.source}: non-finite values in the embeddings of {bad}; fix or drop those genes.")
        self._index = {g: i for i, g in enumerate(self.genes)}

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.genes)

    def __contains__(self, gene: object) -> bool:
        return gene in self._index

    def missing(self, genes: Sequence[str]) -> list[str]:
        """The genes of ``genes`` this source has no embedding for, in the given order."""
        return [g for g in genes if g not in self._index]

    def align(self, genes: Sequence[str], *, min_overlap: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for ``genes``: ``(matrix (len(genes), dim), present (len(genes),) bool)``.

        Rows of missing genes are zero **and flagged** in ``present``; callers decide the fallback
        (a learned embedding, another source) and must not treat those rows as embeddings. Fewer than
        ``min_overlap`` present genes raises :class:`GeneEmbeddingError`.
        """
        rows = torch.tensor([self._index.get(g, -1) for g in genes], dtype=torch.long)
        present = rows >= 0
        n_present = int(present.sum())
        if n_present < min_overlap:
            example = ", ".join(list(genes)[:3])
            theirs = ", ".join(self.genes[:3])
            raise GeneEmbeddingError(
                f"{self.source}: only {n_present} of {len(genes)} genes have an embedding (need {min_overlap}); "
                f"the data's genes look like [{example}] and the file's like [{theirs}]. Use embeddings keyed "
                "by the same gene symbols (species, case, Ensembl IDs vs symbols)."
            )
        out = torch.zeros(len(genes), self.dim)
        out[present] = self.matrix[rows[present]]
        return out, present

    def subset(self, genes: Sequence[str]) -> GeneEmbeddings:
        """Only the given genes that this source has, in the given order."""
        keep = [g for g in genes if g in self._index]
        return GeneEmbeddings(keep, self.matrix[[self._index[g] for g in keep]], self.source)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The common ``{gene_symbol: tensor}`` form."""
        return {g: self.matrix[i].clone() for i, g in enumerate(self.genes)}

    @classmethod
    def concat(cls, sources: Sequence[GeneEmbeddings], genes: Sequence[str] | None = None) -> GeneEmbeddings:
        """Side-by-side concatenation over the genes every source has (or over ``genes`` if given).

        A gene must be present in every source; the dropped genes are those :meth:`missing` reports.
        """
        if not sources:
            raise GeneEmbeddingError("concat needs at least one gene-embedding source.")
        common = list(genes) if genes is not None else [g for g in sources[0].genes if all(g in s for s in sources[1:])]
        common = [g for g in common if all(g in s for s in sources)]
        mats = [s.subset(common).matrix for s in sources]
        return cls(common, torch.cat(mats, dim=1), " + ".join(s.source for s in sources))


def load_embeddings(path: str | Path, *, dim: int | None = None) -> GeneEmbeddings:
    """Load a ``{gene_symbol: tensor}`` ``.pt`` file (as SATURN's ESM scripts write), never running code.

    Also accepted: ``{"genes": [...], "embeddings": Tensor (n, d)}``. ``dim`` checks the width.
    Any problem raises :class:`GeneEmbeddingError` naming the file and the fix.
    """
    path = Path(path)
    fix = "expected a torch.save'd dict {gene_symbol: 1-D tensor} (or {'genes': [...], 'embeddings': (n, d) tensor})"
    if not path.is_file():
        raise GeneEmbeddingError(f"no gene-embedding file at {str(path)!r}; {fix}.")
    with path.open("rb") as fh:
        head = fh.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip; legacy files start as a pickle
        raise GeneEmbeddingError(f"{path}: cannot be read as gene embeddings (not a file written by torch.save); {fix}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or pickled-code files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Unsupported global" in first:
            first = "it holds objects other than tensors, strings and lists (loading it would run code)"
        raise GeneEmbeddingError(f"{path}: cannot be read as gene embeddings ({first}); {fix}.") from None
    if isinstance(obj, dict) and set(obj) == {"genes", "embeddings"}:
        genes, matrix = obj["genes"], obj["embeddings"]
        if not isinstance(matrix, torch.Tensor) or not isinstance(genes, list | tuple):
            raise GeneEmbeddingError(f"{path}: 'genes' must be a list and 'embeddings' a tensor; {fix}.")
    elif isinstance(obj, dict) and obj:
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise GeneEmbeddingError(f"{path}: entry {bad[0]!r} is not a gene symbol -> tensor pair; {fix}.")
        shapes = {tuple(v.reshape(-1).shape) for v in obj.values()}
        if len(shapes) != 1:
            raise GeneEmbeddingError(f"{path}: embeddings have different lengths {sorted(shapes)[:3]}; every gene needs the same dim.")
        genes = list(obj)
        matrix = torch.stack([v.reshape(-1).float() for v in obj.values()])
    else:
        raise GeneEmbeddingError(f"{path}: holds a {type(obj).__name__}, not a non-empty dict; {fix}.")
    emb = GeneEmbeddings(list(genes), torch.as_tensor(matrix).float(), source=str(path))
    if dim is not None and emb.dim != dim:
        raise GeneEmbeddingError(f"{path}: embeddings have dim {emb.dim}, this model expects {dim}; use the same embedding model it was fitted with.")
    return emb


def save_embeddings(emb: GeneEmbeddings, path: str | Path) -> Path:
    """Write ``{gene_symbol: tensor}`` atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(emb.to_dict(), buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


