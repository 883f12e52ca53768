"""What environments consume: a predictor as a :class:`Transition`, a goal as a :class:`RewardModel`."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar, Literal

import torch

from ._predictor import Predictor

__all__ = ["RewardModel", "Transition"]


class Transition:
    """A predictor as an environment's transition function over B populations of N cells.

    Parameters
    ----------
    predictor
        A fitted :class:`Predictor`.
    context
        The context (cell type / line) of the populations; default: the predictor's first. Or a function
        mapping source cells (M, G) to their context indices (M,), for populations that mix contexts.
    mode
        ``"mean"`` (the predictor's expectation) or ``"sample"`` (draws; uses ``generator``).

    Notes
    -----
    A *response model* (``predictor.dynamic`` False) maps control cells to perturbed cells, so the next
    state is predicted from the episode's ``source`` cells under every perturbation in force: errors do
    not compound and a combination is predicted as a combination. A *simulator* (``dynamic`` True)
    evolves the ``cells`` it is given under the perturbations in force, so history matters.
    """

    def __init__(self, predictor: Predictor, *, context: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 mode: Literal["mean", "sample"] = "mean") -> None:
        self.predictor = predictor
        self.mode = mode
        self.context_of = context if callable(context) else None
        self.context_index = 0 if context is None or callable(context) else int(predictor.encode_contexts([context])[0])

    @property
    def perturbations(self) -> list[str]:
        """The vocabulary (P) that ``applied`` rows index."""
        return self.predictor.perturbations

    @property
    def genes(self) -> list[str]:
        """Gene names (G) of the cells."""
        return self.predictor.genes

    @torch.no_grad()
    def __call__(
        self,
        cells: torch.Tensor,
        applied: torch.Tensor,
        source: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Next cells (B, N, G) given current ``cells`` (B, N, G) and the multi-hot ``applied`` (B, P).

        One batched predictor call covers all B x N cells.
        """
        base = cells if (self.predictor.dynamic or source is None) else source
        b, n, g = base.shape
        predict_sets = getattr(self.predictor, "predict_sets", None)  # set models (state.transition): one set each
        if predict_sets is not None:
            ctx = torch.full((b,), self.context_index, dtype=torch.long, device=base.device)
            return predict_sets(base, applied.to(base.dtype), ctx)
        flat = base.reshape(b * n, g)
        pert = applied.to(flat.dtype).repeat_interleave(n, dim=0)
        if self.context_of is not None and source is not None:  # each cell's own context, from its source cell
            ctx = self.context_of(source.reshape(b * n, g)).to(flat.device)
        else:
            ctx = torch.full((b * n,), self.context_index, dtype=torch.long, device=flat.device)
        if self.mode == "sample":
            out = self.predictor.sample_batch(flat, pert, ctx, generator=generator)
        else:
            out = self.predictor.predict_batch(flat, pert, ctx)
        return out.reshape(b, n, g)


class RewardModel(abc.ABC):
    """How far B populations are from a goal: ``distance(cells (B, N, G)) -> (B,)``, 0 at the goal.

    Environments use ``-distance`` as the potential of potential-based reward shaping (Ng, Harada &
    Russell 1999), so the reward of a step is the decrease of the distance.
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Distance (B,) float32 of each population (B, N, G) to the goal; lower is closer."""

    def __call__(self, cells: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`distance`."""
        return self.distance(cells)
