"""Plug your own fitted predictor into the generic task ``CellEnv-Reprogram-v0`` and train on it.

Any :class:`cellgym.predictors.Predictor` works: a registered one you fitted (as here), one loaded from
a folder (``predictor="path/to/saved"``), or your own subclass. The task takes the AnnData, the
source and target cells (a perturbation label, ``"column=value"`` or a mask) and the predictor.

Run: ``python examples/custom_predictor.py``.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo import make_sb3_vec_env
from cellgym.agents.zoo._rollout import run_episodes
from cellgym.predictors.base import DataSpec
from cellgym.predictors.grn import simulate_screen
from cellgym.registry import make_agent, make_predictor

TASK = "CellEnv-Reprogram-v0"

if __name__ == "__main__":
    torch.set_num_threads(1)
    # the data: a simulated screen of the myeloid network (log1p-normalised counts in X)
    truth = make_predictor("grn.boolean", model="krumsiek11", dynamics="sync", n_steps=6)
    adata = simulate_screen(truth, n_cells_per_condition=100, doubles=20, seed=0)
    spec = DataSpec(counts="counts")
    # your predictor: here the additive baseline (control + sum of single-perturbation effects)
    predictor = make_predictor("baseline.additive")
    predictor.fit(adata, spec, seed=0)

    env_kwargs = {"adata": adata, "spec": spec, "target": "cell_type=erythrocyte",
                  "predictor": predictor}
    env = gymnasium.make(TASK, **env_kwargs)
    obs, info = env.reset(seed=0)
    print(f"{TASK}: {env.action_space} over {env.unwrapped.perturbations[:4]}..., start distance "
          f"{info['distance']:.3f}")

    agent = make_agent("maskable_ppo", algo_kwargs={"n_steps": 64, "batch_size": 128, "gamma": 0.95}, seed=0)
    agent.learn(make_sb3_vec_env(TASK, 4, env_kwargs=env_kwargs), 8_000)
    for name, player in (("maskable_ppo", agent), ("greedy", make_agent("greedy")), ("random", make_agent("random"))):
        episodes = run_episodes(player, env, 20, seed=1000)
        print(f"{name:>12}: success {np.mean([e.success for e in episodes]):.0%}, "
              f"final distance {np.mean([e.distances[-1] for e in episodes]):.3f}, "
              f"e.g. {' -> '.join(episodes[0].names)}")
