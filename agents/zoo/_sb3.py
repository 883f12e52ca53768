"""``SB3Agent``: stable-baselines3 (PPO, A2C, DQN, SAC, TD3) and sb3-contrib MaskablePPO as cellgym agents.

The algorithms are used as they are. Only saving differs from SB3's own ``model.zip`` (whose data part is
cloudpickled and runs code when loaded): a checkpoint here is ``config.yaml`` (the constructor arguments,
as data) plus ``weights.pt`` (the state dicts of the policy and its optimisers, read with
``weights_only=True``), after the house rule for checkpoints.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from cellgym.agents.base import Agent
from cellgym.predictors.base.errors import CheckpointError

from ._hyperparams import (
    algo_class,
    check_entry,
    resolve_action_noise,
    resolve_algo_kwargs,
    resolve_policy_kwargs,
)

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
        action, _ = self.model.predict(obs, deterministic=deterministic, **kwargs)
        return action.item() if isinstance(action, np.ndarray) and action.ndim == 0 else action

    # ------------------------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain data."""
        return {"algo": self.algo, "policy": self.policy, "policy_kwargs": self.policy_kwargs,
                "algo_kwargs": self.algo_kwargs, "device": self.device, "seed": self.seed}

    def save(self, path: str | Path) -> Path:
        """Write ``path/config.yaml`` and ``path/weights.pt``; returns ``path``."""
        if self.model is None:
            raise CheckpointError(f"SB3Agent({self.algo!r}) has no model to save: call learn() first.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _, variables = self.model._get_torch_save_params()
        weights = {"params": self.model.get_parameters(),
                   "variables": {n: _getattr(self.model, n).detach().cpu() for n in variables or []}}
        torch.save(weights, path / "weights.pt")
        config = {"format_version": FORMAT_VERSION, "kind": "sb3", **self.config(),
                  "num_timesteps": int(self.model.num_timesteps)}
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    @classmethod
    def load(cls, path: str | Path, *, env: Any = None, device: str | None = None,  # type: ignore[override]
             **kwargs: Any) -> SB3Agent:
        """Read an agent written by :meth:`save`; ``env`` (gymnasium env or VecEnv) gives the spaces."""
        path = Path(path)
        config_file, weights_file = path / "config.yaml", path / "weights.pt"
        if not config_file.is_file() or not weights_file.is_file():
            raise CheckpointError(f"SB3 agent checkpoint {path}: expected config.yaml and weights.pt, found "
                                  f"{sorted(p.name for p in path.iterdir()) if path.is_dir() else 'no folder'}.")
        if env is None:
            raise CheckpointError("SB3Agent.load needs env= (the task's env or VecEnv) to rebuild the policy.")
        config = yaml.safe_load(config_file.read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"SB3 agent checkpoint {path}: format version {config.get('format_version')}"
                                  f", this cellgym reads version {FORMAT_VERSION}.")
        agent = cls(config["algo"], policy=config["policy"], policy_kwargs=config["policy_kwargs"],
                    algo_kwargs=config["algo_kwargs"], device=device or config["device"], seed=config["seed"])
        with warnings.catch_warnings():  # rollout-size advice is moot for an agent loaded to act
            warnings.filterwarnings("ignore", message=".*mini-batch size.*", category=UserWarning)
            agent.build(env, **kwargs)
        agent.load_weights(path)
        agent.model.num_timesteps = int(config.get("num_timesteps", 0))
        return agent

    def load_weights(self, path: str | Path) -> None:
        """Load the weights of a checkpoint folder into the built model (for resuming)."""
        weights = torch.load(Path(path) / "weights.pt", map_location=self.model.device, weights_only=True)
        self.model.set_parameters(weights["params"], exact_match=True, device=self.model.device)
        for name, value in weights["variables"].items():
            with torch.no_grad():
                _getattr(self.model, name).copy_(value)


def _getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
