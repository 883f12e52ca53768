"""Torch modules of the baselines: their whole state is buffers, so generic save/load carries it.

Shapes: B cells in a batch, G genes, P single perturbations, C contexts, K principal components.
Every ``predict_batch`` takes ``x`` (B, G) float32 log1p control cells, ``pert`` (B, P) multi-hot,
``ctx`` (B,) int64 and returns ``x + delta`` (B, G); a row of ``pert`` that is all zero (control) gets
``delta = 0``. Work is batched over cells; the only Python loop is over the (few) contexts present.
"""

from __future__ import annotations

import torch

from ..base import PredictorModule

__all__ = ["AdditiveBaselineModule", "LinearBaselineModule", "MeanBaselineModule", "NoChangeBaselineModule"]


def _by_context(ctx: torch.Tensor, fn, out: torch.Tensor) -> torch.Tensor:
    """Fill ``out[rows]`` with ``fn(rows, c)`` for each context ``c`` present in ``ctx``."""
    for c in torch.unique(ctx).tolist():
        rows = ctx == c
        out[rows] = fn(rows, c)
    return out


class NoChangeBaselineModule(PredictorModule):
    """Predicts the input cells unchanged (delta 0); holds no state."""

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, G), as a new tensor."""
        return x.clone()


class MeanBaselineModule(PredictorModule):
    """Adds the context's mean training perturbation effect to every perturbed cell.

    Buffers
    -------
    mean_effect
        (C, G) float32 mean delta of the training perturbations of each context.
    """

    def __init__(self, n_contexts: int, n_genes: int) -> None:
        super().__init__()
        self.register_buffer("mean_effect", torch.zeros(n_contexts, n_genes))

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """``x + 1[any perturbation] * mean_effect[ctx]``, shape (B, G)."""
        perturbed = (pert.sum(1, keepdim=True) > 0).to(x.dtype)
        return x + perturbed * self.mean_effect[ctx]


class AdditiveBaselineModule(PredictorModule):
    """Adds the sum of the single-perturbation effects of the context (combinations are additive).

    Buffers
    -------
    effects
        (C, P, G) float32 delta of each single perturbation in each context.
    """

    def __init__(self, n_contexts: int, n_perturbations: int, n_genes: int) -> None:
        super().__init__()
        self.register_buffer("effects", torch.zeros(n_contexts, n_perturbations, n_genes))

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """``x + pert @ effects[ctx]``, shape (B, G)."""
        delta = _by_context(ctx, lambda rows, c: pert[rows] @ self.effects[c], torch.zeros_like(x))
        return x + delta


class LinearBaselineModule(PredictorModule):
    """``delta = G W pᵀ + b`` per context (Ahlmann-Eltze, Huber & Anders 2025, Nat. Methods).

    Buffers
    -------
    gene_embedding
        (C, G, K) float32, ``G``: the top-K principal components of the training pseudobulk.
    pert_embedding
        (C, P, D) float32, ``P``: each single perturbation's embedding (its design: gene rows of ``G``,
        indicators, or both side by side; see :class:`~cellgym.predictors.baselines.LinearBaseline`).
    weights
        (C, K, D) float32, ``W`` from the two-sided ridge regression.
    offset
        (C, G) float32, ``b``: the mean training delta (row means of ``Y``).

    A combination's embedding is the sum of its singles' rows; a control row gets delta 0.
    """

    def __init__(self, n_contexts: int, n_perturbations: int, n_genes: int, n_pcs: int, n_dims: int | None = None) -> None:
        super().__init__()
        n_dims = n_pcs if n_dims is None else n_dims
        self.register_buffer("gene_embedding", torch.zeros(n_contexts, n_genes, n_pcs))
        self.register_buffer("pert_embedding", torch.zeros(n_contexts, n_perturbations, n_dims))
        self.register_buffer("weights", torch.zeros(n_contexts, n_pcs, n_dims))
        self.register_buffer("offset", torch.zeros(n_contexts, n_genes))

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """``x + 1[any perturbation] * b + G W (pert P)ᵀ`` per context, shape (B, G)."""

        def delta(rows: torch.Tensor, c: int) -> torch.Tensor:
            p = pert[rows]
            z = p @ self.pert_embedding[c]  # (b, D) perturbation embedding
            linear = (z @ self.weights[c].T) @ self.gene_embedding[c].T  # (b, G)
            return linear + (p.sum(1, keepdim=True) > 0).to(x.dtype) * self.offset[c]

        return x + _by_context(ctx, delta, torch.zeros_like(x))
