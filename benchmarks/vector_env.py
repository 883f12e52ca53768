"""Env-steps/s of the native ReprogramVectorEnv against gymnasium's SyncVectorEnv of the same task.

Run: ``.venv/bin/python benchmarks/vector_env.py [--task CellEnv-Reprogram-HSC-v0] [--seconds 3]``.
Prints a Markdown table; it measures, it never fails on time.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

import cellgym.envs  # noqa: F401  (registers the tasks)


def steps_per_second(venv: gym.vector.VectorEnv, seconds: float, seed: int = 0) -> float:
    """Random-action env-steps per second (sub-env steps, autoresets included)."""
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    actions = [venv.action_space.sample() for _ in range(64)]
    venv.step(actions[0])  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        venv.step(actions[n % len(actions)])
        n += 1
    return n * venv.num_envs / (time.perf_counter() - start)


def main() -> None:
    """Print native vs sync env-steps/s at 1, 16 and 64 envs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CellEnv-Reprogram-HSC-v0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.task}, torch threads 1, {args.seconds:.0f} s per cell\n")
    print("| num_envs | native steps/s | sync steps/s | native / sync |")
    print("|---------:|---------------:|-------------:|--------------:|")
    for n in args.num_envs:
        native = gym.make_vec(args.task, num_envs=n, vectorization_mode="vector_entry_point")
        sync = gym.make_vec(args.task, num_envs=n, vectorization_mode="sync")
        a, b = steps_per_second(native, args.seconds), steps_per_second(sync, args.seconds)
        print(f"| {n} | {a:,.0f} | {b:,.0f} | {a / b:.1f}x |")
        native.close()
        sync.close()


if __name__ == "__main__":
    main()
