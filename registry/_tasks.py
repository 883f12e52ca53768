"""Every ``CellEnv-*`` task, registered the way Gymnasium registers its own (one file, lazy entry points).

``cellgym.envs`` imports this module, so ``gymnasium.make("CellEnv-...")`` works after ``import cellgym.envs``
(or with the ``"cellgym.envs:CellEnv-..."`` prefix). PettingZoo tasks go through ``register_parallel_task``.
"""

from __future__ import annotations

import gymnasium

from ._registry import describe_task, register_parallel_task


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
_register("CellEnv-Reprogram-SERGIO-v0",
          "SERGIO 'lineages' network (20 genes, 3 cell types): turn type0 cells into type1 (8 master-regulator KO/OE).",
          entry_point=_REPROGRAM, vector_entry_point=_REPROGRAM_VEC, max_episode_steps=6,
          kwargs={"world": "sergio", "source": "type0", "target": "type1", "budget": 6})
_register("CellEnv-Reprogram-HSC-Dose-v0",
          "Krumsiek 2011 network in BoolODE-style SDE dynamics: progenitors to erythrocytes with doses (16 KO/OE in [0, 1]).",
          entry_point=_REPROGRAM, vector_entry_point=_REPROGRAM_VEC, max_episode_steps=6,
          kwargs={"world": "hsc", "fate": "erythrocyte", "budget": 6, "dynamics": "sde", "action_mode": "dose"})
_register("CellEnv-Reprogram-v0",
          "Any AnnData: source cells towards target cells through a fitted predictor (adata=, target=, predictor=).",
          entry_point=_REPROGRAM, vector_entry_point=_REPROGRAM_VEC, max_episode_steps=8,
          kwargs={"world": "data", "budget": 8})

# --- GEM-1 learned worlds (predictors/gem1 + envs/reprogram) ----------------------------------------------
def gem1_screen_world(n_cells_per_condition: int = 40, doubles: int = 4, seed: int = 0) -> dict[str, object]:
    """The learned world of ``CellEnv-Reprogram-Screen-v0``: GEM-1 fitted on a screen simulated by ``grn.sergio``.

    The ground truth is the SERGIO ``lineages`` network of ``CellEnv-Reprogram-SERGIO-v0`` (overexpression
    at each master's highest natural rate). :func:`~cellgym.predictors.grn.simulate_screen` screens the
    knockout and overexpression of the four master regulators (and ``doubles`` random pairs) in all three
    cell types, as UMI counts; ``gem1.sc`` is fitted on it (seed 0, cached by the reprogram env's
    predictor cache) and serves as the transition (``ref_predict_perturbation``, mean mode) and, through
    ``gem1.classifier``, as the reward (probability of ``type1`` under its cell-type classifier).
    Returns the ``ReprogramEnv`` keyword arguments (``world="data"``): type0 controls -> type1 controls.
    """

    from cellgym.envs.reprogram import resolve_predictor
    from cellgym.predictors import DataSpec
    from cellgym.predictors.gem1 import Gem1ClassifierReward
    from cellgym.predictors.grn import simulate_screen
    from cellgym.registry import make_predictor

    truth = make_predictor("grn.sergio", network="lineages", overexpression=1.0)
    masters = [truth.genes[i] for i in truth.network.master]
    singles = [f"{g}_{k}" for g in masters for k in ("KO", "OE")]
    screen = simulate_screen(truth, n_cells_per_condition=n_cells_per_condition, perturbations=singles, doubles=doubles, seed=seed)
    spec = DataSpec(context_key="cell_type", counts="counts")
    model = resolve_predictor("gem1.sc", screen, spec)
    control = (screen.obs["perturbation"] == "control").to_numpy()
    cell_type = screen.obs["cell_type"].astype(str).to_numpy()
    return {
        "world": "data", "adata": screen, "spec": spec, "predictor": model,
        "source": control & (cell_type == "type0"), "target": control & (cell_type == "type1"),
        "reward": Gem1ClassifierReward(model, goal="type1", column="cell_type"), "context": "type0",
    }


def make_gem1_screen_env(**kwargs: object) -> object:
    """``CellEnv-Reprogram-Screen-v0``: a ``ReprogramEnv`` in the GEM-1 learned world (see :func:`gem1_screen_world`)."""
    from cellgym.envs.reprogram import ReprogramEnv

    return ReprogramEnv(**{**gem1_screen_world(), **kwargs})


def make_gem1_screen_vector_env(num_envs: int = 1, **kwargs: object) -> object:
    """Native vector env of ``CellEnv-Reprogram-Screen-v0``."""
    from cellgym.envs.reprogram import ReprogramVectorEnv

    return ReprogramVectorEnv(num_envs, **{**gem1_screen_world(), **kwargs})


_register("CellEnv-Reprogram-Screen-v0",
          "Learned world: gem1.sc fitted on a grn.sergio screen; turn type0 into type1 (8 master KO/OE), GEM-1 classifier reward.",
          entry_point="cellgym.registry._tasks:make_gem1_screen_env",
          vector_entry_point="cellgym.registry._tasks:make_gem1_screen_vector_env", max_episode_steps=6,
          kwargs={"budget": 6})


# --- inverse design (envs/design): the goal is a held-out condition's measured cells -------------------------
_DESIGN = "cellgym.envs.design:"
_register("CellEnv-Design-v0",
          "Inverse design on any screen: which perturbations produce the target condition's cells? (adata=, target=).",
          entry_point=_DESIGN + "make_design_env", vector_entry_point=_DESIGN + "make_design_vector_env")
_register("CellEnv-Design-Norman-v0",
          "Norman 2019 K562 CRISPRa: recover held-out doubles from their cells; world fitted without them (path=).",
          entry_point=_DESIGN + "make_norman_env", vector_entry_point=_DESIGN + "make_norman_vector_env")
_register("CellEnv-Design-Papalexi-v0",
          "Papalexi 2021 THP-1 knockouts: recover held-out knockouts from their cells (path=).",
          entry_point=_DESIGN + "make_papalexi_env", vector_entry_point=_DESIGN + "make_papalexi_vector_env")
_register("CellEnv-Design-SERGIO-v0",
          "Embedded default: recover held-out doubles of a simulated grn.sergio screen (no file needed).",
          entry_point=_DESIGN + "make_sergio_env", vector_entry_point=_DESIGN + "make_sergio_vector_env")


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
