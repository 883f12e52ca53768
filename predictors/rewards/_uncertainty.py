"""``uncertainty.penalised``: a goal reward minus lambda times the ensemble's disagreement of each step."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cellgym.predictors.base import DataSpecError, RewardModel

__all__ = ["UncertaintyPenalisedReward"]


class UncertaintyPenalisedReward(RewardModel):
    """Any goal reward, with a per-step penalty ``lam * disagreement`` of the predicted next population.

    The distance (the potential the environment differences) is the goal's; the environment subtracts
    :meth:`penalty` from each step's reward, where the disagreement of a population is the mean over
    its cells of the ensemble members' spread (std over members, mean over genes) in the step's one
    batched transition call (:attr:`EnsemblePredictor.last_disagreement
    <cellgym.predictors.ensemble.EnsemblePredictor.last_disagreement>`). As in MOPO (Yu et al. 2020,
    NeurIPS), an agent is paid less where its learned world is guessing.

    Parameters
    ----------
    goal
        The goal's reward model (e.g. ``target.energy``).
    predictor
        The ensemble that is the environment's transition (its members' disagreement is read).
    lam
        λ >= 0; 0 gives the goal reward unchanged (the disagreement is still reported).
    """

    name: ClassVar[str] = "uncertainty.penalised"

    def __init__(self, goal: RewardModel, predictor: Any, lam: float = 1.0) -> None:
        if not isinstance(goal, RewardModel):
            raise DataSpecError(f"uncertainty.penalised needs a goal RewardModel, got {type(goal).__name__}.")
        if not hasattr(predictor, "last_disagreement"):
            raise DataSpecError(
                f"uncertainty.penalised needs an ensemble predictor (with member disagreement), got {type(predictor).__name__}; "
                "use make_predictor('ensemble', ...) as the world's transition."
            )
        if not lam >= 0:
            raise DataSpecError(f"uncertainty.penalised needs lam >= 0, got {lam}.")
        self.goal, self.predictor, self.lam = goal, predictor, float(lam)

    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """The goal's distance (B,) of populations ``cells`` (B, N, G)."""
        return self.goal.distance(cells)

    def disagreement(self, n_populations: int) -> torch.Tensor:
        """(n_populations,) disagreement of the populations of the predictor's last batched call."""
        last = self.predictor.last_disagreement
        if last is None:
            raise DataSpecError("uncertainty.penalised: the ensemble has made no prediction yet (no transition call).")
        return last.reshape(n_populations, -1).mean(1)

    def penalty(self, n_populations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lam * disagreement, disagreement)``, each (n_populations,), of the last transition call."""
        d = self.disagreement(n_populations)
        return self.lam * d, d
