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

__all__ = [
    "GeneEmbeddingError",
    "GeneEmbeddings",
    "coexpression_embeddings",
    "coexpression_graph",
    "graph_embeddings",
    "load_embeddings",
    "read_adjacency",
    "read_edge_list",
    "save_embeddings",
    "spectral_embeddings",
]
