"""Target-state reward models, batched in torch over B populations of N cells (no gymnasium here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch

from cellgym.predictors.base import DataSpecError, GeneMismatchError, RewardModel

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CentroidReward", "ClassifierReward", "EnergyDistanceReward"]


def _as_cells(x: object, what: str) -> torch.Tensor:
    """``x`` (M, G) as a float32 tensor; clear errors for wrong rank, emptiness or non-finite values."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if t.ndim != 2 or t.shape[0] == 0:
        raise DataSpecError(f"{what}: expected a non-empty (cells, genes) matrix, got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise DataSpecError(f"{what} holds non-finite values; pass finite log1p expression.")
    return t


class _TargetReward(RewardModel):
    """Shared checks: B populations (B, N, G) with the G genes of the target."""

    def __init__(self, n_genes: int) -> None:
        self.n_genes = n_genes

    def _check(self, cells: torch.Tensor) -> torch.Tensor:
        if cells.ndim != 3 or cells.shape[-1] != self.n_genes:
            raise GeneMismatchError(
                f"{type(self).__name__}.distance: expected cells of shape (B, N, {self.n_genes}), got "
                f"{tuple(cells.shape)}. Pass B populations of N cells with the target's genes."
            )
        return cells.float()


class EnergyDistanceReward(_TargetReward):
    """Energy distance (Székely & Rizzo 2013) between each population and a set of target cells.

    ``D(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with Euclidean norms and V-statistics (so a
    population equal to the target has distance 0); one ``cdist`` per term covers all B populations.

    Parameters
    ----------
    target
        Target cells (M, G) float32, log1p expression (or any embedding the populations share).
    """

    name: ClassVar[str] = "target.energy"

    def __init__(self, target: np.ndarray | torch.Tensor) -> None:
        self.target = _as_cells(target, "EnergyDistanceReward target")
        super().__init__(self.target.shape[1])
        self._yy = torch.cdist(self.target, self.target).mean()

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Energy distance (B,) float32 of populations ``cells`` (B, N, G) to the target cells."""
        x = self._check(cells)
        y = self.target.to(x.device).expand(x.shape[0], -1, -1)
        xy = torch.cdist(x, y).mean(dim=(1, 2))
        xx = torch.cdist(x, x).mean(dim=(1, 2))
        return (2 * xy - xx - self._yy.to(x.device)).clamp_min(0.0)


class CentroidReward(_TargetReward):
    """Distance between each population's centroid and the target centroid.

    Parameters
    ----------
    target
        Target cells (M, G) float32; their mean is the goal.
    metric
        ``"euclidean"`` (norm of the difference, in expression units) or ``"cosine"`` (1 - cosine
        similarity of the centroids, in [0, 2]).
    """

    name: ClassVar[str] = "target.centroid"

    def __init__(self, target: np.ndarray | torch.Tensor, metric: Literal["euclidean", "cosine"] = "euclidean") -> None:
        if metric not in ("euclidean", "cosine"):
            raise DataSpecError(f"CentroidReward metric: expected 'euclidean' or 'cosine', got {metric!r}.")
        t = _as_cells(target, "CentroidReward target")
        super().__init__(t.shape[1])
        self.metric = metric
        self.centroid = t.mean(dim=0)

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Centroid distance (B,) float32 of populations ``cells`` (B, N, G)."""
        mean = self._check(cells).mean(dim=1)
        goal = self.centroid.to(mean.device)
        if self.metric == "euclidean":
            return torch.linalg.vector_norm(mean - goal, dim=1)
        return 1.0 - torch.nn.functional.cosine_similarity(mean, goal.expand_as(mean), dim=1, eps=1e-8)


class ClassifierReward(_TargetReward):
    """``1 - mean P(target label | cell)`` under a multinomial logistic regression fitted on labelled cells.

    The classifier (standardised genes, L2 penalty ``l2``) is fitted once at construction by full-batch
    L-BFGS, which is deterministic on CPU.

    Parameters
    ----------
    cells
        Labelled cells (M, G) float32.
    labels
        Their labels (M,), at least two distinct.
    target
        The goal label (one of ``labels``).
    l2
        Ridge penalty on the weights.
    """

    name: ClassVar[str] = "target.classifier"

    def __init__(
        self, cells: np.ndarray | torch.Tensor, labels: Sequence[str], target: str, *, l2: float = 1.0e-3
    ) -> None:
        x = _as_cells(cells, "ClassifierReward cells")
        labels = np.asarray(labels).astype(str)
        if labels.shape != (x.shape[0],):
            raise DataSpecError(f"ClassifierReward: expected {x.shape[0]} labels (one per cell), got shape {labels.shape}.")
        self.classes = sorted(set(labels.tolist()))
        if str(target) not in self.classes or len(self.classes) < 2:
            raise DataSpecError(
                f"ClassifierReward target {target!r}: expected one of at least two labels, got labels {self.classes}."
            )
        super().__init__(x.shape[1])
        self.target_index = self.classes.index(str(target))
        y = torch.as_tensor(np.searchsorted(self.classes, labels))
        self.mu = x.mean(0)
        self.sd = x.std(0).clamp_min(1e-3)
        z = (x - self.mu) / self.sd
        self.weight = torch.zeros(x.shape[1], len(self.classes), requires_grad=True)
        self.bias = torch.zeros(len(self.classes), requires_grad=True)
        opt = torch.optim.LBFGS([self.weight, self.bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ self.weight + self.bias, y) + l2 * self.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight = self.weight.detach()
        self.bias = self.bias.detach()

    @torch.no_grad()
    def probability(self, cells: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, N, C) of cells (B, N, G); columns follow :attr:`classes`."""
        z = (self._check(cells) - self.mu) / self.sd
        return torch.softmax(z @ self.weight + self.bias, dim=-1)

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """``1 - mean_N P(target | cell)`` (B,) float32 of populations ``cells`` (B, N, G)."""
        return 1.0 - self.probability(cells)[..., self.target_index].mean(dim=1)
