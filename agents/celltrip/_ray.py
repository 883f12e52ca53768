"""Rollouts of CellTRIP's attention PPO collected in Ray actors, one learner (``--backend ray``).

Each runner is a Ray actor holding its own world (built from the registered task id and its keyword
arguments, so nothing but names and numbers crosses the wire) and its own seeded generators; every
iteration the learner's weights are sent to the runners, each collects its share of the environment
steps, and the rollouts come back to one PPO update here. Runner ``i`` seeds its world with
``seed + 7919 i``, so runner 0 reproduces single-process training exactly and the others see other
episodes (other cells; CellTRIP's data partitions play this role).

Optional: needs ``pip install "cellgym[ray]"`` (in its own virtual environment).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cellgym.agents.zoo._ray import _import_ray

from ._ppo import CellTripConfig, EntityAttentionActorCritic, LocalCollector, Rollout

RUNNER_SEED_STRIDE = 7919


class _Runner:
    """What runs inside one Ray actor: a world, a copy of the network, a :class:`LocalCollector`."""

    def __init__(self, task: str, env_kwargs: dict[str, Any], config: dict[str, Any], seed: int | None,
                 index: int, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        from cellgym.registry import make

        from ._agent import CellTripAgent

        self.env = make(task, **env_kwargs)
        agent = CellTripAgent(**config)
        agent._check_env(self.env, seed)
        self.model: EntityAttentionActorCritic = agent.model
        cfg = CellTripConfig(**config)
        self.collector = LocalCollector(self.env, cfg, None if seed is None else seed + RUNNER_SEED_STRIDE * index)

    def reset(self) -> torch.Tensor:
        return self.collector.reset()

    def collect(self, state: dict[str, torch.Tensor], n_steps: int) -> tuple[Rollout, dict[str, float]]:
        self.model.load_state_dict(state)
        return self.collector.collect(self.model, n_steps)


class RayCollector:
    """Collect each iteration's environment steps in ``num_env_runners`` Ray actors (split evenly).

    Parameters
    ----------
    task, env_kwargs
        The registered CellTRIP task and its keyword arguments (each runner builds its own world).
    config
        :class:`CellTripConfig` fields (the runners' network copies must match the learner's).
    num_env_runners
        Ray actors, one CPU each (``ray.init`` is called with defaults when Ray is not initialised).
    """

    def __init__(self, task: str, env_kwargs: dict[str, Any], config: dict[str, Any], num_env_runners: int,
                 seed: int | None = None) -> None:
        ray = _import_ray()
        if int(num_env_runners) < 1:
            from cellgym.predictors.base.errors import CellgymError

            raise CellgymError(f"--num-env-runners must be >= 1 for the CellTRIP Ray backend; got {num_env_runners}.")
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        self._ray = ray
        remote = ray.remote(num_cpus=1)(_Runner)
        self.runners = [remote.remote(task, env_kwargs, {**config, "device": "cpu"}, seed, i)
                        for i in range(int(num_env_runners))]

    def reset(self) -> torch.Tensor:
        """Start every runner's first episode; their states, concatenated."""
        return torch.cat(self._ray.get([r.reset.remote() for r in self.runners]))

    def collect(self, model: EntityAttentionActorCritic, n_steps: int) -> tuple[Rollout, dict[str, float]]:
        """``n_steps`` environment steps in all, split over the runners; one merged rollout."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        share = math.ceil(n_steps / len(self.runners))
        parts, left = [], n_steps
        for runner in self.runners:
            if left <= 0:
                break
            parts.append(runner.collect.remote(state, min(share, left)))
            left -= share
        results = self._ray.get(parts)
        device = next(model.parameters()).device
        merged = Rollout()
        for ro, _ in results:
            for name in ("obs", "actions", "log_probs", "values", "rewards", "next_values", "episode_ends",
                         "advantages", "returns"):
                items = getattr(ro, name)
                if device.type != "cpu" and name != "episode_ends":
                    items = [type(x)(*(t.to(device) for t in x)) if isinstance(x, tuple) else x.to(device)
                             for x in items]
                getattr(merged, name).extend(items)
        stats = {key: sum(s[key] for _, s in results) / len(results) for key in results[0][1]}
        stats["rollout/episodes"] = sum(s["rollout/episodes"] for _, s in results)
        return merged, stats

    def close(self) -> None:
        """End the runner actors."""
        for runner in self.runners:
            self._ray.kill(runner)
