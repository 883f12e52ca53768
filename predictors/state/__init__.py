"""State (Arc Institute; Adduri et al. 2025): the set transformer ``state.transition`` (ST) and the cell
embedding model ``state.embedding`` (SE), with SE's reward model."""

from ._embedding import StateEmbedding, StateEmbeddingModule, StateEmbeddingReward
from ._transition import StateTransition, StateTransitionModule, set_layout

__all__ = [
    "StateEmbedding",
    "StateEmbeddingModule",
    "StateEmbeddingReward",
    "StateTransition",
    "StateTransitionModule",
    "set_layout",
]
