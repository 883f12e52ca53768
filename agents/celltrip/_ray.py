"""Rollouts of CellTRIP's attention PPO collected in Ray actors, one learner (``--backend ray``).

Each runner is a Ray actor holding its own world (built from the registered task id and its keyword
arguments, so nothing but names and numbers crosses the wire) and its own seeded generators; every
iteration the learner's weights are sent to the runners, each collects its share of the environment
steps, and the rollouts come back to one PPO update here. Runner ``i`` seeds its world with
``seed + 7919 i``, so runner 0 reproduces single-process training exactly and the others see other
episodes. With ``partition`` each runner simulates only its own subset of the data's cells (CellTRIP's
``partition_cols``: e.g. one runner per group of labels or batches), through the world's ``cell_pool``.

Optional: needs ``pip install "cellgym[ray]"`` (in its own virtual environment).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
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

    def cell_pool(self) -> np.ndarray | None:
        """The data rows this runner's episodes draw from (None: all)."""
        return self.env.cell_pool

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
    partition
        None: every runner draws its episodes from all of the data's cells. Else each runner gets its own
        cells (:func:`partition_cells`): ``"labels"`` (whole label groups, e.g. cell types or batches, per
        runner), ``"random"`` (a seeded random split), or one array of data rows per runner.
    """

    def __init__(self, task: str, env_kwargs: dict[str, Any], config: dict[str, Any], num_env_runners: int,
                 seed: int | None = None, partition: str | Sequence[Sequence[int]] | None = None) -> None:
        ray = _import_ray()
        from cellgym.predictors.base.errors import CellgymError

        if int(num_env_runners) < 1:
            raise CellgymError(f"--num-env-runners must be >= 1 for the CellTRIP Ray backend; got {num_env_runners}.")
        runner_kwargs = [env_kwargs] * int(num_env_runners)
        if partition is not None:
            from cellgym.registry import make

            env = make(task, **env_kwargs)
            pools = partition_cells(env.n_total, env.labels, partition, int(num_env_runners), seed)
            runner_kwargs = [{**env_kwargs, "cell_pool": pool, "max_cells": min(env.max_cells, len(pool)),
                              "min_cells": min(env.min_cells, len(pool))} for pool in pools]
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        self._ray = ray
        remote = ray.remote(num_cpus=1)(_Runner)
        self.runners = [remote.remote(task, kwargs, {**config, "device": "cpu"}, seed, i)
                        for i, kwargs in enumerate(runner_kwargs)]

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


def partition_cells(n_cells: int, labels: np.ndarray | None, how: str | Sequence[Sequence[int]], n_parts: int,
                    seed: int | None = None) -> list[np.ndarray]:
    """Disjoint subsets of the data's rows, one per runner (CellTRIP's ``partition_cols`` idea).

    ``how="labels"``: whole label groups per part, the largest groups first, each to the part with the fewest
    cells so far (balanced; needs at least ``n_parts`` labels). ``"random"``: a random split into near-equal
    parts (seeded). A sequence: one array of row indices per part, used as given (checked: disjoint, in range).
    """
    from cellgym.predictors.base.errors import CellgymError

    if isinstance(how, str):
        if how == "random":
            order = np.random.default_rng(seed).permutation(n_cells)
            parts = np.array_split(order, n_parts)
        elif how == "labels":
            if labels is None:
                raise CellgymError("partition='labels' needs a world with labels; this task has none. "
                                   "Use partition='random' or give one array of rows per runner.")
            values, counts = np.unique(labels, return_counts=True)
            if len(values) < n_parts:
                raise CellgymError(f"partition='labels' needs at least one label per runner; got {len(values)} "
                                   f"labels for {n_parts} runners.")
            groups: list[list[int]] = [[] for _ in range(n_parts)]
            sizes = np.zeros(n_parts, np.int64)
            for i in np.argsort(-counts, kind="stable"):
                part = int(np.argmin(sizes))
                groups[part].extend(np.flatnonzero(labels == values[i]).tolist())
                sizes[part] += counts[i]
            parts = [np.asarray(g) for g in groups]
        else:
            raise CellgymError(f"partition must be 'labels', 'random' or one array of rows per runner; got {how!r}.")
    else:
        parts = [np.asarray(p, dtype=np.int64) for p in how]
        if len(parts) != n_parts:
            raise CellgymError(f"partition gives {len(parts)} arrays of rows for {n_parts} runners; give one per runner.")
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if len(np.unique(flat)) != len(flat) or (len(flat) and (flat.min() < 0 or flat.max() >= n_cells)):
            raise CellgymError(f"partition rows must be disjoint indices in [0, {n_cells}).")
    if any(len(p) < 2 for p in parts):
        raise CellgymError(f"every runner's partition needs at least 2 cells; got parts of sizes {[len(p) for p in parts]}.")
    return [np.sort(p).astype(np.int64) for p in parts]
