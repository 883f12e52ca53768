"""``gem1.classifier``: a GEM-1 model's biological latent classifier as an environment's reward model."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from cellgym.predictors.base import DataSpecError, Predictor, RewardModel

from ._model import Gem1Base

__all__ = ["Gem1ClassifierReward"]


class Gem1ClassifierReward(RewardModel):
    """Distance = 1 - mean probability of the goal label under GEM-1's biological classifier.

    Each cell (log1p expression) is encoded to its biological latent (posterior mean) and classified
    by the model's linear classifier of ``column`` (GEM-1, Synthesize Bio, bioRxiv 2025.09.08.674753).
    The distance is 0 when every cell of a population is classified as ``goal`` with certainty.

    Parameters
    ----------
    predictor
        A fitted GEM-1 predictor, or the folder of a saved one.
    goal
        The goal label (a category of ``column``).
    column
        The biological metadata column whose classifier is used; default the first one.
    """

    name: ClassVar[str] = "gem1.classifier"

    def __init__(self, predictor: Gem1Base | str | Path, goal: str, column: str | None = None) -> None:
        if not isinstance(predictor, Predictor):
            predictor = Predictor.load(predictor)
        if not isinstance(predictor, Gem1Base):
            raise DataSpecError(f"gem1.classifier needs a GEM-1 predictor (gem1.bulk/nb/sc), got {predictor.name!r}.")
        predictor._check_fitted()
        columns = list(predictor.vocab.categorical["biological"])
        if not columns:
            raise DataSpecError(
                f"the {predictor.name} model has no biological metadata column, so no classifier to reward with. "
                "Fit it with groups={'biological': [<cell type column>]} (or a DataSpec context_key)."
            )
        column = column or columns[0]
        if column not in columns:
            raise DataSpecError(f"unknown biological column {column!r}; the model classifies {columns}.")
        classes = predictor.vocab.categorical["biological"][column]
        if goal not in classes:
            raise DataSpecError(f"unknown goal label {goal!r} for column {column!r}; the classifier knows {classes}.")
        self.predictor = predictor
        self.column_index = columns.index(column)
        self.goal_index = classes.index(goal)
        self.goal, self.column = goal, column

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """``1 - mean_n p(goal | cell_n)`` for populations ``cells`` (B, N, G) log1p; returns (B,)."""
        b, n, g = cells.shape
        module = self.predictor.module
        z_bio = module.posterior(cells.reshape(b * n, g).float())[1].mean
        p = module.classify_biological(z_bio)[self.column_index][:, self.goal_index]
        return 1.0 - p.reshape(b, n).mean(1)
