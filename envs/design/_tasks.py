"""Design problems (a held-out target condition and the world fitted without it) and the env factories."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellgym.envs.reprogram import ReprogramEnv, ReprogramVectorEnv, resolve_predictor
from cellgym.predictors.base import DataSpec, DataSpecError, Predictor, expression, validate
from cellgym.predictors.base._data import read_h5ad

if TYPE_CHECKING:
    import gymnasium as gym
    from anndata import AnnData


DEFAULT_PREDICTOR = "baseline.additive"


@dataclass
class DesignProblem:
    """One inverse-design question: which perturbation set turns ``source`` cells into ``target`` cells?

    Attributes
    ----------
    adata, spec
        The whole screen (the target's cells included: they are the goal, never training data).
    target
        The held-out condition's label (``"A"`` or ``"A+B"``): the answer the agent should recover.
    context
        The cell type / line of source and target (None for a one-context screen).
    holdout
        Every label the world is fitted without (the target and the other targets of the same benchmark,
        so one fitted world serves them all).
    vocabulary
        The screen's single perturbations (measured alone or inside a combination): the action set.
    max_perturbations
        The largest set the question allows (the episode length): the size of the largest held-out set.
    """

    adata: AnnData
    spec: DataSpec
    target: str
    context: str | None
    holdout: tuple[str, ...]
    vocabulary: list[str]
    max_perturbations: int = 2

    def _contexts(self) -> np.ndarray:
        key = self.spec.context_key
        if key is None or key not in self.adata.obs:
            return np.full(self.adata.n_obs, "", dtype=object)
        return self.adata.obs[key].astype(str).to_numpy()

    def _in_context(self) -> np.ndarray:
        return np.ones(self.adata.n_obs, bool) if self.context is None else self._contexts() == self.context

    @property
    def labels(self) -> np.ndarray:
        """Every cell's perturbation label."""
        return self.adata.obs[self.spec.perturbation_key].astype(str).to_numpy()

    @property
    def train_mask(self) -> np.ndarray:
        """Cells the world may be fitted on: all but the held-out labels' cells."""
        return ~np.isin(self.labels, self.holdout)

    @property
    def source_mask(self) -> np.ndarray:
        """Control cells of the target's context: the starting population."""
        return (self.labels == self.spec.control) & self._in_context()

    @property
    def target_mask(self) -> np.ndarray:
        """The measured cells of the target condition in its context: the goal."""
        return (self.labels == self.target) & self._in_context()

    def measured(self) -> dict[frozenset[str], np.ndarray]:
        """Expression (n, G) of every measured perturbation set of the context (control excluded)."""
        x = expression(self.adata, self.spec)
        inside = self._in_context()
        out: dict[frozenset[str], np.ndarray] = {}
        for label in np.unique(self.labels[inside]):
            if label != self.spec.control:
                out[frozenset(self.spec.split_label(label))] = x[inside & (self.labels == label)]
        return out

    def fit_world(self, predictor: str | Path | Predictor = DEFAULT_PREDICTOR) -> Predictor:
        """The world's predictor, fitted on :attr:`train_mask` cells only (cached by data and config).

        Singles of the vocabulary never measured in training (a held-out knockout) are declared as
        ``extra_perturbations`` where the predictor accepts them, so it can predict them (baselines and
        GEM-1 with their generic effect); predictors that cannot are refused with one line.
        """
        train = self.adata[self.train_mask].copy()
        seen = {s for lab in np.unique(self.labels[self.train_mask]) for s in self.spec.split_label(lab)}
        extra = sorted(set(self.vocabulary) - seen - {self.spec.control})
        model = resolve_predictor(predictor, train, self.spec, extra_perturbations=extra)
        missing = sorted(set(self.vocabulary) - set(model.perturbations))
        if missing:
            raise DataSpecError(
                f"design world: predictor {model.name!r} cannot predict {missing[:5]} (never measured in its training "
                "data); use a predictor that accepts extra_perturbations (baseline.*, gem1.*) or one with gene embeddings."
            )
        return model

    def env_kwargs(self, predictor: Predictor, reward: Any = "target.energy") -> dict[str, Any]:
        """``ReprogramEnv(world="data", ...)`` arguments of this problem in the world ``predictor``."""
        return {
            "world": "data", "adata": self.adata, "spec": self.spec, "source": self.source_mask,
            "target": self.target_mask, "predictor": predictor, "reward": reward, "context": self.context,
        }


def _vocabulary(labels: np.ndarray, spec: DataSpec) -> list[str]:
    return sorted({s for lab in np.unique(labels) if lab != spec.control for s in spec.split_label(lab)})


def design_problem(
    adata: AnnData,
    spec: DataSpec | None,
    target: str,
    *,
    context: str | None = None,
    holdout: tuple[str, ...] | list[str] | None = None,
    check: bool = True,
) -> DesignProblem:
    """Check and build a :class:`DesignProblem`; every problem with the input is one clear line.

    ``context`` defaults to the target cells' only context; ``holdout`` to ``(target,)``. ``check=False``
    skips validating ``adata`` against ``spec`` (for callers that validated it once already).
    """
    spec = spec or DataSpec()
    if check:
        validate(adata, spec)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    if target == spec.control or target not in set(labels):
        known = sorted(set(labels) - {spec.control})
        raise DataSpecError(f"design target {target!r} is not a perturbation of the data; pick one of {known[:10]}"
                            f"{' ...' if len(known) > 10 else ''}.")
    if context is None and spec.context_key is not None and spec.context_key in adata.obs:
        found = sorted(set(adata.obs[spec.context_key].astype(str).to_numpy()[labels == target]))
        if len(found) > 1:
            raise DataSpecError(f"design target {target!r} was measured in contexts {found}; pass context=<one of them>.")
        context = found[0]
    holdout = tuple(sorted(set(holdout or ()) | {target}))
    size = max(len(spec.split_label(h)) for h in holdout)
    problem = DesignProblem(adata, spec, target, context, holdout, _vocabulary(labels, spec), size)
    if not problem.source_mask.any():
        raise DataSpecError(f"design target {target!r}: no {spec.control!r} cells in context {context!r} to start from.")
    if not problem.target_mask.any():
        raise DataSpecError(f"design target {target!r} has no cells in context {context!r}.")
    return problem


# ------------------------------------------------------------------------------------------ env factories
def design_env(problem: DesignProblem, kwargs: dict[str, Any], max_perturbations: int | None, num_envs: int | None) -> Any:
    """The env (``num_envs`` None) or native vector env of ``problem``; its world is fitted without the target.

    An episode ends (terminated) once ``max_perturbations`` perturbations are applied, or on stop; default
    the problem's (2 for doubles, 1 for singles). ``cost`` defaults to 0.01 per perturbation (a tie-breaker
    towards smaller sets: the question is which set produces the cells, not which is cheapest).
    """
    max_perturbations = problem.max_perturbations if max_perturbations is None else max_perturbations
    if max_perturbations < 1:
        raise DataSpecError(f"max_perturbations must be >= 1, got {max_perturbations}.")
    kwargs.pop("max_episode_steps", None)
    kwargs.setdefault("cost", 0.01)
    predictor = problem.fit_world(kwargs.pop("predictor", DEFAULT_PREDICTOR))
    # the step budget only bounds re-applying a perturbation already in force
    common = {**problem.env_kwargs(predictor, kwargs.pop("reward", "target.energy")), "budget": max_perturbations + 1,
              **kwargs}
    env = ReprogramEnv(**common) if num_envs is None else ReprogramVectorEnv(num_envs, **common)
    env.dynamics.max_applied = max_perturbations
    env.problem = problem  # what the scoring harness reads (target, vocabulary, measured cells)
    return env


def _generic_problem(kwargs: dict[str, Any]) -> DesignProblem:
    adata, target = kwargs.pop("adata", None), kwargs.pop("target", None)
    if adata is None or target is None:
        raise DataSpecError("CellEnv-Design-v0 needs adata=<AnnData screen> and target=<held-out label>; "
                            "the registered CellEnv-Design-{Norman,Papalexi}-v0 tasks need path=<h5ad>.")
    return design_problem(adata, kwargs.pop("spec", None), target, context=kwargs.pop("context", None),
                          holdout=kwargs.pop("holdout", None))


def make_design_env(*, max_perturbations: int | None = None, **kwargs: Any) -> gym.Env:
    """``CellEnv-Design-v0``: a :class:`ReprogramEnv` whose world never saw the target condition.

    Keyword arguments: ``adata``, ``target`` (required), ``spec``, ``context``, ``holdout``, ``predictor``
    (a registered name fitted here without the held-out labels, default ``baseline.additive``; a saved
    folder or a fitted instance is used as it is, so it must not have seen the target), ``reward``
    (default ``target.energy``: potential-based change of the energy distance to the target cells),
    ``max_perturbations`` (the episode ends after this many steps, or on stop; default the size of the
    largest held-out set), ``cost`` (default 0.01 per perturbation), and any
    :class:`ReprogramEnv` option (``n_cells``, ``cost``, ...).
    """
    return design_env(_generic_problem(kwargs), kwargs, max_perturbations, None)


def make_design_vector_env(num_envs: int = 1, *, max_perturbations: int | None = None, **kwargs: Any) -> ReprogramVectorEnv:
    """Native vector env of :func:`make_design_env` (one batched predictor call per step)."""
    return design_env(_generic_problem(kwargs), kwargs, max_perturbations, num_envs)


# ----------------------------------------------------------------------------------------- data sets
def _read(path: str | Path | None, task: str, expected: str) -> AnnData:
    """The task's data file; without ``path=`` one line names the file to pass (nothing is downloaded)."""
    if path is None:
        raise DataSpecError(f"{task} needs path=<{expected}>; nothing is downloaded at run time.")
    return read_h5ad(path, what=f"{task} path=")


def _cached(problems_of: Any) -> Any:
    """Memoise a problem set per (file, modification time, options): every env of a task shares one copy
    of its (read-only) data instead of reading and validating the file again."""
    @functools.lru_cache(maxsize=4)
    def load(key: tuple[Any, ...], **kwargs: Any) -> list[DesignProblem]:
        return problems_of(**kwargs)

    @functools.wraps(problems_of)
    def wrapper(path: str | Path | None = None, **kwargs: Any) -> list[DesignProblem]:
        if path is None or not Path(path).is_file():
            return problems_of(path, **kwargs)
        key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, tuple(sorted(kwargs.items())))
        return load(key, path=path, **kwargs)

    return wrapper


