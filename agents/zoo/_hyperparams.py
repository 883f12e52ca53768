"""Per-task hyperparameters: ``agents/hyperparams/<algo>.yml`` read into a checked :class:`Hyperparams`.

Each file maps task ids (plus a ``default:`` entry) to keyword arguments, in the RL-Baselines3-Zoo layout.
A task's entry is laid over ``default`` (top-level keys replace, nested dicts are not merged). Keys are
either cellgym's own (``n_timesteps``, ``policy``, ``n_envs``, ``policy_kwargs``, ``env_kwargs``) or
constructor arguments of the SB3 algorithm (``learning_rate``, ``n_steps``, ...); anything else is
rejected with the closest valid names. Structured values are data, resolved against whitelists here:

- ``learning_rate: {schedule: linear, initial: 3.0e-4, final: 0.0}`` (also for ``clip_range``)
- ``policy_kwargs: {net_arch: [64, 64], activation_fn: tanh, optimizer_class: adam}``
- ``action_noise: {type: normal, std: 0.1}`` (SAC, TD3; also ``ornstein-uhlenbeck``): exploration noise of
  that std on every action dimension, built for the env's action space (RL Zoo's ``noise_type`` / ``noise_std``)
"""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellgym.predictors.base.errors import CellgymError

__all__ = ["HyperparamError", "Hyperparams", "load_hyperparams", "resolve_algo_kwargs", "resolve_policy_kwargs"]

#: cellgym's own keys (everything else must be a constructor argument of the SB3 algorithm)
OWN_KEYS: dict[str, type | tuple[type, ...]] = {
    "n_timesteps": int,
    "policy": str,
    "n_envs": int,
    "policy_kwargs": dict,
    "env_kwargs": dict,
    "normalize": (bool, dict),
}
#: constructor arguments the CLI sets itself, never from YAML
_RESERVED = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model",
             "policy_kwargs", "stats_window_size", "monitor_wrapper"}
_ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU",
                "silu": "SiLU"}
_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
_SCHEDULES = ("linear", "constant")
_NOISES = ("normal", "ornstein-uhlenbeck")


class HyperparamError(CellgymError, ValueError):
    """A hyperparameter file or ``--hyperparams`` value that does not fit the algorithm."""


def algo_class(algo: str) -> type:
    """The SB3 / sb3-contrib class for ``algo`` (``ppo``, ``a2c``, ``dqn``, ``sac``, ``td3``, ``maskable_ppo``)."""
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    import stable_baselines3

    classes = {"ppo": "PPO", "a2c": "A2C", "dqn": "DQN", "sac": "SAC", "td3": "TD3"}
    if algo not in classes:
        close = difflib.get_close_matches(algo, [*classes, "maskable_ppo"], n=3)
        raise HyperparamError(f"unknown SB3 algorithm {algo!r}: expected one of {[*classes, 'maskable_ppo']}."
                              + (f" Did you mean {close[0]!r}?" if close else ""))
    return getattr(stable_baselines3, classes[algo])


def _algo_defaults(algo: str) -> dict[str, Any]:
    """Constructor argument -> default value of the algorithm class (reserved ones left out); for
    ``celltrip`` (multi-agent, ``celltrip.yml``) the fields of its ``CellTripConfig``."""
    if algo == "celltrip":
        from dataclasses import fields

        from cellgym.agents.celltrip._ppo import CellTripConfig

        return {f.name: f.default for f in fields(CellTripConfig) if f.name not in _RESERVED}
    sig = inspect.signature(algo_class(algo).__init__)
    return {n: p.default for n, p in sig.parameters.items()
            if n not in _RESERVED and p.kind is not inspect.Parameter.VAR_KEYWORD}


