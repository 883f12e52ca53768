"""``cellgen.critic``: a fitted CellGen critic as a realism reward model (keeps an agent's cells on the data manifold)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ..base import DataSpecError, GeneMismatchError, Predictor, RewardModel
from ._model import CellGen

__all__ = ["CellGenCriticReward"]


class CellGenCriticReward(RewardModel):
    """Distance = how far below real cells the critic scores a population, in units of real cells' spread.

    ``distance = relu(mu - mean_n D(cell_n, c)) / sigma``, where ``D`` is CellGen's critic (Wasserstein
    score, higher = more realistic) under condition ``c`` and ``mu``, ``sigma`` are the mean and std of
    its scores of real training cells of ``c`` (stored when fitting). A population that looks as real as
    the training cells of ``c`` has distance 0; use it as a penalty next to a goal distance.

    Parameters
    ----------
    predictor
        A fitted ``cellgen`` predictor or the folder of a saved one.
    condition
        The condition the cells are judged as (default the control label: "does this look like a real
        unperturbed cell"); any label the predictor knows, e.g. ``"A"`` or ``"A+B"``.
    reference
        Real cells (M, G) of ``condition`` to calibrate ``mu`` and ``sigma`` on, for conditions without
        training cells (e.g. a combination never measured).
    """

    name: ClassVar[str] = "cellgen.critic"

    def __init__(self, predictor: CellGen | str | Path, condition: str | None = None, reference: torch.Tensor | None = None) -> None:
        if not isinstance(predictor, Predictor):
            predictor = Predictor.load(predictor)
        if not isinstance(predictor, CellGen):
            raise DataSpecError(f"cellgen.critic needs a cellgen predictor, got {predictor.name!r}.")
        predictor._check_fitted()
        self.predictor = predictor
        self.condition = predictor.spec.control if condition is None else str(condition)
        predictor.encode_perturbations([self.condition])  # unknown names fail here, with close matches
        key = self.condition if not predictor.trajectory else f"{self.condition}@{predictor.times[0]:g}->{predictor.times[1]:g}"
        if reference is not None:
            scores = predictor.critic_score(torch.as_tensor(reference, dtype=torch.float32), self.condition)
            self.mu, self.sigma = float(scores.mean()), float(scores.std()) if scores.numel() > 1 else 1.0
        elif key in predictor.score_stats:
            self.mu, self.sigma = predictor.score_stats[key]
        else:
            raise DataSpecError(
                f"cellgen.critic: no real training cells of condition {self.condition!r} to calibrate on (known: "
                f"{sorted(predictor.score_stats)[:10]}); pass reference=<real cells of it>."
            )
        self.sigma = max(self.sigma, 1e-6)

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Realism distance (B,) of populations ``cells`` (B, N, G) log1p; 0 when as real as training cells."""
        if cells.ndim != 3 or cells.shape[-1] != len(self.predictor.genes):
            raise GeneMismatchError(
                f"cellgen.critic: expected cells of shape (B, N, {len(self.predictor.genes)}), got {tuple(cells.shape)}."
            )
        b, n, g = cells.shape
        scores = self.predictor.critic_score(cells.reshape(b * n, g).float(), self.condition).reshape(b, n)
        return torch.relu(self.mu - scores.mean(1)) / self.sigma
