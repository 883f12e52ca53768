"""The task setups behind ``CellEnv-Reprogram-*``: HSC (Boolean Krumsiek), SERGIO, and any data set."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellgym.predictors.base import (
    CellgymError,
    DataSpec,
    DataSpecError,
    Predictor,
    RewardModel,
    Transition,
    UnknownPerturbationError,
    check_genes,
    expression,
)
from cellgym.registry import get, make_predictor, make_reward, predictor_class

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = [
    "HSC_FATES", "HSC_SCREEN_SPEC", "HSC_VOCABULARY", "SERGIO_THRESHOLD", "CellPoolSampler", "ProgenitorSampler",
    "SteadyStateSampler", "World", "build_world", "hsc_screen", "resolve_predictor", "truth_kwargs", "world_reward",
]

# Krumsiek et al. 2011 (PLoS ONE 6:e22649), Fig. 2: the four stable myeloid fates as the genes that are ON.
HSC_FATES: dict[str, tuple[str, ...]] = {
    "erythrocyte": ("Gata1", "Fog1", "Eklf", "Scl"),
    "megakaryocyte": ("Gata1", "Fog1", "Fli1", "Scl"),
    "monocyte": ("Pu1", "cJun", "EgrNab"),
    "granulocyte": ("Cebpa", "Pu1", "Gfi1"),
}
# Genes whose knockout and overexpression the HSC task offers (16 perturbations): the lineage
# regulators of the model; Fog1, cJun and EgrNab are left out as pure downstream targets.
HSC_VOCABULARY: tuple[str, ...] = ("Gata2", "Gata1", "Fli1", "Eklf", "Scl", "Cebpa", "Pu1", "Gfi1")
HSC_PRIMED: tuple[str, ...] = ("Cebpa", "Gata1", "Fli1", "Scl")
# SERGIO world: success within this fraction of the source-target steady-state distance. Measured on the
# lineages network over all six ordered type pairs and all 81 master KO/OE sets (steady states): the right
# sets (and their supersets) end 0.03-0.06 of that distance from the target, every other set 0.43 or more.
SERGIO_THRESHOLD = 0.15
# The true worlds' own simulators (``predictor=None`` or their registered name).
HSC_TRUTH: dict[str, Any] = {"model": "krumsiek11", "dynamics": "sync", "n_steps": 6}
# The HSC world with continuous (BoolODE-style) dynamics, whose perturbations take a dose: 40 Euler steps of
# 0.25 (10 decay times) per action, enough for a population to settle at the attractor a dose set leads to
# (measured: the same successes and distances within 0.01 of 100 steps of 0.1, at 2.5x the speed).
HSC_CONTINUOUS: dict[str, Any] = {"n_steps": 40, "dt": 0.25}
SERGIO_TRUTH: dict[str, Any] = {"network": "lineages", "overexpression": 1.0}
# How a learned HSC predictor reads :func:`hsc_screen`: X holds the Boolean states, one context.
HSC_SCREEN_SPEC = DataSpec(counts=None, context_key=None)
# The HSC goal reward's defaults: Euclidean distance of the population mean to the fate's 0/1 state.
HSC_GOAL: dict[str, dict[str, Any]] = {"target.centroid": {"metric": "euclidean"}}


@dataclass
class World:
    """Everything a reprogramming task needs; built once per env (or vector env).

    Attributes
    ----------
    transition
        The transition over B populations (a predictor or simulator).
    reward
        The reward model; its distance is 0 at the goal.
    perturbations
        The action vocabulary (P names, each a predictor perturbation or ``"A+B"`` combination).
    sampler
        Draws one starting population (N, G) float32 from a ``numpy.random.Generator``.
    reference
        Cells (M, G) the observation's PCA is fitted on (sources and targets).
    target
        Goal cells (T, G); their embedded mean and std are the goal summary.
    threshold
        Default success threshold on the distance.
    source_name, target_name
        What the start and goal cells are, as a biologist names them (figure legends, ``render()``).
    """

    transition: Transition
    reward: RewardModel
    perturbations: list[str]
    sampler: Any
    reference: torch.Tensor
    target: torch.Tensor
    threshold: float
    source_name: str = "source cells"
    target_name: str = "target cells"


class ProgenitorSampler:
    """Progenitor-like Boolean states of the Krumsiek model, varied per episode.

    Every cell has Gata2 on with probability 0.9 and Pu1 with probability ``0.5 + 0.5 u0``; each gene of
    ``HSC_PRIMED`` is on with probability ``u_j``, where the ``u ~ U(0, 1)`` are drawn once per
    population, so populations differ in how they are primed towards each lineage.
    """

    def __init__(self, genes: list[str], n_cells: int) -> None:
        self.n_cells = n_cells
        self.n_genes = len(genes)
        self.gata2 = genes.index("Gata2")
        self.pu1 = genes.index("Pu1")
        self.primed = [genes.index(g) for g in HSC_PRIMED]

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """One population (N, G) float32 of 0/1 states."""
        return self.draw(rng, 1)[0]

    def draw(self, rng: np.random.Generator, n_populations: int) -> np.ndarray:
        """``n_populations`` populations (n_populations, N, G) float32, each with its own priming ``u``."""
        u = rng.uniform(size=(n_populations, 1, 1 + len(self.primed)))
        p = np.zeros((n_populations, 1, self.n_genes))
        p[..., self.gata2] = 0.9
        p[..., self.pu1] = 0.5 + 0.5 * u[..., 0]
        p[..., self.primed] = u[..., 1:]
        return (rng.uniform(size=(n_populations, self.n_cells, self.n_genes)) < p).astype(np.float32)


class SteadyStateSampler:
    """``n_cells`` cells of one SERGIO cell type: its steady state (G,) times mean-one log-normal noise.

    Cell g of a population is ``state_g * exp(sigma z - sigma^2 / 2)``, ``z ~ N(0, 1)``: non-negative, with
    the steady state as its mean (unlike SERGIO's clipped Langevin noise, whose mean sits above it).
    """

    def __init__(self, state: np.ndarray, n_cells: int, sigma: float = 0.2) -> None:
        self.state = np.asarray(state, dtype=np.float64)
        self.n_cells = n_cells
        self.sigma = sigma

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """One population (N, G) float32."""
        z = rng.standard_normal((self.n_cells, self.state.size))
        return (self.state * np.exp(self.sigma * z - self.sigma**2 / 2)).astype(np.float32)


class CellPoolSampler:
    """``n_cells`` cells drawn with replacement from a pool (M, G)."""

    def __init__(self, pool: np.ndarray, n_cells: int) -> None:
        self.pool = np.ascontiguousarray(pool, dtype=np.float32)
        self.n_cells = n_cells

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """One population (N, G) float32."""
        return self.pool[rng.integers(0, self.pool.shape[0], size=self.n_cells)]


def _check_dynamic(predictor: Predictor, world: str) -> None:
    if not isinstance(predictor, Predictor) or predictor.module is None:
        raise DataSpecError(f"{world} world: expected a ready Predictor, got {type(predictor).__name__}.")


GoalFactory = Any  # (name, **kwargs) -> RewardModel: a goal reward on the world's target cells


def world_reward(reward: str | RewardModel | None, reward_kwargs: dict[str, Any] | None, predictor: Predictor,
                 goal_for: GoalFactory, default: str, world: str) -> RewardModel:
    """The world's reward model from ``reward`` (a registered name, an instance, or ``None``: ``default``).

    A goal name (``target.centroid``, ``target.energy``, ...) is built on the world's target cells by
    ``goal_for(name, **reward_kwargs)``. ``"uncertainty.penalised"`` wraps a goal reward (``reward_kwargs``:
    ``goal``, a goal name or instance, default ``default``; ``goal_kwargs``; ``lam``, default 1.0) around the
    world's transition, which must be an ``ensemble`` (its member disagreement is the penalty). An
    instance is used as it is. Unknown keys in ``reward_kwargs`` are refused in one line.
    """
    kwargs = dict(reward_kwargs or {})
    if isinstance(reward, RewardModel):
        if kwargs:
            raise DataSpecError(f"{world} world: reward_kwargs {sorted(kwargs)} need a reward *name*; the reward "
                                f"{type(reward).__name__} was passed ready-made. Drop reward_kwargs or pass reward by name.")
        return reward
    name = default if reward is None else str(reward)
    if name != "uncertainty.penalised":
        return goal_for(name, **kwargs)
    goal, goal_kwargs, lam = kwargs.pop("goal", default), dict(kwargs.pop("goal_kwargs", None) or {}), kwargs.pop("lam", 1.0)
    if kwargs:
        raise DataSpecError(f"{world} world: reward_kwargs {sorted(kwargs)} are not options of uncertainty.penalised; "
                            "it takes lam (>= 0), goal (a goal reward name) and goal_kwargs, e.g. {'lam': 0.5, 'goal': "
                            f"'{default}'}}.")
    if goal == "uncertainty.penalised":
        raise DataSpecError(f"{world} world: uncertainty.penalised needs a goal reward (e.g. {default!r}), not itself.")
    if not hasattr(predictor, "last_disagreement"):
        raise DataSpecError(f"{world} world: reward 'uncertainty.penalised' needs an ensemble world (its members' "
                            f"disagreement is the penalty), but the predictor is {predictor.name!r}; pass "
                            "predictor='ensemble' or a folder saved from an EnsemblePredictor.")
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise DataSpecError(f"{world} world: uncertainty.penalised lam must be a number >= 0, got {lam!r}.") from None
    goal_model = goal if isinstance(goal, RewardModel) else goal_for(str(goal), **goal_kwargs)
    return make_reward("uncertainty.penalised", goal=goal_model, predictor=predictor, lam=lam)


def truth_kwargs(env_kwargs: dict[str, Any], predictor: Any) -> dict[str, Any]:
    """A learned world's env kwargs for its *true* world (``predictor``): same task and goal, no model penalty.

    ``uncertainty.penalised`` becomes its goal reward (the truth has no ensemble to disagree), and a
    learned predictor's ``predictor_kwargs`` are dropped (``cellgym enjoy --truth`` replays in it).
    """
    out = {k: v for k, v in env_kwargs.items() if k != "predictor_kwargs"}
    if out.get("reward") == "uncertainty.penalised":
        options = dict(out.pop("reward_kwargs", None) or {})
        goal = options.get("goal")
        out.pop("reward")
        if goal is not None:
            out["reward"] = goal
            if options.get("goal_kwargs"):
                out["reward_kwargs"] = dict(options["goal_kwargs"])
    return {**out, "predictor": predictor}


def _goal_on(target: torch.Tensor | np.ndarray, world: str, **defaults: dict[str, Any]) -> GoalFactory:
    """``goal_for`` of :func:`world_reward` for a world whose goal rewards take ``target=`` cells.

    ``defaults`` maps a goal name to its default keyword arguments (e.g. the HSC centroid's metric).
    """

    def goal_for(name: str, **kwargs: Any) -> RewardModel:
        get("rewards", name)  # unknown names fail here, with close matches
        try:
            return make_reward(name, target=target, **{**defaults.get(name, {}), **kwargs})
        except TypeError as exc:
            raise DataSpecError(f"{world} world: goal reward {name!r} cannot be built on the target cells with "
                                f"{kwargs or 'no options'} ({exc}); use target.centroid or target.energy, or pass a "
                                "RewardModel instance.") from None

    return goal_for


def hsc_screen(n_cells_per_condition: int = 100, doubles: int = 40, seed: int = 0) -> AnnData:
    """The perturbation screen of the HSC world's simulator, run from the task's own start cells.

    Screen design (what a learned HSC world is fitted on):

    - **Start cells**: the progenitor-like states ``CellEnv-Reprogram-HSC-v0`` starts its episodes from
      (:class:`ProgenitorSampler`), each cell with its own priming draw, so every condition sees the
      whole range of populations the task draws.
    - **Conditions**: every single knockout / overexpression of the 11 genes (22) and ``doubles``
      random pairs on different genes; each condition's ``n_cells_per_condition`` cells are fresh start
      states run for one task step (``HSC_TRUTH``: 6 synchronous updates) under the perturbation
      (``grn.boolean``'s ``sample_batch``), i.e. exactly what one action of the task does.
    - **Controls** (``"control"``): start states run the same 6 updates unperturbed (time-matched, as in
      a real screen), so an effect is perturbed minus unperturbed after one step. Controls taken at time
      0 instead (the start states themselves) were measured to be worse: every effect then carries the
      unperturbed drift (Gata2 1 -> 0), an additive model counts it twice in a two-action episode, and
      MaskablePPO trained in that world stopped after one action (0% success replayed in the true world).

    Parameters
    ----------
    n_cells_per_condition
        Cells per condition (control included).
    doubles
        Number of random double perturbations (pairs of singles on different genes).
    seed
        Seed of every draw; the same seed gives the same AnnData.

    Returns
    -------
    AnnData (C x n_cells_per_condition cells, 11 genes): ``X`` float32 0/1 states (the task's cells; no
    counts, so fit with :data:`HSC_SCREEN_SPEC`: ``cellgym fit ... --counts none --context-key none``),
    ``obs['perturbation']`` (``control``, ``A``, ``A+B``), ``obs['cell_type']`` each cell's fate (not a
    context), ``uns['grn']`` the simulator config and screen design.
    """
    import anndata as ad
    import pandas as pd

    if n_cells_per_condition < 1 or doubles < 0:
        raise DataSpecError(f"hsc_screen: expected n_cells_per_condition >= 1 and doubles >= 0, "
                            f"got {n_cells_per_condition} and {doubles}.")
    truth = make_predictor("grn.boolean", **HSC_TRUTH)
    genes = list(truth.genes)
    singles = list(truth.perturbations)
    target_gene = [p.rsplit("_", 1)[0] for p in singles]
    pairs = [(i, j) for i in range(len(singles)) for j in range(i + 1, len(singles)) if target_gene[i] != target_gene[j]]
    if doubles > len(pairs):
        raise DataSpecError(f"hsc_screen: doubles={doubles}, but only {len(pairs)} pairs act on different genes.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(pairs), size=doubles, replace=False))
    conditions = ["control", *singles, *(f"{singles[pairs[k][0]]}+{singles[pairs[k][1]]}" for k in chosen)]
    labels = np.repeat(np.asarray(conditions, dtype=object), n_cells_per_condition)
    starts = ProgenitorSampler(genes, 1).draw(rng, labels.size)[:, 0]  # (C n, G): one priming draw per cell
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x = truth.sample_batch(torch.from_numpy(starts), truth.encode_perturbations(labels), generator=generator).numpy()
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels.astype(str), categories=conditions),
                        "cell_type": pd.Categorical(truth.attractor_label(x))})
    obs.index = obs.index.astype(str)
    config = {k: ("" if v is None else v) for k, v in truth.config.items()}  # h5ad cannot store None
    uns = {"grn": {"predictor": truth.name, "config": config, "seed": int(seed), "conditions": conditions,
                   "n_cells_per_condition": int(n_cells_per_condition),
                   "design": "task start states run one task step (6 sync updates) under each condition, control unperturbed",
                   "rules": dict(truth.network.rules)}}
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)), uns=uns)


def _resolve_world_predictor(predictor: str | Path | Predictor | None, truth: str, truth_kwargs: dict[str, Any],
                             screen: Any, spec: DataSpec, predictor_kwargs: dict[str, Any] | None = None) -> Predictor:
    """The world's own simulator (``None`` or its name ``truth``), else :func:`resolve_predictor`.

    ``screen`` is called for the data to fit a registered name on (only then).
    """
    if predictor is None or (isinstance(predictor, str) and predictor == truth):
        return make_predictor(truth, **{**truth_kwargs, **(predictor_kwargs or {})})
    is_folder = not isinstance(predictor, Predictor) and Path(predictor).is_dir()
    return resolve_predictor(predictor, None if isinstance(predictor, Predictor) or is_folder else screen(), spec,
                             predictor_kwargs=predictor_kwargs)


def hsc_world(*, fate: str, n_cells: int, predictor: str | Path | Predictor | None, dynamics: str = "sync",
              reward: str | RewardModel | None = None, reward_kwargs: dict[str, Any] | None = None,
              predictor_kwargs: dict[str, Any] | None = None) -> World:
    """Krumsiek 2011 myeloid Boolean network (synchronous updates, 6 per action) to fate ``fate``.

    ``predictor``: ``None`` or ``"grn.boolean"`` (the true world), a saved predictor folder, a fitted
    instance, or another registered name (fitted on :func:`hsc_screen`, cached). A learned predictor
    must have the network's 11 genes and the task's 16 perturbations in its vocabulary.
    ``dynamics``: the true world's updates, ``"sync"`` or the continuous ``"ode"`` / ``"sde"`` (BoolODE-style,
    ``HSC_CONTINUOUS``: 40 Euler steps of 0.25 per action, noise-free mean path), whose perturbations take doses.
    ``reward``: ``None`` (``target.centroid``, Euclidean, to the fate's state), a goal name, or
    ``"uncertainty.penalised"`` with ``reward_kwargs`` ``{"lam": ..., "goal": ...}`` in an ensemble world
    (:func:`world_reward`). ``predictor_kwargs``: constructor options of a registered ``predictor`` name
    (e.g. ``{"members": ["baseline.linear", "gem1.bulk"]}`` for ``"ensemble"``), fitted on :func:`hsc_screen`.
    """
    if fate not in HSC_FATES:
        raise DataSpecError(f"HSC fate {fate!r}: expected one of {sorted(HSC_FATES)}.")
    truth = HSC_TRUTH if dynamics == "sync" else {**HSC_TRUTH, "dynamics": dynamics, **HSC_CONTINUOUS}
    predictor = _resolve_world_predictor(predictor, "grn.boolean", truth, hsc_screen, HSC_SCREEN_SPEC, predictor_kwargs)
    _check_dynamic(predictor, "HSC")
    genes = list(make_predictor("grn.boolean", **HSC_TRUTH).genes)
    check_genes(genes, predictor.genes)  # GeneMismatchError naming the missing genes
    vocabulary = [f"{g}_{kind}" for g in HSC_VOCABULARY for kind in ("KO", "OE")]
    missing = [p for p in vocabulary if p not in set(predictor.perturbations)]
    if missing:
        raise UnknownPerturbationError(
            f"HSC world: predictor {predictor.name!r} does not know {len(missing)} of the task's perturbations "
            f"({missing[:6]}); fit it on a screen that has them all (cellgym.envs.reprogram.hsc_screen()).")
    target = torch.zeros(1, len(genes))
    target[0, [genes.index(g) for g in HSC_FATES[fate]]] = 1.0
    sampler = ProgenitorSampler(genes, n_cells)
    rng = np.random.default_rng(0)
    fates = torch.zeros(len(HSC_FATES), len(genes))
    for i, on in enumerate(HSC_FATES.values()):
        fates[i, [genes.index(g) for g in on]] = 1.0
    reference = torch.cat([torch.from_numpy(np.concatenate([sampler(rng) for _ in range(32)])), fates.repeat(64, 1)])
    return World(
        transition=Transition(predictor),
        reward=world_reward(reward, reward_kwargs, predictor, _goal_on(target, "HSC", **HSC_GOAL), "target.centroid", "HSC"),
        perturbations=vocabulary,
        sampler=sampler,
        reference=reference,
        target=target,
        threshold=0.3,
        source_name="progenitor-like cells",
        target_name=fate,
    )


def sergio_world(*, source: str | None, target: str | None, n_cells: int, predictor: str | Path | Predictor | None) -> World:
    """SERGIO cells (Dibaeinia & Sinha 2020) of cell type ``source`` to be turned into type ``target``.

    Default network: ``grn.sergio``'s shipped ``"lineages"`` network (no files needed; 20 genes, 4
    master regulators, 3 types: see ``cellgym.predictors.grn.SergioNetwork.lineages``), with
    overexpression at each master's highest natural rate (``overexpression=1.0``), source type0,
    target type1. The transition is the noise-free (mean-field) SERGIO dynamics in the source type,
    10 time units per action; the vocabulary is the knockout and overexpression of every master regulator.

    Cells of a type are its noise-free steady state (the transition's own fixed point) times mean-one
    log-normal noise (:class:`SteadyStateSampler`), so unperturbed populations stay at their type.
    Success threshold: ``SERGIO_THRESHOLD`` x the distance between the two types' steady states.
    """
    predictor = _resolve_world_predictor(predictor, "grn.sergio", SERGIO_TRUTH, lambda: None, DataSpec())
    _check_dynamic(predictor, "SERGIO")
    if not hasattr(predictor, "steady_state") or not hasattr(predictor, "network"):
        raise DataSpecError(
            f"SERGIO world: expected a grn.sergio predictor (the simulator: name, saved folder or instance), got {predictor.name!r}: "
            "its cell types are the simulator's steady states. For a learned SERGIO world use "
            "CellEnv-Reprogram-Screen-v0 or CellEnv-Reprogram-v0 with the screen as adata=.")
    types = list(predictor.contexts)
    source = source if source is not None else types[0]
    target = target if target is not None else types[1]
    for what, t in (("source", source), ("target", target)):
        if t not in types:
            raise DataSpecError(f"SERGIO {what} cell type {t!r}: expected one of {types}.")
    if source == target:
        raise DataSpecError(f"SERGIO world: source and target are both {source!r}; pick two different cell types of {types}.")
    src_state, tgt_state = predictor.steady_state(source).numpy(), predictor.steady_state(target).numpy()
    rng = np.random.default_rng(0)
    target_cells = torch.from_numpy(SteadyStateSampler(tgt_state, 256)(rng))
    source_cells = torch.from_numpy(SteadyStateSampler(src_state, 256)(rng))
    masters = [predictor.genes[i] for i in predictor.network.master]
    return World(
        transition=Transition(predictor, context=source),
        reward=make_reward("target.centroid", target=target_cells, metric="euclidean"),
        perturbations=[f"{g}_{kind}" for g in masters for kind in ("KO", "OE")],
        sampler=SteadyStateSampler(src_state, n_cells),
        reference=torch.cat([source_cells, target_cells]),
        target=target_cells,
        threshold=SERGIO_THRESHOLD * float(np.linalg.norm(src_state - tgt_state)),
        source_name=source,
        target_name=target,
    )


# ---------------------------------------------------------------------------------------- generic data
def _select(adata: AnnData, spec: DataSpec, which: object, what: str) -> np.ndarray:
    """Boolean mask over cells from a selection: a perturbation label, ``"column=value"``, a boolean mask, or a
    combination (all of them must hold): ``"control,cell_type=B"`` or ``["control", "cell_type=B", mask]``.

    In a comma-separated string, values of one column are alternatives (``"cell_type=A,cell_type=B"``: either)
    and different columns must all match, as ``--subset`` does; a bare label names a perturbation.
    """
    if isinstance(which, str):
        mask = _select_pairs(adata, spec, which, what)
    elif isinstance(which, (list, tuple)) and not _is_mask_like(which, adata.n_obs):
        if not which:
            raise DataSpecError(f"{what}=[]: pass a perturbation label, 'column=value', a boolean mask or a list of them.")
        mask = np.logical_and.reduce([_select(adata, spec, part, what) for part in which])
    else:
        mask = np.asarray(which)
        if mask.dtype != bool or mask.shape != (adata.n_obs,):
            raise DataSpecError(f"{what}: expected a label, 'column=value', or a boolean mask of shape ({adata.n_obs},); "
                                f"got {type(which).__name__} of dtype {mask.dtype} and shape {mask.shape}.")
    if not mask.any():
        shown = which if isinstance(which, str) else f"<{type(which).__name__}>"
        raise DataSpecError(f"{what}={shown!r} selects no cells; pass a perturbation label, 'column=value', a mask, or a "
                            "combination that some cells satisfy.")
    return mask


def _is_mask_like(which: list | tuple, n: int) -> bool:
    return len(which) == n and all(isinstance(v, (bool, np.bool_)) for v in which)


def _select_pairs(adata: AnnData, spec: DataSpec, which: str, what: str) -> np.ndarray:
    groups: dict[str, list[str]] = {}
    for part in (p.strip() for p in which.split(",")):
        if not part:
            raise DataSpecError(f"{what}={which!r}: an empty item; write e.g. 'control,cell_type=B'.")
        key, _, value = part.partition("=") if "=" in part else (spec.perturbation_key, "", part)
        if key not in adata.obs:
            raise DataSpecError(f"{what}={which!r}: adata.obs has no column {key!r}; columns are {list(adata.obs)}.")
        groups.setdefault(key, []).append(value)
    masks = [adata.obs[key].astype(str).isin(values).to_numpy() for key, values in groups.items()]
    return np.logical_and.reduce(masks)


class SourceContexts:
    """Each source cell's own context index, recovered from the cell itself.

    Episodes draw their populations from a pool of source cells (exact copies of its rows), and a response
    model's next state is predicted from them, so a cell's context (cell type / line) is the context of the
    pool row it copies. Rows are found by an exact integer hash of their float32 bits (order-independent, so
    identical in every batch), then checked for equality.
    """

    def __init__(self, pool: np.ndarray, ctx: np.ndarray) -> None:
        self.pool = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
        gen = torch.Generator().manual_seed(0)
        self.coeff = torch.randint(1, 2**31 - 1, (self.pool.shape[1],), generator=gen, dtype=torch.int64)
        keys = self._hash(self.pool)
        self.keys, order = torch.sort(keys)
        self.pool, self.ctx = self.pool[order], torch.as_tensor(ctx, dtype=torch.long)[order]

    def _hash(self, cells: torch.Tensor) -> torch.Tensor:
        bits = cells.contiguous().view(torch.int32).to(torch.int64)
        return (bits * self.coeff.to(cells.device)).sum(1)  # wraps identically for identical rows

    def __call__(self, cells: torch.Tensor) -> torch.Tensor:
        """Context indices (M,) int64 of source cells (M, G)."""
        cells = cells.to("cpu", torch.float32)
        i = torch.searchsorted(self.keys, self._hash(cells)).clamp_max(len(self.keys) - 1)
        if not torch.equal(self.pool[i], cells):
            raise DataSpecError("the transition got source cells that are not rows of the task's source pool, so their "
                                "contexts are unknown; pass context= to use one context for every cell.")
        return self.ctx[i]


def _transition_context(adata: AnnData, spec: DataSpec, model: Predictor, src_mask: np.ndarray, src: np.ndarray,
                        source: object) -> str | SourceContexts | None:
    """The context of the source cells for the transition: one label, each cell's own, or the model's only one."""
    key = spec.context_key
    if key is None or key not in adata.obs:
        return None
    labels = adata.obs[key].astype(str).to_numpy()[src_mask]
    present = sorted(set(labels))
    if len(present) == 1:
        return present[0] if present[0] in model.contexts or len(model.contexts) > 1 else None
    unknown = [c for c in present if c not in model.contexts]
    if len(model.contexts) <= 1 or unknown:
        knows = "has one context" if len(model.contexts) <= 1 else f"does not know {unknown[:5]} (it knows {model.contexts[:5]})"
        example = f"{source},{key}={present[0]}" if isinstance(source, str) else f"[..., '{key}={present[0]}']"
        raise DataSpecError(
            f"source spans {len(present)} contexts in adata.obs[{key!r}] ({present[:5]}) but the predictor {knows}, so "
            f"it cannot tell their cells apart. Pick one context, e.g. source={example!r}, or use a predictor fitted "
            f"with context_key={key!r} on all of them."
        )
    index = {c: i for i, c in enumerate(model.contexts)}
    return SourceContexts(src, np.array([index[c] for c in labels], dtype=np.int64))


def _cache_dir() -> Path:
    return Path(os.environ.get("CELLGYM_CACHE") or Path.home() / ".cache" / "cellgym")


def data_hash(adata: AnnData, spec: DataSpec, name: str, config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the expression, labels, genes, spec, predictor name and config."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": name, "config": config, "spec": spec.to_dict()}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(expression(adata, spec)).tobytes())
    for col in [spec.perturbation_key, spec.context_key]:
        if col is not None and col in adata.obs:
            h.update("\0".join(adata.obs[col].astype(str)).encode())
    h.update("\0".join(map(str, adata.var_names)).encode())
    return h.hexdigest()[:16]


def resolve_predictor(predictor: str | Path | Predictor, adata: AnnData | None, spec: DataSpec, *,
                      extra_perturbations: Sequence[str] = (), predictor_kwargs: dict[str, Any] | None = None) -> Predictor:
    """A ready predictor from an instance, a saved folder, or a registered name (fitted on ``adata``, cached).

    A registered name is fitted once on ``adata`` (seed 0) and saved under
    ``$CELLGYM_CACHE/predictors/<name>-<hash>`` (default cache ``~/.cache/cellgym``), the hash covering
    data, spec and config, so the next env on the same data loads it instead of refitting.
    ``extra_perturbations`` (singles absent from ``adata``) are passed to a registered predictor whose
    constructor accepts them, so that it can predict them. ``predictor_kwargs`` are a registered name's
    constructor options (part of the cache hash); with an instance or a folder they are refused.
    """
    if predictor_kwargs and (isinstance(predictor, Predictor) or Path(predictor).is_dir()):
        raise DataSpecError(f"predictor_kwargs {sorted(predictor_kwargs)} configure a predictor fitted by *name*; "
                            f"{predictor!s} is already built. Drop predictor_kwargs or pass a registered name.")
    if isinstance(predictor, Predictor):
        if predictor.module is None:
            raise DataSpecError(f"predictor {predictor!r} is not fitted; fit it or pass its registered name.")
        return predictor
    path = Path(predictor)
    if path.is_dir() and (path / "config.yaml").exists():
        return Predictor.load(path)
    name = str(predictor)
    if path.is_dir():
        raise DataSpecError(f"predictor folder {name!r} has no config.yaml: it is not a saved predictor. Pass a "
                            "folder written by `cellgym fit --out` or Predictor.save.")
    if "/" in name or "\\" in name:  # registered names are dotted; a path that does not exist is a typo
        raise DataSpecError(f"predictor {name!r}: no such folder (relative to {Path.cwd()}). Pass a folder "
                            "written by `cellgym fit --out`, or a registered name (`cellgym list predictors`).")
    get("predictors", name)  # unknown names fail here, with close matches
    if adata is None:
        raise DataSpecError(f"predictor {name!r} must be fitted, so the task needs adata=...; or pass a fitted instance.")
    accepts_extra = "extra_perturbations" in inspect.signature(predictor_class(name).__init__).parameters
    options = {**(predictor_kwargs or {}),
               **({"extra_perturbations": list(extra_perturbations)} if extra_perturbations and accepts_extra else {})}
    try:
        model = make_predictor(name, **options)
    except TypeError as exc:
        raise DataSpecError(f"predictor {name!r}: predictor_kwargs {sorted(options)} are not its options ({exc}).") from None
    folder = _cache_dir() / "predictors" / f"{name}-{data_hash(adata, spec, name, model.config)}"
    if (folder / "config.yaml").exists():
        try:
            return Predictor.load(folder)
        except CellgymError:
            log.warning("cached predictor %s is unreadable; refitting", folder)
    model.fit(adata, spec, seed=0)
    model.save(folder)
    return model


def data_world(
    *,
    adata: AnnData,
    spec: DataSpec | None,
    source: object,
    target: object,
    predictor: str | Path | Predictor,
    reward: str | RewardModel | None,
    n_cells: int,
    context: str | None,
    reward_kwargs: dict[str, Any] | None = None,
    predictor_kwargs: dict[str, Any] | None = None,
) -> World:
    """Any AnnData: cells selected by ``source`` towards cells selected by ``target``.

    Selections: see :func:`_select` (labels, ``column=value``, masks and their combinations). Without
    ``context``, each source cell keeps its own context (cell type / line) in the transition; a source that
    spans contexts the predictor cannot tell apart is refused. ``reward``: ``None`` (``target.energy``), a
    goal name, an instance, or ``"uncertainty.penalised"`` with ``reward_kwargs`` (:func:`world_reward`).
    """
    spec = spec or DataSpec()
    model = resolve_predictor(predictor, adata, spec, predictor_kwargs=predictor_kwargs)
    x = expression(adata, spec)
    if list(map(str, adata.var_names)) != list(model.genes):
        check_genes(model.genes, adata.var_names)
        x = x[:, [list(map(str, adata.var_names)).index(g) for g in model.genes]]
    source = spec.control if source is None else source
    src_mask = _select(adata, spec, source, "source")
    src = x[src_mask]
    tgt = x[_select(adata, spec, target, "target")]
    rng = np.random.default_rng(0)
    tgt_ref = tgt[rng.permutation(tgt.shape[0])[:512]]
    on_target = _goal_on(tgt_ref, "data")

    def goal_for(name: str, **kwargs: Any) -> RewardModel:
        if name != "target.classifier":
            return on_target(name, **kwargs)
        labels = ["source"] * src.shape[0] + ["target"] * tgt.shape[0]
        return make_reward(name, cells=np.concatenate([src, tgt]), labels=labels, target="target", **kwargs)

    def data_goal(name: str, **kwargs: Any) -> RewardModel:
        if name == "state.embedding":  # fits an SE model on the world's source and goal cells
            return make_reward(name, target=tgt_ref, cells=src[rng.permutation(src.shape[0])[:1024]], **kwargs)
        return goal_for(name, **kwargs)

    reward_model = world_reward(reward, reward_kwargs, model, data_goal, "target.energy", "data")
    transition_context = context if context is not None else _transition_context(adata, spec, model, src_mask, src, source)
    sampler = CellPoolSampler(src, n_cells)
    floor = float(reward_model.distance(torch.from_numpy(tgt[rng.integers(0, tgt.shape[0], n_cells)])[None]))
    start = float(reward_model.distance(torch.from_numpy(sampler(rng))[None]))
    reference = np.concatenate([src[rng.permutation(src.shape[0])[:1024]], tgt_ref])
    return World(
        transition=Transition(model, context=transition_context),
        reward=reward_model,
        perturbations=list(model.perturbations),
        sampler=sampler,
        reference=torch.from_numpy(reference),
        target=torch.from_numpy(tgt_ref),
        threshold=floor + 0.25 * max(start - floor, 0.0),
        source_name=source if isinstance(source, str) else "control" if source is None else "source cells",
        target_name=target if isinstance(target, str) else "target cells",
    )


def build_world(world: str, **kw: Any) -> World:
    """Dispatch to the ``hsc``, ``sergio`` or ``data`` builder."""
    if world == "hsc":
        return hsc_world(fate=kw["fate"], n_cells=kw["n_cells"], predictor=kw["predictor"], dynamics=kw.get("dynamics", "sync"),
                         reward=kw.get("reward"), reward_kwargs=kw.get("reward_kwargs"),
                         predictor_kwargs=kw.get("predictor_kwargs"))
    if world == "sergio":
        if kw.get("reward") is not None or kw.get("reward_kwargs") or kw.get("predictor_kwargs"):
            raise DataSpecError("the SERGIO world's reward is target.centroid to the target type and its predictor the "
                                "simulator: drop reward=, reward_kwargs= and predictor_kwargs= (they are for the hsc "
                                "and data worlds).")
        return sergio_world(source=kw["source"], target=kw["target"], n_cells=kw["n_cells"], predictor=kw["predictor"])
    if world == "data":
        if kw["adata"] is None or kw["target"] is None or kw["predictor"] is None:
            raise DataSpecError("world='data' needs adata=..., target=... and predictor=... (source defaults to 'control').")
        return data_world(
            adata=kw["adata"], spec=kw["spec"], source=kw["source"], target=kw["target"], predictor=kw["predictor"],
            reward=kw["reward"], n_cells=kw["n_cells"], context=kw["context"], reward_kwargs=kw.get("reward_kwargs"),
            predictor_kwargs=kw.get("predictor_kwargs"),
        )
    raise DataSpecError(f"world {world!r}: expected 'hsc', 'sergio' or 'data'.")
