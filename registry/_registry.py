"""Names -> things. Specs hold dotted entry points and are resolved only when something is made."""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from cellgym.predictors.base.errors import CellgymError

Kind = Literal["predictors", "rewards", "agents", "tasks"]
KINDS: tuple[str, ...] = ("predictors", "rewards", "agents", "tasks")


class UnknownNameError(CellgymError, KeyError):
    """A name that no registry holds."""


class UnknownOptionError(CellgymError, TypeError):
    """A keyword option that a registered thing's constructor does not take."""


@dataclass(frozen=True)
class Spec:
    """A registered thing: ``entry_point`` is ``"package.module:Attribute"``."""

    name: str
    entry_point: str
    summary: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """Import and return the attribute the entry point names."""
        module, _, attr = self.entry_point.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


_REGISTRIES: dict[str, dict[str, Spec]] = {k: {} for k in KINDS}
_PLUGINS_LOADED: set[str] = set()


def register(kind: Kind, name: str, entry_point: str, summary: str, **kwargs: Any) -> Spec:
    """Register ``name`` under ``kind``; overwriting an existing name warns."""
    if kind not in _REGISTRIES:
        raise UnknownNameError(f"unknown registry kind {kind!r}; expected one of {list(KINDS)}.")
    if name in _REGISTRIES[kind]:
        warnings.warn(f"overwriting registered {kind[:-1]} {name!r}", stacklevel=2)
    spec = Spec(name, entry_point, summary, dict(kwargs))
    _REGISTRIES[kind][name] = spec
    return spec


def _load_plugins(kind: str) -> None:
    """Register third-party entries of the ``cellgym.<kind>`` entry-point group (once)."""
    if kind in _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.add(kind)
    for ep in entry_points(group=f"cellgym.{kind}"):
        if kind == "tasks":  # a tasks plugin is a module or function that registers its tasks itself
            obj = ep.load()
            if callable(obj):
                obj()
            continue
        if ep.name not in _REGISTRIES[kind]:
            register(kind, ep.name, ep.value, f"(plugin {ep.dist.name if ep.dist else '?'})")  # type: ignore[arg-type]


def specs(kind: Kind) -> dict[str, Spec]:
    """All registered specs of a kind, plugins included, by name."""
    if kind == "tasks":
        from . import _tasks  # noqa: F401  (registers the built-in tasks)
    _load_plugins(kind)
    if kind == "tasks":
        return _task_specs()
    return dict(sorted(_REGISTRIES[kind].items()))


def get(kind: Kind, name: str) -> Spec:
    """The spec registered as ``name``; unknown names raise with the closest registered ones."""
    table = specs(kind)
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"no {kind[:-1]} named {name!r}.{hint} Registered: {sorted(table)}. See `cellgym list {kind}`.")
    return table[name]


# ------------------------------------------------------------------------------------------------ tasks
_PARALLEL_TASKS: dict[str, Spec] = {}


def register_parallel_task(task_id: str, entry_point: str, summary: str, **kwargs: Any) -> None:
    """Register a PettingZoo parallel-env task (gymnasium's registry holds the single-agent ones)."""
    _PARALLEL_TASKS[task_id] = Spec(task_id, entry_point, summary, dict(kwargs))


def _task_specs() -> dict[str, Spec]:
    import gymnasium

    out: dict[str, Spec] = {}
    for task_id, env_spec in gymnasium.registry.items():
        if task_id.startswith("CellEnv-"):
            ep = env_spec.entry_point if isinstance(env_spec.entry_point, str) else repr(env_spec.entry_point)
            summary = (env_spec.kwargs or {}).get("summary") or _TASK_SUMMARIES.get(task_id, "")
            out[task_id] = Spec(task_id, ep, summary, {})
    out.update(_PARALLEL_TASKS)
    return dict(sorted(out.items()))


_TASK_SUMMARIES: dict[str, str] = {}


def describe_task(task_id: str, summary: str) -> None:
    """Attach a one-line summary to a gymnasium-registered task (shown by ``cellgym list tasks``)."""
    _TASK_SUMMARIES[task_id] = summary


def is_parallel_task(task_id: str) -> bool:
    """Whether ``task_id`` is a PettingZoo parallel task."""
    specs("tasks")
    return task_id in _PARALLEL_TASKS


def make(task_id: str, **kwargs: Any) -> Any:
    """Make any registered task: a gymnasium env (through ``gymnasium.make``) or a PettingZoo parallel env."""
    spec = get("tasks", task_id)
    if task_id in _PARALLEL_TASKS:
        return spec.load()(**{**spec.kwargs, **kwargs})
    import gymnasium

    return gymnasium.make(task_id, **kwargs)


# ------------------------------------------------------------------------------------------- predictors
def predictor_class(name: str) -> type:
    """The class registered as predictor ``name``."""
    return get("predictors", name).load()


def check_options(kind: Kind, name: str, kwargs: dict[str, Any]) -> None:
    """One clear error for an option the constructor of ``name`` does not take, naming the ones it does.

    Constructors that take ``**kwargs`` accept anything and are not checked here.
    """
    cls = get(kind, name).load()
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownOptionError(
            f"{kind[:-1]} {name!r} has no option {unknown[0]!r}.{hint} Its options: {', '.join(accepted) or 'none'}."
        )


def _construct(kind: Kind, name: str, kwargs: dict[str, Any]) -> Any:
    spec = get(kind, name)
    kwargs = {**spec.kwargs, **kwargs}
    check_options(kind, name, kwargs)
    return spec.load()(**kwargs)


def make_predictor(name: str, **kwargs: Any) -> Any:
    """A new (unfitted) predictor by registered name, e.g. ``make_predictor("baseline.linear", n_pcs=10)``."""
    return _construct("predictors", name, kwargs)


def make_reward(name: str, **kwargs: Any) -> Any:
    """A reward model by registered name, e.g. ``make_reward("target.energy", target=cells)``."""
    return _construct("rewards", name, kwargs)


def make_agent(name: str, **kwargs: Any) -> Any:
    """An agent by registered name."""
    return _construct("agents", name, kwargs)
