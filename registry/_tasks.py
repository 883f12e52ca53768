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
_REPROGRAM = "cellgym.envs.reprogram:ReprogramEnv"
_REPROGRAM_VEC = "cellgym.envs.reprogram:ReprogramVectorEnv"
_register("CellEnv-Reprogram-HSC-v0",
          "Krumsiek 2011 myeloid Boolean network: turn progenitor-like cells into erythrocytes (16 KO/OE).",
          entry_point=_REPROGRAM, vector_entry_point=_REPROGRAM_VEC, max_episode_steps=6,
          kwargs={"world": "hsc", "fate": "erythrocyte", "budget": 6})
# CellEnv-Reprogram-SERGIO-v0 is not registered yet: with grn.sergio's mean-field transition and
# master-regulator KO/OE, no combination brings one DS1 cell type within reach of another (see
# ReprogramEnv(world="sergio"), kept for experiments).
_register("CellEnv-Reprogram-v0",
          "Any AnnData: source cells towards target cells through a fitted predictor (adata=, target=, predictor=).",
          entry_point=_REPROGRAM, vector_entry_point=_REPROGRAM_VEC, max_episode_steps=8,
          kwargs={"world": "data", "budget": 8})

# --- GEM-1 learned worlds (predictors/gem1 + envs/reprogram) ----------------------------------------------

# --- CellTRIP multi-agent worlds (envs/trip) -------------------------------------------------------------
register_parallel_task(
    "CellEnv-Trip-Integration-v0", "cellgym.envs.trip:make_integration_env",
    "CellTRIP: cells arrange themselves so the space reproduces two simulated modalities (RNA + protein).")
register_parallel_task(
    "CellEnv-Trip-Imputation-v0", "cellgym.envs.trip:make_imputation_env",
    "CellTRIP: cells see expression and arrange themselves to reproduce a simulated tissue's space.")
register_parallel_task(
    "CellEnv-Trip-v0", "cellgym.envs.trip:make_trip_env",
    "CellTRIP on your data: make(..., adatas=[...], input_modalities=[...], target_modalities=[...]).")
