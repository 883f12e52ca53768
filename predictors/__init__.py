"""cellgym.predictors — the predictor contract, data contract, metrics, and every predictor family.

Importing this package never imports gymnasium, pettingzoo or stable-baselines3, nor any predictor
family (``cellgym.predictors.baselines``, ``.gem1``, ... load when used or made through the registry).
"""

from . import metrics
from .base import *  # noqa: F403
from .base import __all__ as _base_all
from .evaluation import EvaluationResult, evaluate

__all__ = [*_base_all, "EvaluationResult", "evaluate", "metrics"]
