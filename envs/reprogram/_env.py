"""Single-agent cellular reprogramming: pick perturbations that move a cell population to a goal state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from cellgym.envs._threads import check_num_threads, torch_threads
from cellgym.envs.errors import InvalidActionError, ResetNeededError
from cellgym.predictors.base.errors import DataSpecError

from ._core import PopulationState, ReprogramDynamics, StepOutcome
from ._render import FrameRenderer, PathRecorder, ansi_line, step_labels
from ._worlds import build_world

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from cellgym.predictors.base import DataSpec, Predictor, RewardModel

__all__ = ["ReprogramEnv", "make_dynamics"]

WorldName = Literal["hsc", "sergio", "data"]
ActionMode = Literal["single", "combination", "dose"]
RENDER_MODES = ("ansi", "rgb_array")


def make_dynamics(
    world: WorldName,
    *,
    fate: str,
    adata: AnnData | None,
    spec: DataSpec | None,
    source: object,
    target: object,
    predictor: str | Path | Predictor | None,
    reward: str | RewardModel | None,
    context: str | None,
    n_cells: int,
    n_components: int,
    cost: float,
    success_bonus: float,
    threshold: float | None,
    action_mode: ActionMode = "single",
    dynamics: str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    predictor_kwargs: dict[str, Any] | None = None,
) -> ReprogramDynamics:
    """Build the world and its batched dynamics (shared by :class:`ReprogramEnv` and the vector env)."""
    if n_cells < 1 or n_components < 1:
        raise ValueError(f"n_cells and n_components must be >= 1, got n_cells={n_cells}, n_components={n_components}.")
    if dynamics is not None and world != "hsc":
        raise DataSpecError(f"dynamics={dynamics!r} chooses the HSC world's simulator; world {world!r} takes its "
                            "transition from predictor=. Drop dynamics=.")
    built = build_world(
        world, fate=fate, adata=adata, spec=spec, source=source, target=target, predictor=predictor, reward=reward,
        reward_kwargs=reward_kwargs, predictor_kwargs=predictor_kwargs, context=context, n_cells=n_cells,
        **({} if dynamics is None else {"dynamics": dynamics}),
    )
    if action_mode == "dose" and not getattr(built.transition.predictor, "takes_doses", False):
        raise DataSpecError(
            f"action_mode='dose' needs a world whose perturbations take a strength (grn.boolean with dynamics "
            f"'ode' or 'sde', grn.sergio); this one's transition is {built.transition.predictor.name!r}"
            + (f" with dynamics {built.transition.predictor.config.get('dynamics')!r}" if world == "hsc" else "")
            + ". For the HSC world pass dynamics='sde' (CellEnv-Reprogram-HSC-Dose-v0).")
    return ReprogramDynamics(built, n_components=n_components, cost=cost, success_bonus=success_bonus, threshold=threshold,
                             dose=action_mode == "dose")


def action_space_for(n_perturbations: int, action_mode: ActionMode) -> spaces.Space:
    """``Discrete(P + 1)`` (one perturbation or stop), ``MultiBinary(P + 1)`` (a combination; last bit stops)
    or ``Box(0, 1, (P,))`` (a dose of every perturbation)."""
    if action_mode == "single":
        return spaces.Discrete(n_perturbations + 1)
    if action_mode == "combination":
        return spaces.MultiBinary(n_perturbations + 1)
    if action_mode == "dose":
        return spaces.Box(0.0, 1.0, (n_perturbations,), dtype=np.float32)
    raise ValueError(f"action_mode: expected 'single', 'combination' or 'dose', got {action_mode!r}.")


def check_render_mode(render_mode: str | None) -> None:
    """``render_mode`` is None or one of :data:`RENDER_MODES`, else one clear error."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode: expected None or one of {list(RENDER_MODES)}, got {render_mode!r}.")