@dataclass(frozen=True)
class Hyperparams:
    """The resolved hyperparameters of one (algorithm, task) pair; plain YAML-able data.

    Attributes
    ----------
    algo, task : str
        Registered agent name and task id.
    source : str
        Which entry of ``<algo>.yml`` was used: the task id or ``"default"``.
    n_timesteps, n_envs : int
        Training budget (environment steps, all envs together) and number of parallel envs.
    policy : str
        SB3 policy alias (``MlpPolicy``, ``MultiInputPolicy``).
    policy_kwargs, env_kwargs : dict
        Policy network options (see module docstring) and keyword arguments of ``gymnasium.make``.
    normalize : bool or dict
        RL-Zoo's ``normalize``: ``true`` (or ``VecNormalize`` options) wraps the training env in SB3's
        ``VecNormalize``; its statistics are saved with the agent (``normalize.pt``).
    algo_kwargs : dict
        The remaining constructor arguments of the SB3 algorithm, as data (schedules unresolved).
    """

    algo: str
    task: str
    source: str
    n_timesteps: int
    n_envs: int = 1
    policy: str = "MlpPolicy"
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: bool | dict[str, Any] = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``config.yml``."""
        return asdict(self)


def _type_error(key: str, value: Any, expected: str, where: str) -> HyperparamError:
    hint = ""
    if isinstance(value, str) and any(c.isdigit() for c in value):
        hint = (" PyYAML reads '3e-4' and '1e6' as strings: write a dot and a signed exponent (3.0e-4, 1.0e+6)"
                " or an integer with underscores (1_000_000).")
    return HyperparamError(f"hyperparameter {key!r} {where}: expected {expected}, got {value!r} "
                           f"({type(value).__name__}).{hint}")


def _check_value(key: str, value: Any, default: Any, where: str) -> None:
    if key in ("learning_rate", "clip_range", "clip_range_vf") and isinstance(value, dict):
        unknown = set(value) - {"schedule", "initial", "final"}
        if unknown or value.get("schedule") not in _SCHEDULES or not _is_number(value.get("initial")):
            raise HyperparamError(f"schedule for {key!r} {where}: expected {{schedule: linear|constant, "
                                  f"initial: float, final: float}}, got {value!r}.")
        return
    if key == "action_noise" and value is not None:
        if not isinstance(value, dict) or set(value) != {"type", "std"} or value["type"] not in _NOISES \
                or not _is_number(value["std"]) or value["std"] < 0:
            raise HyperparamError(f"action_noise {where}: expected {{type: normal|ornstein-uhlenbeck, std: float >= 0}}, "
                                  f"got {value!r}.")
        return
    if default is None or default is inspect.Parameter.empty or value is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _type_error(key, value, "a bool (true/false)", where)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer", where)
    elif isinstance(default, float):
        if not _is_number(value):
            raise _type_error(key, value, "a number", where)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_entry(algo: str, entry: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate one mapping of hyperparameters for ``algo``; returns it unchanged."""
    if not isinstance(entry, dict):
        raise HyperparamError(f"hyperparameters {where}: expected a mapping of name: value, got {entry!r}.")
    defaults = _algo_defaults(algo)
    valid = sorted({*OWN_KEYS, *defaults})
    for key, value in entry.items():
        if key in OWN_KEYS:
            expected = OWN_KEYS[key]
            if not isinstance(value, expected) or (isinstance(value, bool) and key != "normalize"):
                raise _type_error(key, value, getattr(expected, "__name__", str(expected)), where)
            continue
        if key not in defaults:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise HyperparamError(f"unknown hyperparameter {key!r} {where} for {algo}.{hint} "
                                  f"Valid keys: {valid}.")
        _check_value(key, value, defaults[key], where)
    return entry


def read_file(algo: str) -> dict[str, dict[str, Any]]:
    """The raw, checked content of the shipped ``<algo>.yml`` (task id -> mapping)."""
    resource = importlib.resources.files("cellgym.agents.hyperparams") / f"{algo}.yml"
    if not resource.is_file():
        raise HyperparamError(f"no hyperparameter file for algorithm {algo!r} "
                              f"(looked for cellgym/agents/hyperparams/{algo}.yml).")
    data = yaml.safe_load(resource.read_text()) or {}
    if not isinstance(data, dict) or "default" not in data:
        raise HyperparamError(f"{algo}.yml: expected a mapping of task ids with a 'default:' entry, "
                              f"got keys {list(data) if isinstance(data, dict) else type(data).__name__}.")
    for task, entry in data.items():
        check_entry(algo, entry, f"in {algo}.yml[{task!r}]")
    return data


def read_conf(path: str | Path, algo: str) -> dict[str, dict[str, Any]]:
    """A custom hyperparameter file (``-conf FILE``, RL-Zoo layout: task id -> mapping), checked for ``algo``."""
    file = Path(path)
    if not file.is_file():
        raise HyperparamError(f"-conf {path}: no such file; pass a YAML of task id -> hyperparameters "
                              "(`cellgym train -optimize` writes one).")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HyperparamError(f"-conf {path}: not valid YAML ({exc}).") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise HyperparamError(f"-conf {path}: expected a mapping of task id (or 'default') -> hyperparameters.")
    for task, entry in data.items():
        check_entry(algo, entry, f"in {path}[{task!r}]")
    return data


