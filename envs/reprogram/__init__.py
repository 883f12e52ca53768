"""Single-agent reprogramming worlds (``CellEnv-Reprogram-*``) and their native vector env."""

from ._core import PopulationState, ReprogramDynamics, StepOutcome
from ._env import ReprogramEnv
from ._vector import ReprogramVectorEnv
from ._worlds import HSC_FATES, HSC_VOCABULARY, World, resolve_predictor

__all__ = [
    "HSC_FATES",
    "HSC_VOCABULARY",
    "PopulationState",
    "ReprogramDynamics",
    "ReprogramEnv",
    "ReprogramVectorEnv",
    "StepOutcome",
    "World",
    "resolve_predictor",
]
