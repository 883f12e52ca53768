"""``normalize: true`` (RL-Zoo's key): SB3's ``VecNormalize``, with its running statistics saved as tensors.

SB3 pickles a ``VecNormalize`` whole (``vecnormalize.pkl``); cellgym checkpoints stay pickle-free, so only the
numbers are kept: ``normalize.pt`` holds the running mean / variance / count of observations and returns
(read with ``weights_only=True``) and the agent's ``config.yaml`` holds the wrapper's options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellgym.predictors.base.errors import CheckpointError

from ._hyperparams import HyperparamError

__all__ = ["NORMALIZE_FILE", "ObsNormalizer", "normalize_options", "restore_stats", "stats_tensors", "wrap_normalize"]

NORMALIZE_FILE = "normalize.pt"
#: VecNormalize options a ``normalize:`` mapping may set (its other arguments are the env and ``training``)
OPTIONS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon")


def normalize_options(value: Any, *, gamma: float | None = None) -> dict[str, Any] | None:
    """``normalize:`` from the YAML -> ``VecNormalize`` keyword arguments (``None``: no normalisation).

    ``true`` normalises observations and returns; a mapping picks options (``{norm_reward: false}``).
    The return normaliser discounts with the algorithm's ``gamma`` unless the mapping sets one.
    """
    if value is None or value is False:
        return None
    options: dict[str, Any] = {} if value is True else dict(value)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise HyperparamError(f"normalize: unknown option {unknown[0]!r}; expected true or a mapping of {list(OPTIONS)}.")
    if gamma is not None:
        options.setdefault("gamma", float(gamma))
    return options


def wrap_normalize(venv: Any, options: dict[str, Any] | None, *, training: bool = True) -> Any:
    """``venv`` inside a ``VecNormalize`` (unchanged when ``options`` is ``None``); an eval env is made with
    ``training=False`` and raw rewards, and SB3's ``EvalCallback`` copies the training statistics into it."""
    if options is None:
        return venv
    from stable_baselines3.common.vec_env import VecNormalize

    if not training:
        options = {**options, "norm_reward": False}
    return VecNormalize(venv, training=training, **options)


def stats_tensors(vec_normalize: Any) -> dict[str, torch.Tensor]:
    """The running statistics of a ``VecNormalize`` as tensors (Box observations)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, rms in (("obs", vec_normalize.obs_rms), ("ret", vec_normalize.ret_rms)):
        if isinstance(rms, dict):
            raise CheckpointError("normalize: saving Dict-observation statistics is not supported; use a Box task.")
        out[f"{prefix}_mean"] = torch.as_tensor(np.asarray(rms.mean, dtype=np.float64))
        out[f"{prefix}_var"] = torch.as_tensor(np.asarray(rms.var, dtype=np.float64))
        out[f"{prefix}_count"] = torch.tensor(float(rms.count), dtype=torch.float64)
    return out


def vec_normalize_options(vec_normalize: Any) -> dict[str, Any]:
    """The options a ``VecNormalize`` was made with, as plain data."""
    return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
            for k in OPTIONS if (v := getattr(vec_normalize, k, None)) is not None}


def restore_stats(vec_normalize: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved statistics into a ``VecNormalize`` (resuming training)."""
    for prefix, rms in (("obs", vec_normalize.obs_rms), ("ret", vec_normalize.ret_rms)):
        mean = tensors[f"{prefix}_mean"].numpy()
        if np.shape(rms.mean) != mean.shape:
            raise CheckpointError(f"normalize.pt: {prefix} statistics have shape {mean.shape}, the env {np.shape(rms.mean)}.")
        rms.mean, rms.var = mean.copy(), tensors[f"{prefix}_var"].numpy().copy()
        rms.count = float(tensors[f"{prefix}_count"])


class ObsNormalizer:
    """``VecNormalize.normalize_obs`` for a loaded agent acting on a plain env: ``clip((obs - mean) / sqrt(var + eps))``."""

    def __init__(self, tensors: dict[str, torch.Tensor], options: dict[str, Any]) -> None:
        self.mean = tensors["obs_mean"].numpy()
        self.std = np.sqrt(tensors["obs_var"].numpy() + float(options.get("epsilon", 1e-8)))
        self.clip = float(options.get("clip_obs", 10.0))
        self.enabled = bool(options.get("norm_obs", True))

    @classmethod
    def from_folder(cls, folder: str | Path, options: dict[str, Any]) -> ObsNormalizer | None:
        """The normaliser saved in ``folder`` (``None`` when the agent was trained without one)."""
        file = Path(folder) / NORMALIZE_FILE
        if not file.is_file():
            return None
        return cls(torch.load(file, weights_only=True), options)

    def __call__(self, obs: Any) -> Any:
        if not self.enabled:
            return obs
        return np.clip((np.asarray(obs) - self.mean) / self.std, -self.clip, self.clip).astype(np.float32)
