"""Single-agent cellular reprogramming: pick perturbations that move a cell population to a goal state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from cellgym.envs.errors import InvalidActionError

from ._core import PopulationState, ReprogramDynamics
from ._worlds import build_world

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from cellgym.predictors.base import DataSpec, Predictor, RewardModel

__all__ = ["ReprogramEnv", "make_dynamics"]

WorldName = Literal["hsc", "sergio", "data"]
ActionMode = Literal["single", "combination"]


def make_dynamics(
    world: WorldName,
    *,
    fate: str,
    adata: AnnData | None,
    spec: DataSpec | None,
    source: object,
    target: object,
    predictor: str | Path | Predictor | None,
    reward: str | RewardModel,
    context: str | None,
    n_cells: int,
    n_components: int,
    cost: float,
    success_bonus: float,
    threshold: float | None,
) -> ReprogramDynamics:
    """Build the world and its batched dynamics (shared by :class:`ReprogramEnv` and the vector env)."""
    if n_cells < 1 or n_components < 1:
        raise ValueError(f"n_cells and n_components must be >= 1, got n_cells={n_cells}, n_components={n_components}.")
    built = build_world(
        world, fate=fate, adata=adata, spec=spec, source=source, target=target, predictor=predictor, reward=reward,
        context=context, n_cells=n_cells,
    )
    return ReprogramDynamics(built, n_components=n_components, cost=cost, success_bonus=success_bonus, threshold=threshold)


def action_space_for(n_perturbations: int, action_mode: ActionMode) -> spaces.Space:
    """``Discrete(P + 1)`` (one perturbation or stop) or ``MultiBinary(P + 1)`` (a combination; last bit stops)."""
    if action_mode == "single":
        return spaces.Discrete(n_perturbations + 1)
    if action_mode == "combination":
        return spaces.MultiBinary(n_perturbations + 1)
    raise ValueError(f"action_mode: expected 'single' or 'combination', got {action_mode!r}.")


def decode_actions(actions: np.ndarray, n_perturbations: int, action_mode: ActionMode) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions (B,) int or (B, P + 1) binary -> chosen (B, P) bool and stop (B,) bool."""
    if action_mode == "single":
        a = torch.as_tensor(np.asarray(actions, dtype=np.int64))
        onehot = torch.nn.functional.one_hot(a, n_perturbations + 1).bool()
        return onehot[:, :-1], onehot[:, -1]
    bits = torch.as_tensor(np.asarray(actions)).bool()
    return bits[:, :-1], bits[:, -1]


def invalid_action(action: object, space: spaces.Space) -> InvalidActionError:
    """The error for an action outside ``space``, naming value, dtype, shape and the space."""
    arr = np.asarray(action)
    return InvalidActionError(
        f"action {action!r} (dtype {arr.dtype}, shape {arr.shape}) is not in the action space {space}. "
        "Pass an integer in [0, n) (the last index stops) or, for action_mode='combination', a 0/1 vector."
    )


