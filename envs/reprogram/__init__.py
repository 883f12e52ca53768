"""Single-agent reprogramming worlds (``CellEnv-Reprogram-*``) and their native vector env."""

from ._core import PopulationState, ReprogramDynamics, StepOutcome
from ._env import ReprogramEnv
from ._vector import ReprogramVectorEnv
from ._worlds import (
    HSC_FATES,
    HSC_SCREEN_SPEC,
    HSC_VOCABULARY,
    World,
    hsc_screen,
    resolve_predictor,
    truth_kwargs,
)

__all__ = [
    "HSC_FATES",
    "HSC_SCREEN_SPEC",
    "HSC_VOCABULARY",
    "PopulationState",
    "ReprogramDynamics",
    "ReprogramEnv",
    "ReprogramVectorEnv",
    "StepOutcome",
    "World",
    "hsc_screen",
    "resolve_predictor",
    "truth_kwargs",
]
