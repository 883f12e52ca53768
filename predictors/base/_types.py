"""Structured values passed between predictors, the fit loop and their callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class LossOutput:
    """What a module's ``loss`` returns: the scalar to minimise and its named parts (for logging)."""

    loss: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    n_obs: int = 0


@dataclass
class FitReport:
    """What ``Predictor.fit`` returns: per-epoch means of every logged quantity."""

    epochs: int
    seconds: float
    n_obs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept
    stopped_early: bool = False

    def last(self, key: str = "loss") -> float:
        """The final epoch's value of ``key``."""
        return self.history[key][-1]


@dataclass
class FitData:
    """An AnnData turned into aligned arrays, once, for any predictor's ``_fit``.

    Shapes: N cells, G genes, P single perturbations, C contexts.
    """

    x: np.ndarray  # (N, G) float32 log1p-normalised expression
    counts: np.ndarray | None  # (N, G) float32 raw counts, or None
    pert: np.ndarray  # (N, P) float32 multi-hot over Predictor.perturbations (all zero = control)
    ctx: np.ndarray  # (N,) int64 index into Predictor.contexts
    labels: np.ndarray  # (N,) str perturbation label as written in the data ("A+B", "control")
    is_control: np.ndarray  # (N,) bool
