"""Gene knowledge shared by every predictor family (DESIGN §3): one place that loads gene embeddings.

Sources are ``{gene_symbol: tensor}`` ``.pt`` files (protein language models such as ESM2, as SATURN's
and State's files are; text-description embeddings), and embeddings computed from gene networks.
Every source reports the genes it lacks; nothing is zero-filled silently.
"""

from ._files import GeneEmbeddingError, GeneEmbeddings, load_embeddings, save_embeddings

__all__ = ["GeneEmbeddingError", "GeneEmbeddings", "load_embeddings", "save_embeddings"]
