"""CellTRIP's multi-agent world (PettingZoo ``ParallelEnv`` with a batched tensor interface)."""

from ._data import simulate_multimodal, simulate_spatial_tissue
from ._env import RewardWeights, TripConfigError, TripObs, TripParallelEnv, fit_decoder, resolve_device
from ._neighbours import knn_graph
from ._preprocess import Modality, fit_modality, infer_kind
from ._render import plot_positions
from ._tasks import make_imputation_env, make_integration_env, make_trip_env

__all__ = [
    "Modality",
    "RewardWeights",
    "TripConfigError",
    "TripObs",
    "TripParallelEnv",
    "fit_decoder",
    "fit_modality",
    "infer_kind",
    "knn_graph",
    "make_imputation_env",
    "make_integration_env",
    "make_trip_env",
    "plot_positions",
    "resolve_device",
    "simulate_multimodal",
    "simulate_spatial_tissue",
]
