"""CellTRIP's attention-PPO agent (Sun et al., bioRxiv 2025, doi:10.1101/2025.11.21.689815) and its manager API."""

from ._agent import CellTripAgent, PositionDecoder, obs_dict_to_arrays
from ._manager import TripManager
from ._ppo import CellTripConfig, EntityAttentionActorCritic, TrainResult, train

__all__ = [
    "CellTripAgent",
    "CellTripConfig",
    "EntityAttentionActorCritic",
    "PositionDecoder",
    "TrainResult",
    "TripManager",
    "obs_dict_to_arrays",
    "train",
]