def load_hyperparams(algo: str, task: str, overrides: dict[str, Any] | None = None,
                     conf: str | Path | None = None) -> Hyperparams:
    """The hyperparameters for ``algo`` on ``task``: ``default`` <- task entry <- ``conf`` entry <- ``overrides``.

    ``conf`` is a custom file in the same layout (``-conf FILE``); its entry for ``task`` (else its
    ``default``) is laid over the shipped one.
    """
    data = read_file(algo)
    source = task if task in data else "default"
    merged = {**data["default"], **(data[task] if task in data else {})}
    if conf is not None:
        custom = read_conf(conf, algo)
        key = task if task in custom else "default"
        if key not in custom:
            raise HyperparamError(f"-conf {conf}: no entry for {task} (nor 'default'); entries: {sorted(custom)}.")
        merged.update(custom[key])
        source = f"{conf}[{key}]"
    if overrides:
        merged.update(check_entry(algo, overrides, "from --hyperparams"))
    if "n_timesteps" not in merged:
        raise HyperparamError(f"{algo}.yml gives no n_timesteps for {task!r} (nor in 'default'); "
                              "add it or pass -n.")
    own = {k: merged.pop(k) for k in list(merged) if k in OWN_KEYS}
    n_envs = own.get("n_envs", 1)
    if n_envs < 1:
        raise HyperparamError(f"n_envs for {algo} on {task}: expected >= 1, got {n_envs}.")
    return Hyperparams(algo=algo, task=task, source=source, **own, algo_kwargs=merged)


def whole_rollouts(algo: str, n_timesteps: int, n_envs: int, algo_kwargs: dict[str, Any]) -> int:
    """``n_timesteps`` rounded up to what SB3 actually trains: whole rollouts of ``n_envs * n_steps`` for the
    on-policy algorithms (PPO 8 x 64 = 512 per rollout turns 12,000 into 12,288), whole vector steps otherwise."""
    if n_timesteps <= 0:
        return n_timesteps
    size = n_envs
    if algo in ("ppo", "a2c", "maskable_ppo"):
        size *= int(algo_kwargs.get("n_steps", _algo_defaults(algo)["n_steps"]))
    return -(-int(n_timesteps) // size) * size


def _schedule(value: Any) -> Any:
    if not isinstance(value, dict) or "schedule" not in value:  # action_noise is resolved with the env
        return value
    from stable_baselines3.common.utils import ConstantSchedule, LinearSchedule

    if value["schedule"] == "constant":
        return ConstantSchedule(float(value["initial"]))
    return LinearSchedule(float(value["initial"]), float(value.get("final", 0.0)), 1.0)


def resolve_algo_kwargs(algo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Algorithm kwargs as SB3 wants them (schedules resolved; ``train_freq`` lists become tuples)."""
    out = {k: _schedule(v) for k, v in algo_kwargs.items()}
    if isinstance(out.get("train_freq"), list):
        out["train_freq"] = tuple(out["train_freq"])
    return out


def resolve_action_noise(algo_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    """``algo_kwargs`` with an ``action_noise`` mapping turned into SB3's noise object for ``action_space`` (a Box)."""
    spec = algo_kwargs.get("action_noise")
    if not isinstance(spec, dict):
        return algo_kwargs
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    n = int(np.prod(action_space.shape))
    cls = NormalActionNoise if spec["type"] == "normal" else OrnsteinUhlenbeckActionNoise
    return {**algo_kwargs, "action_noise": cls(mean=np.zeros(n), sigma=float(spec["std"]) * np.ones(n))}


def resolve_policy_kwargs(policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Policy kwargs with ``activation_fn`` / ``optimizer_class`` names turned into torch classes."""
    import torch

    out = dict(policy_kwargs)
    for key, table, module in (("activation_fn", _ACTIVATIONS, torch.nn),
                               ("optimizer_class", _OPTIMIZERS, torch.optim)):
        if key in out:
            name = out[key]
            if name not in table:
                raise HyperparamError(f"policy_kwargs.{key}: expected one of {sorted(table)}, got {name!r}.")
            out[key] = getattr(module, table[name])
    return out