@_cached
def norman_problems(path: str | Path | None = None) -> list[DesignProblem]:
    """Norman et al. 2019 K562 CRISPRa (the PerturBench devel file): every double whose two singles were
    measured alone is a target, all held out together (one world serves them all)."""
    adata = _read(path, "CellEnv-Design-Norman-v0", "norman19_mcfaline23_devel.h5ad")
    if "dataset" in adata.obs:
        adata = adata[adata.obs["dataset"].astype(str) == "norman19"].copy()
    spec = DataSpec(context_key="cell_type" if "cell_type" in adata.obs else None, counts=None)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    singles = {lab for lab in set(labels) if lab != spec.control and len(spec.split_label(lab)) == 1}
    doubles = sorted(lab for lab in set(labels) if len(spec.split_label(lab)) == 2
                     and all(s in singles for s in spec.split_label(lab)))
    if not doubles:
        raise DataSpecError("CellEnv-Design-Norman-v0: the file has no double whose singles were both measured.")
    validate(adata, spec)
    return [design_problem(adata, spec, d, holdout=doubles, check=False) for d in doubles]


@_cached
def papalexi_problems(path: str | Path | None = None, *, n_targets: int = 8, seed: int = 0) -> list[DesignProblem]:
    """Papalexi et al. 2021 THP-1 ECCITE-seq knockouts (raw counts): ``n_targets`` knockouts held out
    together (seeded choice; ``unassigned`` cells dropped)."""
    adata = _read(path, "CellEnv-Design-Papalexi-v0", "papalexi2021_thp1_lowmoi.h5ad")
    adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"].copy()
    spec = DataSpec(context_key=None)
    labels = sorted(set(adata.obs["perturbation"].astype(str)) - {spec.control})
    rng = np.random.default_rng(seed)
    targets = sorted(rng.choice(labels, size=min(n_targets, len(labels) - 1), replace=False).tolist())
    validate(adata, spec)
    return [design_problem(adata, spec, t, holdout=targets, check=False) for t in targets]


