"""Gene knowledge shared by every predictor family (DESIGN §3): one place that loads gene embeddings.

Sources are ``{gene_symbol: tensor}`` ``.pt`` files (protein language models such as ESM2, as SATURN's
and State's files are; text-description embeddings), and embeddings computed from gene networks
(edge lists, adjacency matrices, or the training data's co-expression graph as the default).
Every source reports the genes it lacks; nothing is zero-filled silently.
"""

from ._files import GeneEmbeddingError, GeneEmbeddings, load_embeddings, save_embeddings
from ._graph import (
    coexpression_embeddings,
    coexpression_graph,
    graph_embeddings,
    read_adjacency,
    read_edge_list,
    spectral_embeddings,
)
from ._sources import COEXPRESSION, embedding_table, resolve_sources
from ._text import DEFAULT_TEXT_MODEL, SentenceEmbedder, TextEncoder, embed_descriptions, read_descriptions

__all__ = [
    "COEXPRESSION",
    "DEFAULT_TEXT_MODEL",
    "GeneEmbeddingError",
    "GeneEmbeddings",
    "SentenceEmbedder",
    "TextEncoder",
    "coexpression_embeddings",
    "coexpression_graph",
    "embed_descriptions",
    "embedding_table",
    "graph_embeddings",
    "load_embeddings",
    "read_adjacency",
    "read_descriptions",
    "read_edge_list",
    "resolve_sources",
    "save_embeddings",
    "spectral_embeddings",
]
