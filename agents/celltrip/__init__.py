"""CellTRIP's attention-PPO agent (Sun et al., bioRxiv 2025, doi:10.1101/2025.11.21.689815) and its manager API."""

from ._agent import CellTripAgent, PositionDecoder, obs_dict_to_arrays
from ._manager import PerturbationResult, StageRecovery, TripManager, recover_stages
from ._ppo import (
    CELLTRIP_SIZE,
    CellTripConfig,
    EntityAttentionActorCritic,
    LocalCollector,
    TrainResult,
    train,
)


def __getattr__(name: str):
    if name == "RayCollector":  # needs the optional ray extra: imported on first use
        from ._ray import RayCollector

        return RayCollector
    raise AttributeError(name)


__all__ = [
    "CELLTRIP_SIZE",
    "CellTripAgent",
    "CellTripConfig",
    "EntityAttentionActorCritic",
    "LocalCollector",
    "PerturbationResult",
    "PositionDecoder",
    "StageRecovery",
    "TrainResult",
    "TripManager",
    "obs_dict_to_arrays",
    "recover_stages",
    "train",
]