@functools.lru_cache(maxsize=2)
def sergio_problems(*, n_cells_per_condition: int = 60, seed: int = 0) -> list[DesignProblem]:
    """Embedded default (no file): a ``grn.sergio`` screen of the shipped ``lineages`` network in cell type
    type0 (every master-regulator KO/OE and all their doubles on different genes); targets = 6 doubles,
    held out together."""
    from cellgym.predictors.grn import simulate_screen
    from cellgym.registry import make_predictor

    truth = make_predictor("grn.sergio", network="lineages", overexpression=1.0)
    masters = [truth.genes[i] for i in truth.network.master]
    singles = [f"{g}_{k}" for g in masters for k in ("KO", "OE")]
    screen = simulate_screen(truth, n_cells_per_condition=n_cells_per_condition, perturbations=singles,
                             doubles=12, contexts=["type0"], seed=seed)
    spec = DataSpec(context_key=None)
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    doubles = sorted({lab for lab in labels if "+" in lab})
    rng = np.random.default_rng(seed)
    targets = sorted(rng.choice(doubles, size=min(6, len(doubles)), replace=False).tolist())
    validate(screen, spec)
    return [design_problem(screen, spec, t, holdout=targets, check=False) for t in targets]


def _pick(problems: list[DesignProblem], target: str | None, task: str) -> DesignProblem:
    if target is None:
        return problems[0]
    for p in problems:
        if p.target == target:
            return p
    raise DataSpecError(f"{task}: target {target!r} is not one of its held-out targets {[p.target for p in problems]}.")


