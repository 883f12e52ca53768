"""MaskablePPO on CellEnv-Reprogram-HSC-v0 for a fixed budget, next to the random, greedy and bfs baselines.

Run: ``.venv/bin/python benchmarks/hsc_ppo.py [--timesteps 30000] [--episodes 200] [--seed 0]`` (one thread).
Prints a Markdown table of success rate and mean steps (successful episodes) on the same evaluation seeds.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.vec_env import DummyVecEnv

import cellgym.envs  # noqa: F401  (registers the tasks)
from cellgym.agents.planning import BFSAgent, EpisodeStats, GreedyAgent, RandomAgent, evaluate

TASK = "CellEnv-Reprogram-HSC-v0"


def _masked_env() -> gym.Env:
    return ActionMasker(gym.make(TASK), lambda env: env.unwrapped.action_masks())


def evaluate_ppo(model: MaskablePPO, n_episodes: int, seed: int) -> EpisodeStats:
    """Deterministic masked policy on episodes seeded ``seed + e``."""
    env = gym.make(TASK)
    success, steps, n_pert = [], [], []
    for e in range(n_episodes):
        obs, info = env.reset(seed=seed + e)
        done, t = False, 0
        while not done:
            action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(action))
            done, t = terminated or truncated, t + 1
        success.append(bool(info["success"]))
        steps.append(t)
        n_pert.append(info["n_perturbations"])
    return EpisodeStats(np.array(success), np.array(steps), np.array(n_pert))


def main() -> None:
    """Train, evaluate, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    eval_seed = 10_000 + args.seed  # evaluation populations are never the training ones' seeds
    venv = DummyVecEnv([_masked_env for _ in range(8)])
    venv.seed(args.seed)
    model = MaskablePPO(
        "MlpPolicy", venv, n_steps=128, batch_size=256, n_epochs=10, learning_rate=1.0e-3, gamma=0.99,
        ent_coef=0.01, policy_kwargs={"net_arch": [64, 64]}, seed=args.seed, verbose=0, device="cpu",
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps)
    train_s = time.perf_counter() - start
    env = gym.make(TASK)
    rows = {
        "random": evaluate(RandomAgent(seed=args.seed), env, args.episodes, seed=eval_seed),
        "greedy": evaluate(GreedyAgent(), env, args.episodes, seed=eval_seed),
        "bfs": evaluate(BFSAgent(), env, args.episodes, seed=eval_seed),
        f"MaskablePPO ({args.timesteps:,} steps)": evaluate_ppo(model, args.episodes, eval_seed),
    }
    bfs_len = rows["bfs"].steps[rows["bfs"].success]
    print(f"{TASK}: {args.episodes} evaluation episodes (seeds {eval_seed}..), PPO trained {train_s:.0f} s on 1 thread\n")
    print("| agent | success rate | mean steps (successes) | mean steps / bfs |")
    print("|---|---:|---:|---:|")
    for name, s in rows.items():
        print(f"| {name} | {s.success_rate:.3f} | {s.mean_steps_success:.2f} | {s.mean_steps_success / bfs_len.mean():.2f} |")
    lengths, counts = np.unique(bfs_len, return_counts=True)
    print("\nbfs optimal length distribution:", {int(k): int(v) for k, v in zip(lengths, counts, strict=True)})


if __name__ == "__main__":
    main()
