"""cellgym.predictors — the predictor contract, data contract, metrics, and every predictor family.

Importing this package never imports gymnasium, pettingzoo or stable-baselines3.
"""

from .base import *  # noqa: F403
from .base import __all__ as _base_all

__all__ = list(_base_all)