def _factories(task: str, problems_of: Any, data_keys: tuple[str, ...]) -> tuple[Any, Any]:
    """(env, vector env) factories of a registered design task; ``target=`` picks one of its problems."""

    def problem(kwargs: dict[str, Any]) -> DesignProblem:
        return _pick(problems_of(**{k: kwargs.pop(k) for k in data_keys if k in kwargs}), kwargs.pop("target", None), task)

    def make_env(*, max_perturbations: int | None = None, **kwargs: Any) -> gym.Env:
        return design_env(problem(kwargs), kwargs, max_perturbations, None)

    def make_vec(num_envs: int = 1, *, max_perturbations: int | None = None, **kwargs: Any) -> ReprogramVectorEnv:
        return design_env(problem(kwargs), kwargs, max_perturbations, num_envs)

    make_env.__doc__ = f"``{task}`` (see :func:`{problems_of.__name__}`; ``target=`` one of its held-out targets)."
    make_vec.__doc__ = f"Native vector env of ``{task}``."
    return make_env, make_vec


make_norman_env, make_norman_vector_env = _factories("CellEnv-Design-Norman-v0", norman_problems, ("path",))
make_papalexi_env, make_papalexi_vector_env = _factories("CellEnv-Design-Papalexi-v0", papalexi_problems, ("path",))
make_sergio_env, make_sergio_vector_env = _factories("CellEnv-Design-SERGIO-v0", sergio_problems, ())


DESIGN_TASKS: dict[str, Any] = {
    "CellEnv-Design-Norman-v0": norman_problems,
    "CellEnv-Design-Papalexi-v0": papalexi_problems,
    "CellEnv-Design-SERGIO-v0": sergio_problems,
}
"""Registered design task -> the function making its held-out problems (``path=`` where it reads a file)."""


def problems_for(task: str, path: str | Path | None = None) -> list[DesignProblem]:
    """The held-out design problems of a registered design task."""
    if task not in DESIGN_TASKS:
        raise DataSpecError(f"design task {task!r}: expected one of {list(DESIGN_TASKS)}.")
    return DESIGN_TASKS[task]() if task == "CellEnv-Design-SERGIO-v0" else DESIGN_TASKS[task](path)
