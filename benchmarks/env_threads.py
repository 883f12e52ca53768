"""Seconds per env step with the env's default num_threads (1) against torch's own thread count, same run.

    python benchmarks/env_threads.py [--task CellEnv-Reprogram-SERGIO-v0] [--steps 12] [--threads N]

Both envs are stepped alternately with the same actions, so machine load hits them alike. ``--threads``
is the process setting the "before" env inherits (default: torch's default, the number of physical cores);
issue 13 measured 9.4 s vs 0.58 s per SERGIO step on a busy 2-core machine. Prints the medians and ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import torch

import cellgym.envs  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="CellEnv-Reprogram-SERGIO-v0")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    envs = {f"num_threads=-1 (torch's {args.threads})": gym.make(args.task, num_threads=-1),
            "num_threads=1 (default)": gym.make(args.task)}
    times: dict[str, list[float]] = {k: [] for k in envs}
    rng = np.random.default_rng(0)
    for env in envs.values():
        env.reset(seed=0)
    for _ in range(args.steps):
        action = int(rng.integers(0, 8))  # a master-regulator KO/OE (not stop)
        for name, env in envs.items():
            t = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            times[name].append(time.perf_counter() - t)
            if terminated or truncated:
                env.reset(seed=0)
    print(f"{args.task}: {args.steps} steps each, cpu_count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:32s} median {v * 1000:8.1f} ms/step   (min {min(times[k]) * 1000:.1f}, max {max(times[k]) * 1000:.1f})")
    a, b = med.values()
    print(f"  ratio torch threads / one thread: {a / b:.2f}x")


if __name__ == "__main__":
    main()
