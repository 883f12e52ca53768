"""SB3 callbacks that log the biology to TensorBoard and save checkpoints.

Scalars (windowed over the last ``window`` finished episodes, written at every logger dump, next to SB3's
``rollout/`` and ``train/`` ones):

========================== ==========================================================================
``cell/success_rate``      fraction of episodes that reached the goal (``info["success"]``)
``cell/distance_to_goal``  distance to the goal at the end of the episode (``info["distance"]``)
``cell/n_perturbations``   perturbations applied per episode (``info["n_perturbations"]``)
``cell/cost``              total perturbation cost per episode (``info["cost"]``)
``cell/disagreement``      ensemble disagreement of the episode's last step (``uncertainty.penalised`` worlds)
``cell/steps_over_optimum`` mean episode length / the ``bfs`` optimum (only where one is known)
``cell/perturbation``      histogram of the action indices chosen during the window
========================== ==========================================================================
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["CellMetricsCallback", "CheckpointCallback", "StopOnSignal"]

_SCALARS = {"success": "cell/success_rate", "distance": "cell/distance_to_goal",
            "n_perturbations": "cell/n_perturbations", "cost": "cell/cost",
            "disagreement": "cell/disagreement"}


class CellMetricsCallback(BaseCallback):
    """Log ``cell/*`` scalars from the final ``info`` of every finished episode.

    Parameters
    ----------
    optimum_steps : float, optional
        Mean episode length of the exact optimum (``bfs``) on this task; enables ``cell/steps_over_optimum``.
    window : int
        Number of recent episodes the scalars average over (SB3 uses 100 for ``rollout/ep_rew_mean``).
    """

    def __init__(self, optimum_steps: float | None = None, window: int = 100) -> None:
        super().__init__()
        self.optimum_steps = optimum_steps
        self.episodes: collections.deque[dict[str, float]] = collections.deque(maxlen=window)
        self.actions: list[np.ndarray] = []

    def _on_step(self) -> bool:
        actions = self.locals.get("actions")
        if actions is not None and np.issubdtype(np.asarray(actions).dtype, np.integer):
            self.actions.append(np.asarray(actions).reshape(-1))
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if not done:
                continue
            row = {key: float(info[key]) for key in _SCALARS if key in info and info[key] is not None}
            if "episode" in info:
                row["length"] = float(info["episode"]["l"])
            self.episodes.append(row)
        return True

    def _on_rollout_end(self) -> None:
        for key, tag in _SCALARS.items():
            values = [e[key] for e in self.episodes if key in e and not math.isnan(e[key])]
            if values:
                self.logger.record(tag, float(np.mean(values)))
        lengths = [e["length"] for e in self.episodes if "length" in e]
        if self.optimum_steps and lengths:
            self.logger.record("cell/steps_over_optimum", float(np.mean(lengths)) / self.optimum_steps)
        if self.actions:
            chosen = torch.as_tensor(np.concatenate(self.actions))
            self.logger.record("cell/perturbation", chosen, exclude=("stdout", "log", "json", "csv"))
            self.actions = []


class CheckpointCallback(BaseCallback):
    """Save the agent to ``folder/step_<n>/`` every ``save_freq`` environment steps (all envs together), at
    the first rollout boundary after each multiple.

    Uses the agent's own checkpoint format (``config.yaml`` + ``weights.pt``, plus the replay buffer of
    off-policy algorithms, kept in the newest checkpoint only), not SB3's pickled zip; each folder is written
    under a temporary name and renamed.
    A resumed run (``num_timesteps`` already > 0) saves at the next multiple of ``save_freq``.
    """

    def __init__(self, agent: Any, folder: str | Path, save_freq: int) -> None:
        super().__init__()
        self.agent, self.folder, self.save_freq = agent, Path(folder), int(save_freq)
        self._next = self.save_freq

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_rollout_start(self) -> None:
        # between a policy update and the next rollout: the weights, the step counter and the replay buffer
        # agree (in _on_step the newest transition is not stored yet), so a resume continues exactly here
        self._save_if_due()

    def _on_training_end(self) -> None:
        self._save_if_due()

    def _save_if_due(self) -> None:
        if self.num_timesteps >= self._next:
            path = self.agent.save(self.folder / f"step_{self.num_timesteps}", training_state=True)
            for older in self.folder.glob("step_*/replay_buffer.pt"):  # one buffer on disk: the newest
                if older.parent != path:
                    older.unlink(missing_ok=True)
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        return True


class StopOnSignal(BaseCallback):
    """End training cleanly at the next environment step once ``stop.signal`` is set (SIGINT/SIGTERM).

    SB3 ends ``learn()`` when a callback returns False, between two steps, with the model consistent, so the
    caller can save it.
    """

    def __init__(self, stop: Any) -> None:
        super().__init__()
        self.stop = stop

    def _on_step(self) -> bool:
        return self.stop.signal is None
