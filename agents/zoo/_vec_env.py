"""A gymnasium ``VectorEnv`` (a task's native batched env) seen through SB3's ``VecEnv`` interface.

SB3 expects the reset observation back in the step that ends an episode, with the last observation in
``infos[i]["terminal_observation"]`` (gymnasium's ``AutoresetMode.SAME_STEP``). :func:`make_sb3_vec_env`
asks a task's native vector env for ``autoreset_mode="same_step"``; one that can only reset on the *next*
step cannot be adapted without a fake transition per episode, so it then falls back to gymnasium's
``SyncVectorEnv`` in ``SAME_STEP`` mode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from cellgym.predictors.base.errors import CellgymError

__all__ = ["GymnasiumVecEnv", "make_sb3_vec_env"]

log = logging.getLogger(__name__)
SUPPORTED_MODES = (AutoresetMode.SAME_STEP, AutoresetMode.DISABLED)
#: info keys copied into the monitor CSV when the task reports them
INFO_KEYWORDS = ("success", "distance", "n_perturbations", "cost", "total_dose")


def _unbatch(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info (``key`` + ``_key`` mask) -> one dict per sub-env."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = info.get(f"_{key}", np.ones(n, dtype=bool))
        if isinstance(value, dict):
            for i, sub in enumerate(_unbatch(value, n)):
                if mask[i]:
                    out[i][key] = sub
            continue
        for i in np.flatnonzero(mask):
            out[i][key] = value[i]
    return out


class GymnasiumVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a gymnasium ``VectorEnv`` in ``SAME_STEP`` autoreset mode.

    ``info["success"]`` is also exposed as ``is_success``, which SB3's ``EvalCallback`` reports as
    ``eval/success_rate``. ``spec`` is the task's (``VecMonitor`` writes its id into ``monitor.csv``);
    ``render()`` tiles the frames the vector env renders, one per sub-env.
    """

    def __init__(self, venv: gymnasium.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in SUPPORTED_MODES:
            raise CellgymError(f"vector env {type(venv).__name__}: expected autoreset_mode SAME_STEP or DISABLED "
                               f"(with reset_mask) for SB3, got {mode}. Build it with "
                               "autoreset_mode=AutoresetMode.SAME_STEP.")
        self.venv = venv
        self.mode = mode
        self.spec = getattr(venv, "spec", None)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> Any:
        seed = self._seeds[0]
        options = self._options[0] or None
        obs, info = self.venv.reset(seed=seed, options=options)  # sub-env i gets seed + i, like SB3
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = _unbatch(info, self.num_envs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        infos = _unbatch(info, self.num_envs)
        if dones.any() and self.mode == AutoresetMode.DISABLED:  # reset the ended rows now
            info = {"final_obs": np.array(list(obs), dtype=object), "final_info": info}
            reset_obs, _ = self.venv.reset(options={"reset_mask": dones})
            obs = np.where(dones.reshape(-1, *([1] * (np.ndim(obs) - 1))), reset_obs, obs)
        if dones.any():
            final_infos = _unbatch(info.get("final_info", {}), self.num_envs)
            for i in np.flatnonzero(dones):
                infos[i] = final_infos[i]
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                for key in INFO_KEYWORDS:  # the monitor CSV needs every column in every final info
                    infos[i].setdefault(key, np.nan)
        for item in infos:
            success = item.get("success")
            if success is not None and success == success:  # NaN: the task reports no success
                item["is_success"] = bool(success)
        return obs, np.asarray(reward, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> list[Any]:
        """One RGB frame per sub-env (``render_mode="rgb_array"``), from the vector env's ``render()``."""
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        idx = self._indices(indices)
        if attr_name == "action_masks" and hasattr(self.venv, "action_masks"):
            return [self.venv.action_masks] * len(idx)
        if not hasattr(self.venv, "get_attr"):  # a native VectorEnv: one shared attribute (e.g. render_mode)
            return [getattr(self.venv, attr_name)] * len(idx)
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in idx]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self.venv.set_attr(attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list:
        idx = self._indices(indices)
        if method_name == "action_masks" and hasattr(self.venv, "action_masks"):
            masks = np.asarray(self.venv.action_masks())  # the native env's batched masks (B, A)
            return [masks[i] for i in idx]
        values = self.venv.call(method_name, *method_args, **method_kwargs)
        return [values[i] for i in idx]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))


class _IsSuccess(gymnasium.Wrapper):
    """One env as :class:`GymnasiumVecEnv` reports it: ``info["success"]`` also as ``is_success`` (what SB3's
    ``EvalCallback`` reads), and every monitor column present in a final info."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = info.get("success")
        if success is not None and success == success:
            info["is_success"] = bool(success)
        if terminated or truncated:
            for key in INFO_KEYWORDS:
                info.setdefault(key, np.nan)
        return obs, reward, terminated, truncated, info


def _single_env(task: str, env_kwargs: dict[str, Any]) -> gymnasium.Env:
    import cellgym.envs  # noqa: F401  (registers the tasks in a SubprocVecEnv worker too)

    return _IsSuccess(gymnasium.make(task, **env_kwargs))


VEC_ENV_KINDS = ("native", "dummy", "subproc")


def make_sb3_vec_env(task: str, n_envs: int, *, env_kwargs: dict[str, Any] | None = None,
                     monitor_path: str | Path | None = None, monitor_append: bool = False,
                     vec_env: str = "native") -> VecEnv:
    """An SB3 ``VecEnv`` of ``n_envs`` copies of ``task``, monitored (episode stats, monitor CSV).

    Uses the task's native vector env (``gymnasium.make_vec``, asked for ``autoreset_mode="same_step"``) when
    it autoresets in ``SAME_STEP`` mode (or ``DISABLED`` with ``reset_mask``), else gymnasium's ``SyncVectorEnv`` in ``SAME_STEP`` mode. ``monitor_path`` (a file name without ``.monitor.csv``
    or a folder) receives SB3's monitor CSV; with ``monitor_append`` an existing one is continued.
    ``vec_env="dummy"`` / ``"subproc"`` (RL-Zoo's ``--vec-env``) step ``n_envs`` single envs with SB3's
    ``DummyVecEnv`` / ``SubprocVecEnv`` instead.
    """
    env_kwargs = dict(env_kwargs or {})
    if vec_env not in VEC_ENV_KINDS:
        raise CellgymError(f"--vec-env {vec_env!r}: expected one of {list(VEC_ENV_KINDS)}.")
    if vec_env != "native":
        from functools import partial

        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

        cls = DummyVecEnv if vec_env == "dummy" else SubprocVecEnv
        return _monitor(cls([partial(_single_env, task, env_kwargs) for _ in range(n_envs)]), monitor_path, monitor_append)
    spec = gymnasium.spec(task)
    venv = None
    if spec.vector_entry_point is not None:
        try:  # ask the native env for same-step autoreset (vector_entry_point takes it as a kwarg)
            venv = gymnasium.make_vec(task, num_envs=n_envs, vectorization_mode="vector_entry_point",
                                      **{"autoreset_mode": "same_step", **env_kwargs})
        except TypeError:  # the native env has no autoreset_mode option
            venv = gymnasium.make_vec(task, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs)
        if venv.metadata.get("autoreset_mode") not in SUPPORTED_MODES:
            log.info("%s: native vector env resets on the next step; using SyncVectorEnv", task)
            venv.close()
            venv = None
    if venv is None:
        venv = gymnasium.make_vec(task, num_envs=n_envs, vectorization_mode="sync",
                                  vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs)
    return _monitor(GymnasiumVecEnv(venv), monitor_path, monitor_append)


def _monitor(venv: VecEnv, monitor_path: str | Path | None, monitor_append: bool) -> VecMonitor:
    """SB3's ``VecMonitor`` writing ``monitor_path``, or continuing it (``monitor_append``, a resumed run)."""
    if monitor_path is None or not monitor_append or not Path(monitor_path).is_file():
        filename = None if monitor_path is None else str(monitor_path)
        return VecMonitor(venv, filename=filename, info_keywords=INFO_KEYWORDS)
    return _appending_monitor(venv, Path(monitor_path))


def _appending_monitor(venv: VecEnv, path: Path) -> VecMonitor:
    """A ``VecMonitor`` that appends to an existing monitor CSV (a resumed run), its clock continuing.

    A last row cut short by a kill is dropped first, so appended rows start on a line of their own.
    """
    from stable_baselines3.common.monitor import ResultsWriter

    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    last = text.rstrip("\n").rsplit("\n", 1)[-1].split(",")
    monitor = VecMonitor(venv, filename=None, info_keywords=INFO_KEYWORDS)
    try:
        monitor.t_start -= float(last[2])  # column t: seconds since the run started
    except (IndexError, ValueError):
        pass  # header only
    monitor.results_writer = ResultsWriter(str(path), extra_keys=INFO_KEYWORDS, override_existing=False)
    return monitor