class ReprogramEnv(gym.Env[np.ndarray, np.int64]):
    """Reprogram a population of cells to a goal state by choosing perturbations one at a time.

    ## Description

    The question of cellular reprogramming and disease reversal: which perturbations (knockouts,
    overexpressions) move these cells to the state I want? A population of N source cells evolves under
    a transition (a ground-truth gene-network simulator or a fitted perturbation predictor); each step
    the agent adds a perturbation, which stays in force for the rest of the episode, and the cells move.
    The goal is a target population (a fate, a cell type, healthy cells).

    ``world="hsc"`` (``CellEnv-Reprogram-HSC-v0``) is the myeloid Boolean network of Krumsiek et al. 2011
    (PLoS ONE 6:e22649): progenitor-like cells must be turned into erythrocytes (Gata1, Fog1, Eklf, Scl
    on). Natural fates of the progenitors are mostly myeloid, so forcing the erythroid program takes two
    perturbations for most populations (e.g. ``Gata1_OE`` then ``Eklf_OE`` or ``Fli1_KO`` to break the
    Eklf/Fli1 toggle), with distractors (``Gata2_OE`` also silences Pu1 but leaves Gata2 on).
    ``world="sergio"`` (``CellEnv-Reprogram-SERGIO-v0``) simulates SERGIO cells (Dibaeinia & Sinha 2020,
    Cell Systems 11:252) on the shipped ``"lineages"`` network: 20 genes whose three cell types are set
    by four master regulators (G0, G1, G2 each high in one type, co-factor G3 high in type0 and type2;
    high rate 1.0, basal 0.1), read out by 16 target genes in three layers. Turning type0 into type1
    takes three perturbations (``G0_KO``, ``G1_OE``, ``G3_KO`` in any order); no shorter set gets within
    the threshold. ``world="data"`` builds the task from any AnnData and a fitted predictor.

    ## Action Space

    ``Discrete(n_perturbations + 1)``: index i < P applies ``perturbations[i]``, index P stops the
    episode. With ``action_mode="combination"`` the space is ``MultiBinary(n_perturbations + 1)``: every
    set bit i < P is applied at once, the last bit stops. ``action_masks()`` (P + 1 bools) marks the
    perturbations not applied yet and stop; re-applying one is legal but changes nothing except that
    the cells evolve and it costs a step. HSC vocabulary (16 + stop):

    | Index | Perturbation | Index | Perturbation |
    |-------|--------------|-------|--------------|
    | 0 | Gata2_KO | 1 | Gata2_OE |
    | 2 | Gata1_KO | 3 | Gata1_OE |
    | 4 | Fli1_KO | 5 | Fli1_OE |
    | 6 | Eklf_KO | 7 | Eklf_OE |
    | 8 | Scl_KO | 9 | Scl_OE |
    | 10 | Cebpa_KO | 11 | Cebpa_OE |
    | 12 | Pu1_KO | 13 | Pu1_OE |
    | 14 | Gfi1_KO | 15 | Gfi1_OE |
    | 16 | stop | | |

    SERGIO vocabulary (8 + stop): KO and OE of each master regulator, ``G0_KO, G0_OE, G1_KO, G1_OE, G2_KO,
    G2_OE, G3_KO, G3_OE``; index 8 stops.

    ## Observation Space

    ``Box(low, high, (4 k + n_perturbations + 1,), float32)`` with k = ``n_components`` (HSC: 49, SERGIO: 41); the
    PCA parts are clipped to 10x the norm of the farthest reference cell (a bound never reached in practice):

    | Slice | Observation | Unit |
    |-------|-------------|------|
    | [0, k) | mean of the population in a fixed PCA (fitted once on source and target cells) | expression |
    | [k, 2k) | std of the population along those components | expression |
    | [2k, 4k) | mean and std of the goal cells (constant within a task) | expression |
    | [4k, 4k + P) | perturbations in force (0/1) | - |
    | 4k + P | budget left: 1 - steps / budget, clipped at 0 (1 without a budget) | fraction |

    States are log1p expression for data worlds, 0/1 gene activities for the Boolean world, SERGIO's
    expression units (production / decay) for the SERGIO world.

    ## Transition

    One batched call of a :class:`~cellgym.predictors.Transition` per step (mean mode) under all
    perturbations in force. HSC: ``grn.boolean`` (Krumsiek 2011, synchronous updates, 6 updates per
    step, deterministic). SERGIO: ``grn.sergio`` with ``network="lineages"`` and ``overexpression=1.0`` (an
    overexpressed master is produced at its highest natural rate), noise-free chemical-Langevin
    (mean-field) dynamics in the source type, 200 Euler steps of 0.05 (8 decay times) per step,
    deterministic; every population converges to the steady state of the perturbations in force. Data:
    any predictor; response models predict from the source cells, simulators evolve the current cells.

    ## Rewards

    Potential-based (Ng, Harada & Russell 1999) with the reward model's distance d as the potential:
    ``r = d_before - d_after - cost * n_new + success_bonus * success`` where ``n_new`` is the number of
    perturbations newly applied this step (default cost 0.1, success bonus 1.0). HSC: d is the
    Euclidean distance between the population's mean state and the erythrocyte state (``target.centroid``).
    SERGIO: Euclidean distance between the population's mean and the mean of 256 target cells
    (``target.centroid``; 11.4 at the start). Stop gives 0.

    ## Starting State

    A population of ``n_cells`` cells drawn with ``self.np_random``. HSC: 32 progenitor-like states
    (Gata2 on in 90% of cells, Pu1 in 50-100%, Cebpa / Gata1 / Fli1 / Scl each on with a probability
    drawn per episode from U(0, 1)), so populations differ in lineage priming. SERGIO: 32 cells of the
    source type, each its noise-free steady state (the transition's own fixed point) times mean-one
    log-normal noise (sigma 0.2), so unperturbed cells stay at their type. Data: cells drawn with
    replacement from the source cells.

    ## Episode End

    1. Termination: the distance is at most the goal threshold (success; HSC threshold 0.3; SERGIO 0.15 x
       the distance between the source and target steady states, 1.71 for type0 -> type1, where the right
       perturbation sets end 0.39-0.47 from the target and every other set of master KO/OE 4.9 or more).
    2. Termination: the agent chose stop.
    3. Truncation: the step budget ``max_episode_steps`` of the registration (HSC and SERGIO: 6) is used up.

    ## Info

    ``perturbations`` (list of the names applied, in order), ``distance`` (to the goal after the step),
    ``success`` (bool), ``n_perturbations`` (int), ``cost`` (cost paid so far).

    ## Arguments

    | Parameter | Type | Default | Description |
    |-----------|------|---------|-------------|
    | world | str | "hsc" | "hsc", "sergio" or "data" |
    | fate | str | "erythrocyte" | HSC goal: erythrocyte, megakaryocyte, monocyte or granulocyte |
    | adata, spec | AnnData, DataSpec | None | data world: the cells and their columns |
    | source, target | str or mask | None | data: perturbation label, "column=value" or mask; SERGIO: cell types (type0, type1) |
    | predictor | str, path or Predictor | None | registered name, saved folder or instance; data: names fitted on adata (cached); HSC: default or "grn.boolean" is the true world, other names fitted on ``hsc_screen()``, learned ones need its 11 genes and 16 perturbations; SERGIO: a grn.sergio (name, folder or instance) |
    | reward | str or RewardModel | "target.energy" | data world reward model |
    | context | str | None | transition context (default: the source cells') |
    | n_cells | int | 32 | cells per population |
    | action_mode | str | "single" | "single" (Discrete) or "combination" (MultiBinary) |
    | cost | float | 0.1 | reward cost per perturbation |
    | success_bonus | float | 1.0 | reward on reaching the goal |
    | threshold | float | None | success threshold (default: the world's) |
    | n_components | int | 8 | PCA components k of the observation |
    | budget | int | None | step budget shown in the observation (registered = max_episode_steps) |

    >>> import gymnasium as gym, cellgym.envs
    >>> env = gym.make("CellEnv-Reprogram-HSC-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (49,)

    A data world: ``gym.make("CellEnv-Reprogram-v0", adata=adata, target="KLF1", predictor="baseline.additive")``.

    ## Vectorized environment

    ``gymnasium.make_vec("CellEnv-Reprogram-HSC-v0", num_envs=64)`` returns
    :class:`ReprogramVectorEnv`, which steps all populations with one batched transition call (same
    dynamics function as this env), seeds sub-env i with ``seed + i`` and autoresets on the next step.

    ## Version History

    * v0: Initial version (HSC: erythrocyte fate, 16 perturbations, 32 cells, 6 sync updates per step;
      SERGIO: lineages network, type0 -> type1, 8 perturbations, 32 cells, threshold 0.15 of the type distance).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        world: WorldName = "hsc",
        *,
        fate: str = "erythrocyte",
        adata: AnnData | None = None,
        spec: DataSpec | None = None,
        source: object = None,
        target: object = None,
        predictor: str | Path | Predictor | None = None,
        reward: str | RewardModel = "target.energy",
        context: str | None = None,
        n_cells: int = 32,
        action_mode: ActionMode = "single",
        cost: float = 0.1,
        success_bonus: float = 1.0,
        threshold: float | None = None,
        n_components: int = 8,
        budget: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: this env does not render, got {render_mode!r}; pass None.")
        self.dynamics = make_dynamics(
            world, fate=fate, adata=adata, spec=spec, source=source, target=target, predictor=predictor, reward=reward,
            context=context, n_cells=n_cells, n_components=n_components, cost=cost, success_bonus=success_bonus,
            threshold=threshold,
        )
        self.action_mode: ActionMode = action_mode
        self.perturbations = list(self.dynamics.world.perturbations)
        self.n_perturbations = len(self.perturbations)
        self.action_space = action_space_for(self.n_perturbations, action_mode)
        self.observation_space = spaces.Box(self.dynamics.obs_low, self.dynamics.obs_high, dtype=np.float32)
        self.render_mode = render_mode
        self.budget = budget
        self.state: PopulationState | None = None
        self.steps = 0
        self.applied_names: list[str] = []
        self.total_cost = 0.0

    def step(self, action: np.int64 | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action``; the cells evolve under everything in force; returns the gymnasium 5-tuple."""
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before step().")
        if not self.action_space.contains(action):
            raise invalid_action(action, self.action_space)
        chosen, stop = decode_actions(np.asarray(action)[None], self.n_perturbations, self.action_mode)
        out = self.dynamics.step(self.state, chosen, stop)
        self.state = out.state
        self.steps += 1
        new = torch.nonzero(chosen[0] & ~stop[0]).flatten().tolist()
        self.applied_names += [self.perturbations[i] for i in new if self.perturbations[i] not in self.applied_names]
        self.total_cost += self.dynamics.cost * int(out.n_new[0])
        terminated = bool(out.success[0] or out.stopped[0])
        return self._obs(), float(out.reward[0]), terminated, False, self._info(bool(out.success[0]))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a new starting population from ``self.np_random``."""
        super().reset(seed=seed)
        source = torch.from_numpy(self.dynamics.world.sampler(self.np_random))[None]
        self.state = self.dynamics.initial(source)
        self.steps = 0
        self.applied_names = []
        self.total_cost = 0.0
        return self._obs(), self._info(False)

    def action_masks(self) -> np.ndarray:
        """Valid actions (P + 1,) bool: perturbations not applied yet, and stop."""
        if self.state is None:
            return np.ones(self.n_perturbations + 1, dtype=bool)
        return self.dynamics.masks(self.state)[0]

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------------------------- for planners
    def lookahead(self, actions: np.ndarray, state: PopulationState | None = None) -> tuple[PopulationState, np.ndarray]:
        """Apply each of K ``actions`` to ``state`` (default: the current one) in ONE transition call.

        Returns the K next states and their rewards (K,); the env itself is not changed.
        """
        state = self.state if state is None else state
        actions = np.asarray(actions)
        k = actions.shape[0]
        rows = state.take(np.zeros(k, dtype=np.int64)) if len(state) == 1 else state
        chosen, stop = decode_actions(actions, self.n_perturbations, self.action_mode)
        out = self.dynamics.step(rows, chosen, stop)
        return out.state, out.reward

    def _budget(self) -> float:
        horizon = self.budget
        return max(0.0, 1.0 - self.steps / horizon) if horizon else 1.0

    def _obs(self) -> np.ndarray:
        return self.dynamics.observe(self.state, np.array([self._budget()]))[0]

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "perturbations": list(self.applied_names),
            "distance": float(self.state.distance[0]),
            "success": success,
            "n_perturbations": len(self.applied_names),
            "cost": self.total_cost,
            **self._disagreement_info(),
        }

    def _disagreement_info(self) -> dict[str, Any]:
        """``disagreement`` of the last step (uncertainty.penalised worlds only)."""
        if not hasattr(self.dynamics.world.reward, "penalty"):
            return {}
        last = getattr(self.dynamics, "last_disagreement", None)
        return {"disagreement": float(last[0]) if last is not None and self.steps else 0.0}
