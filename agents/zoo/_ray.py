"""``cellgym train --backend ray``: RLlib PPO on the same registered tasks, for scale-out on a Ray cluster.

Optional: needs ``pip install "cellgym[ray]"`` (best in its own virtual environment, since ray[rllib] pins
gymnasium 1.2.2). Imported lazily, so nothing here loads unless the Ray backend is asked for. The PPO
hyperparameters come from ``agents/hyperparams/ppo.yml`` and are translated to RLlib's names; the same
``cell/*`` scalars as the SB3 backend are written to TensorBoard. Single-agent tasks only: the CellTRIP
worlds' Dict observations (self, others, mask) have no RLlib default encoder (they need an attention
RLModule), so ``cellgym train`` refuses them with ``--backend ray``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cellgym.predictors.base.errors import CellgymError

__all__ = ["RAY_MISSING", "train_ray"]

RAY_MISSING = ('the Ray backend needs ray[rllib], which is not installed: pip install "cellgym[ray]" '
               "(in its own virtual environment: ray[rllib] pins gymnasium 1.2.2).")
_CELL_KEYS = ("success", "distance", "n_perturbations", "cost")
_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "elu": "elu", "silu": "swish"}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise CellgymError(RAY_MISSING) from exc
    return ray


def rllib_training_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    """SB3-named PPO hyperparameters (``ppo.yml``) -> ``PPOConfig.training`` keyword arguments."""
    kw = hp["algo_kwargs"]
    out: dict[str, Any] = {"train_batch_size_per_learner": int(kw.get("n_steps", 2048)) * int(hp["n_envs"]),
                           "minibatch_size": int(kw.get("batch_size", 64)),
                           "num_epochs": int(kw.get("n_epochs", 10))}
    names = {"learning_rate": "lr", "gamma": "gamma", "gae_lambda": "lambda_", "ent_coef": "entropy_coeff",
             "clip_range": "clip_param", "vf_coef": "vf_loss_coeff", "max_grad_norm": "grad_clip"}
    for sb3, rllib in names.items():
        if sb3 in kw:
            if isinstance(kw[sb3], dict):
                raise CellgymError(f"--backend ray: {sb3} schedules are not translated to RLlib; give a number.")
            out[rllib] = kw[sb3]
    return out


def _callbacks_class() -> type:
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class CellMetrics(RLlibCallback):
        """Log the final ``info`` of every episode (success, distance, ...) as RLlib episode metrics."""

        def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
            infos = episode.get_infos()
            last = infos[-1] if len(infos) else {}
            for key in _CELL_KEYS:
                if key in last and last[key] is not None:
                    metrics_logger.log_value(f"cell_{key}", float(last[key]), window=100)

    return CellMetrics


def train_ray(config: dict[str, Any], run_dir: Path, *, tb_dir: Path, progress_bar: bool = False) -> str:
    """Train RLlib PPO as ``config`` says (``config['num_env_runners']`` remote samplers); see module doc."""
    ray = _import_ray()
    import gymnasium
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env
    from torch.utils.tensorboard import SummaryWriter

    task, hp = config["task"], config["hyperparams"]
    env_kwargs = hp["env_kwargs"]

    def creator(_cfg: Any) -> Any:
        import cellgym.envs  # noqa: F401  (registers the tasks, also inside a Ray worker process)

        return gymnasium.make(task, **env_kwargs)

    name = f"cellgym_{task}"
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    register_env(name, creator)
    policy_kwargs = hp.get("policy_kwargs", {})
    model = DefaultModelConfig(
        fcnet_hiddens=list(policy_kwargs.get("net_arch", [64, 64])),
        fcnet_activation=_ACTIVATIONS.get(policy_kwargs.get("activation_fn", "tanh"), "tanh"))
    algo_cfg = (PPOConfig().environment(name).framework("torch")
                .env_runners(num_env_runners=int(config.get("num_env_runners", 0)),
                             num_envs_per_env_runner=int(hp["n_envs"]))
                .learners(num_learners=0)
                .training(**rllib_training_kwargs(hp))
                .rl_module(model_config=model)
                .callbacks(_callbacks_class())
                .debugging(seed=config["seed"]))
    algo = algo_cfg.build_algo()
    writer = SummaryWriter(str(tb_dir))
    t0, steps, summary = time.perf_counter(), 0, ""
    try:
        while steps < config["n_timesteps"]:
            result = algo.train()
            runners = result.get("env_runners", {})
            steps = int(result.get("num_env_steps_sampled_lifetime", runners.get("num_env_steps_sampled_lifetime", 0)))
            scalars = {"rollout/ep_rew_mean": runners.get("episode_return_mean"),
                       "rollout/ep_len_mean": runners.get("episode_len_mean"),
                       "time/fps": steps / max(time.perf_counter() - t0, 1e-9)}
            scalars |= {f"cell/{tag}": runners.get(f"cell_{key}") for key, tag in
                        (("success", "success_rate"), ("distance", "distance_to_goal"),
                         ("n_perturbations", "n_perturbations"), ("cost", "cost"))}
            for tag, value in scalars.items():
                if value is not None and np.isfinite(value):
                    writer.add_scalar(tag, float(value), steps)
            if progress_bar:
                print(f"\r{steps:,}/{config['n_timesteps']:,} steps", end="", flush=True)
            summary = (f"last iteration: mean return {runners.get('episode_return_mean', float('nan')):.3f}"
                       + (f", success rate {runners['cell_success']:.0%}" if "cell_success" in runners else ""))
        if progress_bar:
            print()
        import torch

        module = algo.get_module()
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        torch.save(module.state_dict(), run_dir / "model" / "rllib_module.pt")
    finally:
        writer.close()
        algo.stop()
    return summary
