"""Which algorithms fit which task, and which ``env_kwargs`` a task takes: checked before any run folder exists.

The action spaces each algorithm supports are those of SB3's "RL Algorithms" table
(https://stable-baselines3.readthedocs.io/en/master/guide/algos.html) and sb3-contrib's MaskablePPO
(Discrete, MultiDiscrete, MultiBinary). Observations: every SB3 algorithm takes Box, Discrete,
MultiDiscrete, MultiBinary and -- with ``policy: MultiInputPolicy`` -- Dict, so only actions are checked.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from cellgym.predictors.base.errors import CellgymError

__all__ = ["SB3_ACTION_SPACES", "IncompatibleAlgoError", "check_algo_task", "check_env_kwargs", "env_kwarg_names"]

#: SB3 / sb3-contrib algorithm -> names of the gymnasium action spaces it trains on
SB3_ACTION_SPACES: dict[str, tuple[str, ...]] = {
    "a2c": ("Box", "Discrete", "MultiDiscrete", "MultiBinary"),
    "ppo": ("Box", "Discrete", "MultiDiscrete", "MultiBinary"),
    "dqn": ("Discrete",),
    "sac": ("Box",),
    "td3": ("Box",),
    "maskable_ppo": ("Discrete", "MultiDiscrete", "MultiBinary"),
}


class IncompatibleAlgoError(CellgymError, ValueError):
    """An algorithm that cannot train on a task's action or observation space, or a bad ``env_kwargs`` key."""


def _multi_agent_learners() -> list[str]:
    """Registered learning agents that are not single-agent SB3 algorithms (they train PettingZoo tasks)."""
    from cellgym.registry import specs

    return sorted(name for name, spec in specs("agents").items()
                  if name not in SB3_ACTION_SPACES and spec.entry_point != "cellgym.agents.zoo:SB3Agent"
                  and not spec.entry_point.startswith("cellgym.agents.planning"))


def env_kwarg_names(task: str) -> set[str] | None:
    """The keyword arguments ``task``'s constructor accepts, or ``None`` when they cannot be known statically.

    Follows ``**kwargs`` of a factory function into the class its return annotation names
    (``make_integration_env(...) -> TripParallelEnv``).
    """
    import gymnasium

    from cellgym.registry import get, is_parallel_task

    spec = get("tasks", task)
    if is_parallel_task(task):
        target = spec.load()
    else:
        entry = gymnasium.spec(task).entry_point
        if not isinstance(entry, str):
            target = entry
        else:
            module, _, attr = entry.partition(":")
            import importlib

            target = getattr(importlib.import_module(module), attr)
    return _accepted(target)


def _accepted(target: Any, depth: int = 0) -> set[str] | None:
    func = target.__init__ if inspect.isclass(target) else target
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None
    names = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return names
    if inspect.isclass(target) or depth > 2:
        return None
    try:
        returned = typing.get_type_hints(func).get("return")
    except Exception:  # an annotation that does not resolve: we cannot tell
        return None
    if not inspect.isclass(returned) or returned is object:
        return None
    more = _accepted(returned, depth + 1)
    return None if more is None else names | more


def check_env_kwargs(task: str, env_kwargs: dict[str, Any]) -> None:
    """Raise :class:`IncompatibleAlgoError` naming the valid keys when ``env_kwargs`` has one ``task`` does not take."""
    if not env_kwargs:
        return
    valid = env_kwarg_names(task)
    if valid is None:
        return
    unknown = sorted(set(env_kwargs) - valid)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
        raise IncompatibleAlgoError(
            f"--env-kwargs: {task} takes no option {unknown[0]!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; its options are {', '.join(sorted(valid))}.")


def _space_name(space: Any) -> str:
    return type(space).__name__


def check_algo_task(algo: str, task: str, *, env_kwargs: dict[str, Any] | None = None) -> None:
    """Raise :class:`IncompatibleAlgoError` (one line: what fits instead) when ``algo`` cannot train on ``task``.

    Parameters
    ----------
    algo : str
        Registered agent name (``ppo``, ``sac``, ``celltrip``, ...).
    task : str
        Task id.
    env_kwargs : dict, optional
        Task options; checked against the constructor, then (single-agent tasks) the env is built once to
        read its spaces.
    """
    from cellgym.registry import get, is_parallel_task

    env_kwargs = dict(env_kwargs or {})
    get("agents", algo)
    check_env_kwargs(task, env_kwargs)
    multi = _multi_agent_learners()
    if is_parallel_task(task):
        if algo not in multi:
            raise IncompatibleAlgoError(
                f"--algo {algo}: {task} is a PettingZoo multi-agent task (every cell is an agent) and {algo} "
                f"trains single-agent gymnasium tasks; algorithms that fit it: {', '.join(multi)}.")
        return
    if algo in multi:
        raise IncompatibleAlgoError(
            f"--algo {algo}: it trains PettingZoo multi-agent tasks (CellEnv-Trip-*), and {task} is a "
            f"single-agent gymnasium task; train it with an SB3 algorithm that fits its actions "
            f"({', '.join(SB3_ACTION_SPACES)}).")
    if algo not in SB3_ACTION_SPACES:  # a planning baseline: nothing to train
        return
    import gymnasium

    import cellgym.envs  # noqa: F401  (registers the tasks)

    env = gymnasium.make(task, **env_kwargs)
    try:
        action = _space_name(env.action_space)
    finally:
        env.close()
    fits = [a for a, kinds in SB3_ACTION_SPACES.items() if action in kinds]
    if action not in SB3_ACTION_SPACES[algo]:
        raise IncompatibleAlgoError(
            f"--algo {algo}: it trains on {' or '.join(SB3_ACTION_SPACES[algo])} actions and {task} has "
            f"{env.action_space} actions; algorithms that fit it: {', '.join(fits) or 'none of the SB3 ones'}.")
