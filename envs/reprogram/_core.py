"""The one batched reprogramming step over B populations, shared by the single and the vector env."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ._worlds import World

__all__ = ["PopulationState", "ReprogramDynamics", "StepOutcome"]


@dataclass(frozen=True)
class PopulationState:
    """B populations in flight; every field has the batch dimension first.

    Attributes
    ----------
    cells
        Tensor (B, N, G) float32, the current cells.
    source
        Tensor (B, N, G) float32, the episode's starting cells (response models predict from these).
    applied
        Tensor (B, P), the perturbations in force (they accumulate): bool, or float doses in [0, 1]
        with ``action_mode="dose"``.
    distance
        Tensor (B,) float32, the reward model's distance of ``cells`` to the goal.
    """

    cells: torch.Tensor
    source: torch.Tensor
    applied: torch.Tensor
    distance: torch.Tensor

    def __len__(self) -> int:
        return self.cells.shape[0]

    def take(self, index: torch.Tensor | np.ndarray | list[int]) -> PopulationState:
        """The populations at ``index`` (a copy of the rows, in that order)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return PopulationState(self.cells[idx], self.source[idx], self.applied[idx], self.distance[idx])

    def put(self, index: torch.Tensor | np.ndarray | list[int], other: PopulationState) -> PopulationState:
        """A copy with rows ``index`` replaced by ``other``'s rows."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        out = [t.clone() for t in (self.cells, self.source, self.applied, self.distance)]
        for t, o in zip(out, (other.cells, other.source, other.applied, other.distance), strict=True):
            t[idx] = o
        return PopulationState(*out)


@dataclass(frozen=True)
class StepOutcome:
    """What one batched step returns: the next state and per-population reward terms (all (B,))."""

    state: PopulationState
    reward: np.ndarray  # float64
    success: np.ndarray  # bool
    stopped: np.ndarray  # bool
    n_new: np.ndarray  # int64, perturbations newly applied (given a dose) this step
    cost: np.ndarray  # float64, the cost paid this step (cost x dose)
    dose: np.ndarray  # float64, the dose given this step (a newly applied discrete perturbation is a dose of 1)


class ReprogramDynamics:
    """Transition, reward and observation of a reprogramming world, for B populations at once.

    Parameters
    ----------
    world
        The task: transition, reward model, action vocabulary, starting populations, goal.
    n_components
        Size k of the fixed PCA embedding (fitted once on the world's reference cells).
    cost
        Reward cost per newly applied perturbation.
    success_bonus
        Reward added on the step that reaches the goal.
    threshold
        Success when the distance is at most this (default: the world's).
    dose
        Perturbations are doses in [0, 1] (``applied`` float; :meth:`step_dose`) instead of on/off.

    Attributes
    ----------
    max_applied
        None, or the size of a complete perturbation set: a population that has this many applied ends its
        episode as if it had stopped (the inverse-design tasks set it to their ``max_perturbations``).
    """

    def __init__(self, world: World, *, n_components: int, cost: float, success_bonus: float, threshold: float | None,
                 dose: bool = False) -> None:
        self.world = world
        self.dose = bool(dose)
        self.cost = float(cost)
        self.success_bonus = float(success_bonus)
        self.threshold = float(world.threshold if threshold is None else threshold)
        self.max_applied: int | None = None
        self.n_perturbations = len(world.perturbations)
        # (P, P_predictor) map from the task's vocabulary to the predictor's multi-hot columns
        vocab = {p: i for i, p in enumerate(world.transition.perturbations)}
        self._to_predictor = torch.zeros(self.n_perturbations, len(vocab))
        for i, name in enumerate(world.perturbations):
            for single in name.split("+"):
                self._to_predictor[i, vocab[single]] = 1.0
        ref = world.reference.float()
        self.mean = ref.mean(0)
        _, _, vh = torch.linalg.svd(ref - self.mean, full_matrices=False)
        k = min(n_components, vh.shape[0])
        comps = torch.zeros(ref.shape[1], n_components)
        comps[:, :k] = vh[:k].T
        self.components = comps  # (G, k): unused columns stay zero so the observation size is fixed
        self.n_components = n_components
        goal = self.embed(world.target.float()[None])
        self.goal_summary = goal[0]
        self.obs_size = 4 * n_components + self.n_perturbations + 1
        # finite bounds: PCA parts within 10x the farthest reference cell (clipped there), the rest in [0, 1]
        bound = 10.0 * float(torch.linalg.vector_norm(ref - self.mean, dim=1).max()) + 1.0
        self.obs_high = np.full(self.obs_size, bound, dtype=np.float32)
        self.obs_high[4 * n_components :] = 1.0
        self.obs_low = np.zeros(self.obs_size, dtype=np.float32)
        self.obs_low[: 4 * n_components] = -bound

    # ----------------------------------------------------------------------------------- observation
    def embed(self, cells: torch.Tensor) -> torch.Tensor:
        """Mean and std (B, 2k) of the populations ``cells`` (B, N, G) in the fixed PCA embedding."""
        z = (cells - self.mean) @ self.components
        return torch.cat([z.mean(1), z.std(1, unbiased=False)], dim=1)

    def observe(self, state: PopulationState, budget_left: np.ndarray) -> np.ndarray:
        """Observations (B, 4k + P + 1) float32: population summary, goal summary, applied, budget left."""
        b = len(state)
        obs = torch.cat(
            [
                self.embed(state.cells),
                self.goal_summary.expand(b, -1),
                state.applied.float(),
                torch.as_tensor(budget_left, dtype=torch.float32).reshape(b, 1),
            ],
            dim=1,
        )
        return np.clip(obs.numpy(), self.obs_low, self.obs_high).astype(np.float32, copy=False)

    # ------------------------------------------------------------------------------------------ state
    def initial(self, source: torch.Tensor) -> PopulationState:
        """States (B) of starting populations ``source`` (B, N, G): nothing applied yet."""
        applied = torch.zeros(source.shape[0], self.n_perturbations, dtype=torch.float32 if self.dose else torch.bool)
        return PopulationState(source, source, applied, self.world.reward.distance(source).float())

    def step(self, state: PopulationState, chosen: torch.Tensor, stop: torch.Tensor) -> StepOutcome:
        """One step of every population: apply ``chosen`` (B, P) bool unless ``stop`` (B,) bool.

        Perturbations accumulate; the populations that did not stop go through ONE batched
        transition call under everything in force, then the reward model scores them.
        Reward: ``distance_before - distance_after - cost * n_new + success_bonus * success``.
        """
        new = chosen & ~state.applied & ~stop[:, None]
        applied = state.applied | new
        go = torch.nonzero(~stop).flatten()
        cells, distance = state.cells, state.distance
        if go.numel():
            pert = applied[go].float() @ self._to_predictor
            moved = self.world.transition(state.cells[go], pert.clamp_max(1.0), state.source[go])
            cells = cells.clone()
            cells[go] = moved.float()
            distance = distance.clone()
            distance[go] = self.world.reward.distance(cells[go]).float()
        n_new = new.sum(1).numpy().astype(np.int64)
        success = ((distance <= self.threshold) & ~stop).numpy()
        reward = (state.distance - distance).double().numpy() - self.cost * n_new + self.success_bonus * success
        if hasattr(self.world.reward, "penalty"):  # uncertainty.penalised: - lam * disagreement of this step
            penalty, disagreement = np.zeros(len(state)), np.zeros(len(state))
            if go.numel():
                pen, dis = self.world.reward.penalty(go.numel())
                penalty[go.numpy()], disagreement[go.numpy()] = pen.double().numpy(), dis.double().numpy()
            reward = reward - penalty
            self.last_disagreement = disagreement
        nxt = replace(state, cells=cells, applied=applied, distance=distance)
        stopped = stop.numpy().copy()
        if self.max_applied is not None:  # a complete set ends the episode
            stopped |= applied.sum(1).numpy() >= self.max_applied
        return StepOutcome(nxt, reward, success, stopped, n_new, self.cost * n_new, n_new.astype(np.float64))

    def step_dose(self, state: PopulationState, doses: torch.Tensor) -> StepOutcome:
        """One step of every population under ``doses`` (B, P) float in [0, 1] (``action_mode="dose"``).

        The doses are in force for this step (a treatment schedule: the next action replaces them); every
        population goes through ONE batched transition call under them. Reward:
        ``distance_before - distance_after - cost * sum(doses) + success_bonus * success``, so ``cost`` is the
        price of one unit of dose for one step (a full knockout or overexpression costs what one discrete
        perturbation costs). ``n_new`` counts the perturbations given a dose this step.
        """
        applied = doses.float().clamp(0.0, 1.0)
        given = applied.sum(1).double().numpy()
        pert = (applied @ self._to_predictor).clamp_max(1.0)
        cells = self.world.transition(state.cells, pert, state.source).float()
        distance = self.world.reward.distance(cells).float()
        success = (distance <= self.threshold).numpy()
        reward = (state.distance - distance).double().numpy() - self.cost * given + self.success_bonus * success
        n_new = (applied > 0).sum(1).numpy().astype(np.int64)
        nxt = PopulationState(cells, state.source, applied, distance)
        return StepOutcome(nxt, reward, success, np.zeros(len(state), dtype=bool), n_new, self.cost * given, given)

    def masks(self, state: PopulationState) -> np.ndarray:
        """Valid actions (B, P + 1) bool: perturbations not yet applied, and stop (always valid)."""
        m = np.ones((len(state), self.n_perturbations + 1), dtype=bool)
        m[:, :-1] = ~state.applied.bool().numpy() if not self.dose else state.applied.numpy() < 1.0
        return m
