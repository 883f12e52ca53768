"""Progress bars of the long CLI steps (``train``, ``benchmark``, ``enjoy``): tqdm on stderr, as ``fit`` shows.

One bar per step, its total known up front and never passed: SB3 training counts environment steps up to
the run's (whole-rollout) total, CellTRIP counts environment steps as they are taken (not per update),
``enjoy`` counts episodes, ``benchmark`` counts its train/play jobs.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["bar", "sb3_progress_callback"]


def bar(total: int, desc: str, unit: str, *, enabled: bool = True, initial: int = 0, leave: bool | None = None) -> Any:
    """A tqdm bar on stderr (a no-op one when ``enabled`` is false); ``leave`` None: its last line stays
    unless it is nested in another bar (a training bar inside ``benchmark``'s)."""
    from tqdm.auto import tqdm

    return tqdm(total=int(total), initial=int(initial), desc=desc, unit=unit, file=sys.stderr,
                disable=not enabled, leave=leave, dynamic_ncols=True)


def sb3_progress_callback(total: int, *, start: int = 0, desc: str = "train", leave: bool | None = None) -> Any:
    """An SB3 callback that advances a bar to ``model.num_timesteps`` (from ``start``, of ``total``).

    The bar never reads past ``total``: a vector env steps ``n_envs`` at a time, so an off-policy run whose
    total is not a multiple of ``n_envs`` ends a few steps beyond it (SB3 stops at the first step >= total).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = bar(total, desc, "step", initial=start, leave=leave)

        def _on_step(self) -> bool:
            self.bar.update(min(self.model.num_timesteps, total) - self.bar.n)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()
