"""Train MaskablePPO in the ground-truth Boolean myeloid world and compare it with the exact optimum.

Run: ``python examples/train_ground_truth.py`` (about a minute on 2 CPU cores). The same as
``cellgym train --env CellEnv-Reprogram-HSC-v0 --algo maskable_ppo`` followed by ``cellgym enjoy``,
written with the Python API.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo import load_hyperparams, make_sb3_vec_env
from cellgym.agents.zoo._rollout import run_episodes
from cellgym.registry import make_agent

TASK = "CellEnv-Reprogram-HSC-v0"

if __name__ == "__main__":
    torch.set_num_threads(1)
    hp = load_hyperparams("maskable_ppo", TASK)  # the tuned entry of agents/hyperparams/maskable_ppo.yml
    agent = make_agent("maskable_ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs,
                       algo_kwargs=hp.algo_kwargs, seed=0)
    agent.learn(make_sb3_vec_env(TASK, hp.n_envs), hp.n_timesteps)

    env = gymnasium.make(TASK)
    for name, player in (("maskable_ppo", agent), ("bfs (optimum)", make_agent("bfs")),
                         ("random", make_agent("random"))):
        episodes = run_episodes(player, env, 50, seed=1000)
        print(f"{name:>14}: success {np.mean([e.success for e in episodes]):.0%}, "
              f"mean steps {np.mean([e.steps for e in episodes]):.2f}, "
              f"e.g. {' -> '.join(episodes[0].names)}")
