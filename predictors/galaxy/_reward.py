"""``galaxy.embedding``: distance to goal cells in the shared ``X_galaxy`` space, as an environment's reward."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from ..base import DataSpecError, GeneMismatchError, Predictor, RewardModel
from ._model import GalaxyPredictor

__all__ = ["GalaxyEmbeddingReward"]


class GalaxyEmbeddingReward(RewardModel):
    """Distance between a population's centroid and the goal cells' centroid in ``X_galaxy``.

    Populations are cells of ``species`` (default the model's target species), log1p expression over
    its genes; the goal cells may come from any species the model knows (``goal_species``), which is the
    point of a shared space: e.g. reach a mouse cell type's position with human cells.

    Parameters
    ----------
    predictor
        A fitted ``galaxy`` predictor or the folder of a saved one.
    target
        Goal cells (M, G_goal_species) log1p expression.
    species
        Species of the populations that are scored (default: the model's target species).
    goal_species
        Species of ``target`` (default: ``species``).
    metric
        ``"euclidean"`` or ``"cosine"`` (1 - cosine similarity of the centroids).
    """

    name: ClassVar[str] = "galaxy.embedding"

    def __init__(self, predictor: GalaxyPredictor | str | Path, target: np.ndarray | torch.Tensor, *, species: str | None = None,
                 goal_species: str | None = None, metric: Literal["euclidean", "cosine"] = "euclidean") -> None:
        if not isinstance(predictor, Predictor):
            predictor = Predictor.load(predictor)
        if not isinstance(predictor, GalaxyPredictor):
            raise DataSpecError(f"galaxy.embedding needs a fitted galaxy predictor, got {predictor.name!r}.")
        if metric not in ("euclidean", "cosine"):
            raise DataSpecError(f"galaxy.embedding metric: expected 'euclidean' or 'cosine', got {metric!r}.")
        predictor._check_fitted()
        names = predictor.config["species"]
        self.species = species or predictor.config["target"]
        goal_species = goal_species or self.species
        for s in (self.species, goal_species):
            if s not in names:
                raise DataSpecError(f"galaxy.embedding: unknown species {s!r}; the model knows {names}.")
        self.predictor, self.metric = predictor, metric
        self.index = names.index(self.species)
        self.n_genes = len(predictor.species_genes[self.species])
        goal = torch.as_tensor(np.asarray(target, dtype=np.float32))
        want = len(predictor.species_genes[goal_species])
        if goal.ndim != 2 or goal.shape[1] != want or goal.shape[0] == 0:
            raise GeneMismatchError(f"galaxy.embedding target: expected ({'M'}, {want}) cells of {goal_species}, got {tuple(goal.shape)}.")
        with torch.no_grad():
            self.goal = predictor.module.embed_cells(goal, names.index(goal_species)).mean(0)

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Centroid distance (B,) in ``X_galaxy`` of populations ``cells`` (B, N, G_species)."""
        if cells.ndim != 3 or cells.shape[-1] != self.n_genes:
            raise GeneMismatchError(f"galaxy.embedding: expected cells (B, N, {self.n_genes}) of {self.species}, got {tuple(cells.shape)}.")
        b, n, g = cells.shape
        z = self.predictor.module.embed_cells(cells.reshape(b * n, g).float(), self.index).reshape(b, n, -1).mean(1)
        goal = self.goal.to(z.device).expand_as(z)
        if self.metric == "euclidean":
            return torch.linalg.vector_norm(z - goal, dim=1)
        return 1.0 - torch.nn.functional.cosine_similarity(z, goal, dim=1, eps=1e-8)
