"""Ground-truth gene-network simulators: Boolean networks, BoolODE-style ODE/SDE, SERGIO; screens.

Exact transitions with nothing to fit — the reference every learned predictor is checked against.
"""

from ._boolean import Attractor, BooleanNetwork, model_path
from ._model import BooleanModule, BooleanPredictor
from ._rules import RuleSyntaxError
from ._screen import simulate_screen
from ._sergio import SergioNetwork, technical_noise
from ._sergio_model import SergioModule, SergioPredictor

__all__ = [
    "Attractor",
    "BooleanModule",
    "BooleanNetwork",
    "BooleanPredictor",
    "RuleSyntaxError",
    "SergioModule",
    "SergioNetwork",
    "SergioPredictor",
    "model_path",
    "simulate_screen",
    "technical_noise",
]
