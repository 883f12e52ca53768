"""``ensemble``: K fitted members of any predictor family; member mean, disagreement and its uncertainty."""

from ._model import EnsembleModule, EnsemblePredictor

__all__ = ["EnsembleModule", "EnsemblePredictor"]
