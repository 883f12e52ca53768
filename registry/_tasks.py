"""Every ``CellEnv-*`` task, registered the way Gymnasium registers its own (one file, lazy entry points).

``cellgym.envs`` imports this module, so ``gymnasium.make("CellEnv-...")`` works after ``import cellgym.envs``
(or with the ``"cellgym.envs:CellEnv-..."`` prefix). PettingZoo tasks go through ``register_parallel_task``.
"""

from __future__ import annotations

import gymnasium

from ._registry import describe_task, register_parallel_task  # noqa: F401


def _register(task_id: str, summary: str, **kwargs: object) -> None:
    if task_id not in gymnasium.registry:
        gymnasium.register(id=task_id, **kwargs)  # type: ignore[arg-type]
    describe_task(task_id, summary)


# --- reprogramming worlds (envs/reprogram) ---------------------------------------------------------------

# --- GEM-1 learned worlds (predictors/gem1 + envs/reprogram) ----------------------------------------------

# --- CellTRIP multi-agent worlds (envs/trip) -------------------------------------------------------------