def decode_actions(actions: np.ndarray, n_perturbations: int, action_mode: ActionMode) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions (B,) int or (B, P + 1) binary -> chosen (B, P) bool and stop (B,) bool (not for doses)."""
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
        "Pass an integer in [0, n) (the last index stops), for action_mode='combination' a 0/1 vector, for "
        "action_mode='dose' a float32 vector of doses in [0, 1]."
    )


def _is_int_action(action: object, action_mode: ActionMode) -> bool:
    """Integers only (``True`` is not action 1): a Python/NumPy int for ``single``, an int or bool array for
    ``combination``; ``dose`` actions are float arrays, checked by the Box action space."""
    if action_mode == "dose":
        return isinstance(action, np.ndarray)
    if action_mode == "single":
        if isinstance(action, (bool, np.bool_)):
            return False
        return isinstance(action, (int, np.integer)) or (
            isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer))
    return isinstance(action, np.ndarray) and (np.issubdtype(action.dtype, np.integer) or action.dtype == bool)


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

    With ``action_mode="dose"`` (``CellEnv-Reprogram-HSC-Dose-v0``) the space is ``Box(0, 1, (P,), float32)``:
    a dose of every perturbation, the knockdown strength of a ``_KO`` (production times 1 - dose) or the
    level of an ``_OE`` (production mixed (1 - dose) natural + dose overexpressed). The doses act during
    that step (a treatment schedule: the next action replaces them); there is no stop action (doses of 0
    cost nothing). It needs a world whose perturbations take a strength: HSC with ``dynamics="sde"`` or
    ``"ode"``, SERGIO.

    ## Observation Space

    ``Box(low, high, (4 k + n_perturbations + 1,), float32)`` with k = ``n_components`` (HSC: 49, SERGIO: 41); the
    PCA parts are clipped to 10x the norm of the farthest reference cell (a bound never reached in practice):

    | Slice | Observation | Unit |
    |-------|-------------|------|
    | [0, k) | mean of the population in a fixed PCA (fitted once on source and target cells) | expression |
    | [k, 2k) | std of the population along those components | expression |
    | [2k, 4k) | mean and std of the goal cells (constant within a task) | expression |
    | [4k, 4k + P) | perturbations in force (0/1; the last step's doses with action_mode="dose") | - |
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
    perturbations newly applied this step (default cost 0.1, success bonus 1.0); with ``action_mode="dose"``
    the cost is ``cost`` per unit of dose per step (a full dose for one step costs what a discrete perturbation costs). HSC: d is the
    Euclidean distance between the population's mean state and the erythrocyte state (``target.centroid``).
    SERGIO: Euclidean distance between the population's mean and the mean of 256 target cells
    (``target.centroid``; 11.4 at the start). Stop gives 0. With ``reward="uncertainty.penalised"`` in an
    ``ensemble`` world (HSC, data) each step also pays ``- lam * disagreement`` of the predicted population
    (MOPO-style; ``reward_kwargs={"lam": 0.5, "goal": "target.centroid"}``).

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
    3. Truncation: the step budget ``budget`` (registered equal to ``max_episode_steps``; HSC and SERGIO: 6) is
       used up; the env reports it itself, so it holds without gymnasium's ``TimeLimit`` too.

    A ``step()`` before ``reset()`` or after the episode ended raises gymnasium's ``ResetNeeded`` (as
    :class:`~cellgym.envs.errors.ResetNeededError`); actions must be integers (``True`` is not action 1).

    ## Info

    ``perturbations`` (list of the names applied, in order), ``distance`` (to the goal after the step),
    ``success`` (bool), ``n_perturbations`` (int), ``cost`` (cost paid so far), ``total_dose`` (the dose
    given so far, summed over perturbations and steps; a discrete perturbation is one dose of 1);
    ``disagreement`` (ensemble member spread of the last step) with ``reward="uncertainty.penalised"``.

    ## Rendering

    ``render_mode="rgb_array"``: the ``cellgym enjoy --plot`` picture of the current population (reference
    cells, the goal cell type, the starting and the current population, the path of its mean with each
    step's perturbations) as a (384, 416, 3) uint8 frame, drawn on one reused matplotlib Agg canvas
    (``benchmarks/render_speed.py`` measures frames per second); gymnasium's ``RecordVideo`` records it.
    ``render_mode="ansi"``: one text line per step (perturbations in force, distance, success).

    ## Arguments

    | Parameter | Type | Default | Description |
    |-----------|------|---------|-------------|
    | world | str | "hsc" | "hsc", "sergio" or "data" |
    | fate | str | "erythrocyte" | HSC goal: erythrocyte, megakaryocyte, monocyte or granulocyte |
    | adata, spec | AnnData, DataSpec | None | data world: the cells and their columns |
    | source, target | str or mask | None | data: perturbation label, "column=value" or mask; SERGIO: cell types (type0, type1) |
    | predictor | str, path or Predictor | None | registered name, saved folder or instance; data: names fitted on adata (cached); HSC: default or "grn.boolean" is the true world, other names fitted on ``hsc_screen()``, learned ones need its 11 genes and 16 perturbations; SERGIO: a grn.sergio (name, folder or instance) |
    | reward | str or RewardModel | None | reward model name or instance; None: the world's goal (HSC, SERGIO: target.centroid; data: target.energy); "uncertainty.penalised" in an ensemble world (HSC, data) |
    | reward_kwargs | dict | None | options of a named reward; uncertainty.penalised: ``lam`` (default 1.0), ``goal`` (goal reward name, default the world's), ``goal_kwargs`` |
    | predictor_kwargs | dict | None | constructor options of a registered predictor name fitted by the world (e.g. ``{"members": [...], "n_members": 5}`` for "ensemble") |
    | context | str | None | transition context (default: the source cells') |
    | n_cells | int | 32 | cells per population |
    | action_mode | str | "single" | "single" (Discrete), "combination" (MultiBinary) or "dose" (Box) |
    | dynamics | str | None | HSC only: the simulator's updates, "sync" (default) or continuous "ode" / "sde" |
    | cost | float | 0.1 | reward cost per perturbation |
    | success_bonus | float | 1.0 | reward on reaching the goal |
    | threshold | float | None | success threshold (default: the world's) |
    | n_components | int | 8 | PCA components k of the observation |
    | budget | int | None | step budget shown in the observation (registered = max_episode_steps) |
    | render_mode | str | None | None, "rgb_array" or "ansi" |
    | num_threads | int | 1 | torch threads of the env's own work (-1: torch's setting); see ``cellgym.envs._threads`` |

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
      SERGIO: lineages network, type0 -> type1, 8 perturbations, 32 cells, threshold 0.15 of the type distance;
      HSC-Dose: the HSC task in the BoolODE-style SDE world (noise-free mean path, 100 x 0.1 per step),
      16 doses, cost 0.1 per unit of dose).
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": 4}  # noqa: RUF012

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
        reward: str | RewardModel | None = None,
        reward_kwargs: dict[str, Any] | None = None,
        predictor_kwargs: dict[str, Any] | None = None,
        context: str | None = None,
        n_cells: int = 32,
        action_mode: ActionMode = "single",
        cost: float = 0.1,
        success_bonus: float = 1.0,
        threshold: float | None = None,
        n_components: int = 8,
        budget: int | None = None,
        render_mode: str | None = None,
        dynamics: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        check_render_mode(render_mode)
        self.num_threads = check_num_threads(num_threads)
        action_space_for(0, action_mode)  # an unknown action_mode fails before the world is built
        with torch_threads(self.num_threads):
            self.dynamics = make_dynamics(
                world, fate=fate, adata=adata, spec=spec, source=source, target=target, predictor=predictor,
                reward=reward, reward_kwargs=reward_kwargs, predictor_kwargs=predictor_kwargs, context=context,
                n_cells=n_cells, n_components=n_components, cost=cost,
                success_bonus=success_bonus, threshold=threshold, action_mode=action_mode, dynamics=dynamics,
            )
        self.action_mode: ActionMode = action_mode
        self.perturbations = list(self.dynamics.world.perturbations)
        self.n_perturbations = len(self.perturbations)
        self.action_space = action_space_for(self.n_perturbations, action_mode)
        self.observation_space = spaces.Box(self.dynamics.obs_low, self.dynamics.obs_high, dtype=np.float32)
        self.render_mode = render_mode
        self.source_name = self.dynamics.world.source_name
        self.target_name = self.dynamics.world.target_name
        self.budget = budget
        self.state: PopulationState | None = None
        self._ended: str | None = None  # why the episode ended ("terminated", "was truncated ..."), None while running
        self.steps = 0
        self.applied_names: list[str] = []
        self.total_cost = 0.0
        self.total_dose = 0.0
        self._last: StepOutcome | None = None
        self._track = PathRecorder(self.dynamics, 1)
        self._renderer: FrameRenderer | None = None

    def step(self, action: np.int64 | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action``; the cells evolve under everything in force; returns the gymnasium 5-tuple."""
        if self.state is None:
            raise ResetNeededError("step() before reset(): call env.reset() first.")
        if self._ended is not None:
            raise ResetNeededError(f"the episode {self._ended} after {self.steps} steps; call env.reset() before "
                                   "stepping again.")
        if not _is_int_action(action, self.action_mode) or not self.action_space.contains(action):
            raise invalid_action(action, self.action_space)
        before = self.state.applied
        with torch_threads(self.num_threads):
            if self.action_mode == "dose":
                out = self.dynamics.step_dose(self.state, torch.as_tensor(np.asarray(action, dtype=np.float32))[None])
            else:
                chosen, stop = decode_actions(np.asarray(action)[None], self.n_perturbations, self.action_mode)
                out = self.dynamics.step(self.state, chosen, stop)
        self.state = out.state
        self.steps += 1
        floor = 0.0 if self.action_mode == "dose" else before[0].float()  # doses: every one given this step
        new = torch.nonzero(out.state.applied[0].float() > floor).flatten().tolist()
        self.applied_names += [self.perturbations[i] for i in new if self.perturbations[i] not in self.applied_names]
        self.total_cost += float(out.cost[0])
        self.total_dose += float(out.dose[0])
        self._last = out
        if self.render_mode is not None and not out.stopped[0]:
            self._track.step([0], out.state.cells, step_labels(self.perturbations, before, out.state.applied))
        terminated = bool(out.success[0] or out.stopped[0])
        # the budget is the registered max_episode_steps (gymnasium's TimeLimit does not tell the env it truncated)
        truncated = not terminated and self.budget is not None and self.steps >= self.budget
        if terminated or truncated:
            self._ended = "terminated" if terminated else f"was truncated at its budget of {self.budget} steps"
        return self._obs(), float(out.reward[0]), terminated, truncated, self._info(bool(out.success[0]))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a new starting population from ``self.np_random``."""
        super().reset(seed=seed)
        source = torch.from_numpy(self.dynamics.world.sampler(self.np_random))[None]
        with torch_threads(self.num_threads):
            self.state = self.dynamics.initial(source)
        self._ended = None
        self.steps = 0
        self.applied_names = []
        self.total_cost = 0.0
        self.total_dose = 0.0
        self._last = None
        if self.render_mode is not None:
            self._track.start([0], self.state.cells)
        return self._obs(), self._info(False)

    def render(self) -> np.ndarray | str | None:
        """The current population as an RGB frame (``"rgb_array"``) or a text line (``"ansi"``); None without a mode."""
        if self.render_mode is None:
            gym.logger.warn("render() without a render_mode: pass render_mode='rgb_array' or 'ansi' to gymnasium.make.")
            return None
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before render().")
        if self.render_mode == "ansi":
            return ansi_line(steps=self.steps, applied=self._applied_text(), distance=float(self.state.distance[0]),
                             threshold=self.dynamics.threshold, status=self._status())
        if self._renderer is None:
            self._renderer = FrameRenderer(self.dynamics, source_name=self.source_name, target_name=self.target_name)
        title = f"step {self.steps}: distance to {self.target_name} {float(self.state.distance[0]):.2f} ({self._status()})"
        return self._renderer.frame(self.state.source[0].numpy(), self.state.cells[0].numpy(), self._track.paths[0],
                                    self._track.labels[0], title)

    def action_masks(self) -> np.ndarray:
        """Valid actions (P + 1,) bool: perturbations not applied yet, and stop."""
        if self.state is None:
            return np.ones(self.n_perturbations + 1, dtype=bool)
        return self.dynamics.masks(self.state)[0]

    def close(self) -> None:
        """Release the render canvas."""
        self._renderer = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderer"] = None  # a canvas is rebuilt on the next render()
        return state

    # ------------------------------------------------------------------------------- for planners
    def lookahead(self, actions: np.ndarray, state: PopulationState | None = None) -> tuple[PopulationState, np.ndarray]:
        """Apply each of K ``actions`` to ``state`` (default: the current one) in ONE transition call.

        Returns the K next states and their rewards (K,); the env itself is not changed.
        """
        state = self.state if state is None else state
        actions = np.asarray(actions)
        k = actions.shape[0]
        rows = state.take(np.zeros(k, dtype=np.int64)) if len(state) == 1 else state
        with torch_threads(self.num_threads):
            if self.action_mode == "dose":
                out = self.dynamics.step_dose(rows, torch.as_tensor(actions, dtype=torch.float32))
            else:
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
            "total_dose": self.total_dose,
            **self._disagreement_info(),
        }

    def _applied_text(self) -> list[str]:
        if self.action_mode != "dose":
            return list(self.applied_names)
        doses = self.state.applied[0].numpy()
        return [f"{p} {d:.2f}" for p, d in zip(self.perturbations, doses, strict=True) if d > 0]

    def _status(self) -> str:
        out = self._last
        if out is None:
            return "start"
        return "success" if out.success[0] else "stopped" if out.stopped[0] else "running"

    def _disagreement_info(self) -> dict[str, Any]:
        """``disagreement`` of the last step (uncertainty.penalised worlds only)."""
        if not hasattr(self.dynamics.world.reward, "penalty"):
            return {}
        last = getattr(self.dynamics, "last_disagreement", None)
        return {"disagreement": float(last[0]) if last is not None and self.steps else 0.0}
