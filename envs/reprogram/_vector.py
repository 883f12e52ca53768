"""Native vector env: all sub-environments' populations go through one batched transition call per step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from cellgym.envs._threads import check_num_threads, torch_threads
from cellgym.envs.errors import InvalidActionError

from ._env import (
    RENDER_MODES,
    ActionMode,
    WorldName,
    action_space_for,
    check_render_mode,
    decode_actions,
    make_dynamics,
)
from ._render import FrameRenderer, PathRecorder, ansi_line, step_labels

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from cellgym.predictors.base import DataSpec, Predictor, RewardModel

    from ._core import PopulationState

__all__ = ["ReprogramVectorEnv"]


class ReprogramVectorEnv(VectorEnv):
    """``num_envs`` reprogramming episodes stepped together (see :class:`ReprogramEnv` for the task).

    The world (predictor, reward model, embedding) is built once; each step is ONE call of the shared
    batched dynamics over all populations. Sub-env i is seeded with ``seed + i`` and draws its starting
    populations from its own generator, as in :class:`gymnasium.vector.SyncVectorEnv`, so the two give
    identical rollouts. Episodes that end are reset on the next step (``autoreset_mode="next_step"``,
    the default) or within the same step (``"same_step"``: the returned observation and info are the new
    episode's, the ended one's are in ``infos["final_obs"]`` / ``infos["final_info"]`` with masks
    ``_final_obs`` / ``_final_info``, as in ``SyncVectorEnv(autoreset_mode=AutoresetMode.SAME_STEP)``; SB3
    needs this). The step budget ``max_episode_steps`` truncates here (there is no TimeLimit wrapper around a
    vector env). Arguments are those of :class:`ReprogramEnv` plus ``num_envs`` and ``autoreset_mode``.
    ``render()`` returns one frame (``"rgb_array"``) or text line (``"ansi"``) per sub-env, as a tuple, like
    ``SyncVectorEnv``. The env's own tensor work runs with ``num_threads`` torch threads (default 1).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012
        "autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": list(RENDER_MODES), "render_fps": 4,
    }

    def __init__(
        self,
        num_envs: int = 1,
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
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        dynamics: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        check_render_mode(render_mode)
        self.num_threads = check_num_threads(num_threads)
        action_space_for(0, action_mode)
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}
        mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else modes.get(str(autoreset_mode).lower())
        if mode not in modes.values():
            raise ValueError(f"autoreset_mode: expected 'next_step' or 'same_step' (or AutoresetMode.NEXT_STEP / "
                             f"SAME_STEP), got {autoreset_mode!r}.")
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        with torch_threads(self.num_threads):
            self.dynamics = make_dynamics(
                world, fate=fate, adata=adata, spec=spec, source=source, target=target, predictor=predictor,
                reward=reward, reward_kwargs=reward_kwargs, predictor_kwargs=predictor_kwargs, context=context,
                n_cells=n_cells, n_components=n_components, cost=cost,
                success_bonus=success_bonus, threshold=threshold, action_mode=action_mode, dynamics=dynamics,
            )
        self.num_envs = num_envs
        self.action_mode: ActionMode = action_mode
        self.perturbations = list(self.dynamics.world.perturbations)
        self.n_perturbations = len(self.perturbations)
        self.single_action_space = action_space_for(self.n_perturbations, action_mode)
        self.single_observation_space = spaces.Box(self.dynamics.obs_low, self.dynamics.obs_high, dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.render_mode = render_mode
        self.source_name = self.dynamics.world.source_name
        self.target_name = self.dynamics.world.target_name
        self._track = PathRecorder(self.dynamics, num_envs)
        self._renderer: FrameRenderer | None = None
        self._status = np.full(num_envs, "start", dtype=object)
        self.max_episode_steps = max_episode_steps
        self.budget = budget if budget is not None else max_episode_steps
        self._rngs: list[np.random.Generator] = [seeding.np_random()[0] for _ in range(num_envs)]
        self.state: PopulationState | None = None
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.costs = np.zeros(num_envs)
        self.doses = np.zeros(num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env (one batched transition); ended ones are reset on the next or the same step."""
        if self.state is None:
            raise RuntimeError("call reset() before step().")
        actions = np.asarray(actions)
        if not self.action_space.contains(actions):
            raise InvalidActionError(
                f"actions {actions!r} (dtype {actions.dtype}, shape {actions.shape}) are not in the batched "
                f"action space {self.action_space}. Pass one action per sub-env."
            )
        resetting = self._autoreset.copy()
        before = self.state.applied
        with torch_threads(self.num_threads):
            if self.action_mode == "dose":
                out = self.dynamics.step_dose(self.state, torch.as_tensor(actions, dtype=torch.float32))
            else:
                chosen, stop = decode_actions(actions, self.n_perturbations, self.action_mode)
                stop = stop | torch.from_numpy(resetting)  # rows being reset do not move (their result is replaced)
                out = self.dynamics.step(self.state, chosen, stop)
        self.state = out.state
        self.steps += 1
        self.costs += out.cost
        self.doses += out.dose
        if self.render_mode is not None:
            moved = np.flatnonzero(~out.stopped & ~resetting)
            self._track.step(moved, out.state.cells[moved],
                             step_labels(self.perturbations, before[moved], out.state.applied[moved]))
            self._status[:] = np.where(out.success, "success", np.where(out.stopped, "stopped", "running"))
        terminated = out.success | out.stopped
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = self.steps >= self.max_episode_steps
        reward = out.reward.copy()
        success = out.success.copy()
        if resetting.any():
            self._reset_rows(np.flatnonzero(resetting))
            reward[resetting] = 0.0
            terminated[resetting] = truncated[resetting] = success[resetting] = False
        ended = terminated | truncated
        if self.autoreset_mode == AutoresetMode.NEXT_STEP or not ended.any():
            self._autoreset = ended
            return self._obs(), reward, terminated, truncated, self._infos(success)
        # same-step autoreset: report the ended episodes' last obs/info, then start the next ones now
        last_obs, last_info = self._obs(), self._infos(success)
        final_obs = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(ended):
            final_obs[i] = last_obs[i]
        final_info = {k: v for k, v in last_info.items() if not k.startswith("_")}
        final_info.update({f"_{k}": ended.copy() for k in list(final_info)})
        self._reset_rows(np.flatnonzero(ended))
        infos = self._infos(success & ~ended)
        infos.update(final_obs=final_obs, _final_obs=ended.copy(), final_info=final_info, _final_info=ended.copy())
        return self._obs(), reward, terminated, truncated, infos

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs; an int ``seed`` seeds sub-env i with ``seed + i``."""
        super().reset(seed=seed)
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected an int or {self.num_envs} seeds, got {len(seeds)}.")
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        sources = np.stack([self.dynamics.world.sampler(rng) for rng in self._rngs])
        with torch_threads(self.num_threads):
            self.state = self.dynamics.initial(torch.from_numpy(sources))
        if self.render_mode is not None:
            self._track.start(np.arange(self.num_envs), self.state.cells)
            self._status[:] = "start"
        self.steps[:] = 0
        self.costs[:] = 0.0
        self.doses[:] = 0.0
        self._autoreset[:] = False
        return self._obs(), self._infos(np.zeros(self.num_envs, dtype=bool))

    def action_masks(self) -> np.ndarray:
        """Valid actions (num_envs, P + 1) bool: perturbations not applied yet, and stop."""
        return self.dynamics.masks(self.state)

    def render(self) -> tuple[np.ndarray, ...] | tuple[str, ...] | None:
        """One RGB frame (``"rgb_array"``) or text line (``"ansi"``) per sub-env; None without a render mode."""
        if self.render_mode is None:
            return None
        if self.state is None:
            raise RuntimeError("call reset() before render().")
        distance = self.state.distance.numpy()
        if self.render_mode == "ansi":
            applied = self.state.applied.float().numpy()
            return tuple(
                ansi_line(steps=int(self.steps[i]), distance=float(distance[i]), threshold=self.dynamics.threshold,
                          status=str(self._status[i]),
                          applied=[f"{p} {applied[i, j]:.2f}" if self.action_mode == "dose" else p
                                   for j, p in enumerate(self.perturbations) if applied[i, j] > 0])
                for i in range(self.num_envs))
        if self._renderer is None:
            self._renderer = FrameRenderer(self.dynamics, source_name=self.source_name, target_name=self.target_name)
        return tuple(
            self._renderer.frame(self.state.source[i].numpy(), self.state.cells[i].numpy(), self._track.paths[i],
                                 self._track.labels[i],
                                 f"env {i}, step {self.steps[i]}: distance to {self.target_name} {distance[i]:.2f} "
                                 f"({self._status[i]})")
            for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Release the render canvas."""
        self._renderer = None

    def _reset_rows(self, rows: np.ndarray) -> None:
        sources = np.stack([self.dynamics.world.sampler(self._rngs[i]) for i in rows])
        with torch_threads(self.num_threads):
            self.state = self.state.put(rows, self.dynamics.initial(torch.from_numpy(sources)))
        if self.render_mode is not None:
            self._track.start(rows, self.state.cells[rows])
            self._status[rows] = "start"
        self.steps[rows] = 0
        self.costs[rows] = 0.0
        self.doses[rows] = 0.0

    def _obs(self) -> np.ndarray:
        budget = np.ones(self.num_envs)
        if self.budget:
            budget = np.clip(1.0 - self.steps / self.budget, 0.0, None)
        return self.dynamics.observe(self.state, budget)

    def _infos(self, success: np.ndarray) -> dict[str, Any]:
        applied = self.state.applied.numpy()
        names = np.empty(self.num_envs, dtype=object)
        for i in range(self.num_envs):  # names only; the numbers below are arrays
            names[i] = [self.perturbations[j] for j in np.flatnonzero(applied[i])]
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "perturbations": names,
            "distance": self.state.distance.double().numpy(),
            "success": success,
            "n_perturbations": (applied > 0).sum(1).astype(np.int64),
            "cost": self.costs.copy(),
            "total_dose": self.doses.copy(),
            "_perturbations": every, "_distance": every, "_success": every, "_n_perturbations": every, "_cost": every,
            "_total_dose": every,
            **self._disagreement_info(every),
        }

    def _disagreement_info(self, every: np.ndarray) -> dict[str, Any]:
        """``disagreement`` (num_envs,) of the last step (uncertainty.penalised worlds only)."""
        if not hasattr(self.dynamics.world.reward, "penalty"):
            return {}
        last = getattr(self.dynamics, "last_disagreement", None)
        value = last.copy() if last is not None and len(last) == self.num_envs else np.zeros(self.num_envs)
        return {"disagreement": value, "_disagreement": every}
