"""``SB3Agent``: stable-baselines3 (PPO, A2C, DQN, SAC, TD3) and sb3-contrib MaskablePPO as cellgym agents.

The algorithms are used as they are. Only saving differs from SB3's own ``model.zip`` (whose data part is
cloudpickled and runs code when loaded): a checkpoint here is ``config.yaml`` (the constructor arguments,
as data) plus ``weights.pt`` (the state dicts of the policy and its optimisers, read with
``weights_only=True``), after the house rule for checkpoints. An agent trained with ``normalize: true`` adds
``normalize.pt`` (VecNormalize's running statistics, as tensors).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from cellgym.agents.base import Agent
from cellgym.predictors.base._atomic import atomic_dir
from cellgym.predictors.base._checkpoint import load_tensors, read_yaml
from cellgym.predictors.base.errors import CheckpointError

from ._hyperparams import (
    algo_class,
    check_entry,
    resolve_action_noise,
    resolve_algo_kwargs,
    resolve_policy_kwargs,
)
from ._normalize import NORMALIZE_FILE, ObsNormalizer, restore_stats, stats_tensors, vec_normalize_options

__all__ = ["SB3Agent"]

FORMAT_VERSION = 1


class SB3Agent(Agent):
    """A stable-baselines3 algorithm behind the :class:`~cellgym.agents.base.Agent` interface.

    Parameters
    ----------
    algo : {"ppo", "a2c", "dqn", "sac", "td3", "maskable_ppo"}
        Which algorithm. ``maskable_ppo`` calls the env's ``action_masks()`` when it acts.
    policy : str
        SB3 policy alias, e.g. ``"MlpPolicy"``.
    policy_kwargs : dict, optional
        Policy options as data (``net_arch``, ``activation_fn: tanh``, ...), see ``_hyperparams``.
    algo_kwargs : dict, optional
        Constructor arguments of the algorithm (``learning_rate``, ``n_steps``, ...), checked against its
        signature; unknown names raise with the closest valid ones.
    device : str
        Torch device of the policy (``"cpu"``, ``"cuda"``, ``"auto"``).
    seed : int, optional
        Seed of the algorithm (network initialisation, exploration, env seeding).

    Examples
    --------
    >>> agent = SB3Agent("ppo", algo_kwargs={"n_steps": 64})  # doctest: +SKIP
    >>> agent.learn(gymnasium.make("CartPole-v1"), 2_000)  # doctest: +SKIP
    """

    learns: ClassVar[bool] = True

    def __init__(self, algo: str, *, policy: str = "MlpPolicy", policy_kwargs: dict[str, Any] | None = None,
                 algo_kwargs: dict[str, Any] | None = None, device: str = "cpu", seed: int | None = None) -> None:
        self.algo_cls = algo_class(algo)
        self.algo = algo
        self.policy = policy
        self.policy_kwargs = dict(policy_kwargs or {})
        self.algo_kwargs = check_entry(algo, dict(algo_kwargs or {}), "passed to SB3Agent")
        self.device = device
        self.seed = seed
        self.model: Any = None
        self.obs_normalizer: Any = None  # set by load() when the agent was trained with normalize: true

    @property
    def name(self) -> str:  # type: ignore[override]
        """The registered name (the algorithm)."""
        return self.algo

    def build(self, env: Any, *, tensorboard_log: str | None = None) -> Any:
        """Create the SB3 model on ``env`` (a gymnasium env or an SB3 ``VecEnv``); returns it."""
        self.model = self.algo_cls(self.policy, env, seed=self.seed, device=self.device, verbose=0,
                                   tensorboard_log=tensorboard_log,
                                   policy_kwargs=resolve_policy_kwargs(self.policy_kwargs),
                                   **resolve_action_noise(resolve_algo_kwargs(self.algo_kwargs), env.action_space))
        return self.model

    def learn(self, env: Any, total_timesteps: int, *, callback: Any = None, progress_bar: bool = False,
              reset_num_timesteps: bool = True, log_interval: int = 1) -> SB3Agent:
        """Train for ``total_timesteps`` env steps (all sub-envs together) on ``env``."""
        if self.model is None:
            self.build(env)
        elif env is not self.model.get_env():
            self.model.set_env(env)
        self.model.learn(total_timesteps, callback=callback, progress_bar=progress_bar,
                         reset_num_timesteps=reset_num_timesteps, log_interval=log_interval)
        return self

    def act(self, obs: Any, env: Any, *, deterministic: bool = True) -> Any:
        """The policy's action for one observation; masked by ``env.action_masks()`` for MaskablePPO."""
        if self.model is None:
            raise CheckpointError(f"SB3Agent({self.algo!r}) has no model yet: call learn() or load() first.")
        kwargs = {"action_masks": env.action_masks()} if self.algo == "maskable_ppo" else {}
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs)
        action, _ = self.model.predict(obs, deterministic=deterministic, **kwargs)
        return action.item() if isinstance(action, np.ndarray) and action.ndim == 0 else action

    # ------------------------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain data."""
        return {"algo": self.algo, "policy": self.policy, "policy_kwargs": self.policy_kwargs,
                "algo_kwargs": self.algo_kwargs, "device": self.device, "seed": self.seed}

    def save(self, path: str | Path, *, training_state: bool = False) -> Path:
        """Write ``path/config.yaml`` and ``path/weights.pt``; returns ``path``.

        The folder is built under a temporary name and renamed into place (an existing one is replaced), so
        a kill never leaves a half-written checkpoint. ``training_state=True`` adds what resuming needs
        beyond the weights: the update and episode counters and, for off-policy algorithms, the replay
        buffer (``replay_buffer.pt``, plain tensors).
        """
        if self.model is None:
            raise CheckpointError(f"SB3Agent({self.algo!r}) has no model to save: call learn() first.")
        _, variables = self.model._get_torch_save_params()
        weights = {"params": self.model.get_parameters(),
                   "variables": {n: _getattr(self.model, n).detach().cpu() for n in variables or []}}
        config = {"format_version": FORMAT_VERSION, "kind": "sb3", **self.config(),
                  "num_timesteps": int(self.model.num_timesteps),
                  "n_updates": int(getattr(self.model, "_n_updates", 0)),
                  "episode_num": int(getattr(self.model, "_episode_num", 0))}
        buffer = _buffer_state(self.model) if training_state else None
        vec_normalize = self.model.get_vec_normalize_env()
        normalize_stats = None
        if vec_normalize is not None:  # its running statistics as tensors, its options as data
            normalize_stats = stats_tensors(vec_normalize)
            config["normalize"] = vec_normalize_options(vec_normalize)

        def fill(tmp: Path) -> None:
            torch.save(weights, tmp / "weights.pt")
            if buffer is not None:
                torch.save(buffer, tmp / "replay_buffer.pt")
            if normalize_stats is not None:
                torch.save(normalize_stats, tmp / NORMALIZE_FILE)
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        return atomic_dir(path, fill)

    @classmethod
    def load(cls, path: str | Path, *, env: Any = None, device: str | None = None,  # type: ignore[override]
             **kwargs: Any) -> SB3Agent:
        """Read an agent written by :meth:`save`; ``env`` (gymnasium env or VecEnv) gives the spaces.

        Every problem with the folder (missing or truncated files, invalid or unsafe YAML, weights that do not
        fit the policy it describes) raises one :class:`CheckpointError` line; no code in it is ever run.
        """
        path = Path(path)
        config_file, weights_file = path / "config.yaml", path / "weights.pt"
        if not config_file.is_file() or not weights_file.is_file():
            raise CheckpointError(f"SB3 agent checkpoint {path}: expected config.yaml and weights.pt, found "
                                  f"{sorted(p.name for p in path.iterdir()) if path.is_dir() else 'no folder'}.")
        if env is None:
            raise CheckpointError("SB3Agent.load needs env= (the task's env or VecEnv) to rebuild the policy.")
        config = read_config(config_file)
        if config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"SB3 agent checkpoint {path}: format version {config.get('format_version')}"
                                  f", this cellgym reads version {FORMAT_VERSION}.")
        try:
            agent = cls(config["algo"], policy=config["policy"], policy_kwargs=config["policy_kwargs"] or {},
                        algo_kwargs=config["algo_kwargs"] or {}, device=device or config["device"], seed=config["seed"])
            with warnings.catch_warnings():  # rollout-size advice is moot for an agent loaded to act
                warnings.filterwarnings("ignore", message=".*mini-batch size.*", category=UserWarning)
                agent.build(env, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:  # a hand-edited config: a missing key, a wrong type, an unknown option
            raise CheckpointError(f"{config_file} does not describe an agent that can be built ({type(exc).__name__}: "
                                  f"{_first_line(exc)}); restore it from the run or train again.") from exc
        agent.load_weights(path)
        agent.model.num_timesteps = int(config.get("num_timesteps", 0))
        if "normalize" in config and agent.model.get_vec_normalize_env() is None:  # acting on a plain env
            agent.obs_normalizer = ObsNormalizer.from_folder(path, config["normalize"])
        return agent

    def load_weights(self, path: str | Path) -> None:
        """Load the weights of a checkpoint folder into the built model (for resuming)."""
        file = Path(path) / "weights.pt"
        weights = load_tensors(file, map_location=self.model.device)
        try:
            self.model.set_parameters(weights["params"], exact_match=True, device=self.model.device)
            for name, value in weights["variables"].items():
                with torch.no_grad():
                    _getattr(self.model, name).copy_(value)
        except Exception as exc:  # shapes or names that do not fit this policy (e.g. another net_arch)
            raise CheckpointError(f"{file} does not fit the {self.algo} policy built from its config "
                                  f"(net_arch {self.policy_kwargs.get('net_arch', 'default')}): {_first_line(exc)}. "
                                  "The weights and config.yaml come from different runs or were edited; restore "
                                  "them from one run.") from exc

        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None and (Path(path) / NORMALIZE_FILE).is_file():  # resuming: same statistics
            restore_stats(vec_normalize, load_tensors(Path(path) / NORMALIZE_FILE))

    def restore_training_state(self, path: str | Path) -> int:
        """Load weights, counters and (where saved) the replay buffer of ``path``; returns the step count."""
        path = Path(path)
        config = read_config(path / "config.yaml")
        self.load_weights(path)
        self.model.num_timesteps = int(config.get("num_timesteps", 0))
        self.model._n_updates = int(config.get("n_updates", 0))
        self.model._episode_num = int(config.get("episode_num", 0))
        if (path / "replay_buffer.pt").is_file() and getattr(self.model, "replay_buffer", None) is not None:
            _load_buffer(self.model.replay_buffer, load_tensors(path / "replay_buffer.pt"), path / "replay_buffer.pt")
        return self.model.num_timesteps


_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _buffer_state(model: Any) -> dict[str, Any] | None:
    """An off-policy replay buffer as plain tensors (SB3's own ``save_replay_buffer`` pickles it)."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    n = buffer.buffer_size if buffer.full else buffer.pos  # only the rows written so far
    state: dict[str, Any] = {"pos": int(buffer.pos), "full": bool(buffer.full)}
    for name in _BUFFER_ARRAYS:
        value = getattr(buffer, name, None)
        if isinstance(value, dict):
            state[name] = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in value.items()}
        elif isinstance(value, np.ndarray):
            state[name] = torch.from_numpy(np.ascontiguousarray(value[:n]))
    return state


def _load_buffer(buffer: Any, state: Any, file: Path) -> None:
    try:
        for name in _BUFFER_ARRAYS:
            if name not in state:
                continue
            target = getattr(buffer, name)
            if isinstance(target, dict):
                for k in target:
                    rows = state[name][k].numpy()
                    np.copyto(target[k][: len(rows)], rows)
            else:
                rows = state[name].numpy()
                np.copyto(target[: len(rows)], rows)
        buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])
    except Exception as exc:
        raise CheckpointError(f"{file} does not fit this algorithm's replay buffer ({_first_line(exc)}); "
                              "resume with the same buffer_size and task, or delete the file to start the buffer "
                              "empty.") from exc


def read_config(file: Path) -> dict[str, Any]:
    """A checkpoint's ``config.yaml`` through ``yaml.safe_load``; invalid or unsafe YAML is one line."""
    config = read_yaml(file)
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} does not describe an agent (a YAML mapping was expected); restore it.")
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
