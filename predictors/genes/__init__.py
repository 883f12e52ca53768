"""Gene knowledge shared by every predictor family (DESIGN §3): one place that loads gene embeddings.

Sources are ``{gene_symbol: tensor}`` ``.pt`` files (protein language models such as ESM2, as SATURN's
and State's files are; text-description embeddings), and embeddings computed from gene networks.
Every source reports the genes it lacks; nothing is zero-filled silently.
"""

from ._files import GeneEmbeddingError, GeneEmbeddings, load_embeddings, save_embeddings
from ._text import DEFAULT_TEXT_MODEL, SentenceEmbedder, TextEncoder, embed_descriptions, read_descriptions

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "GeneEmbeddingError",
    "GeneEmbeddings",
    "SentenceEmbedder",
    "TextEncoder",
    "embed_descriptions",
    "load_embeddings",
    "read_descriptions",
    "save_embeddings",
]
