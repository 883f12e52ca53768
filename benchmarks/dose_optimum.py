"""The least total dose that solves CellEnv-Reprogram-HSC-Dose-v0 in one step, by grid search over pairs.

    python benchmarks/dose_optimum.py [--episodes 10] [--grid 0.1]

For each episode's starting population (seeds 0..episodes-1, as ``cellgym enjoy`` plays them), every pair of
the 16 perturbations at doses on a grid (one batched ``lookahead`` per pair grid) is tried; the least
summed dose that reaches the goal is the reference a dose agent's total dose is compared with (no single
perturbation at any dose reaches it). Prints the per-episode optimum, the pair, and the mean.
"""

from __future__ import annotations

import argparse
import itertools

import gymnasium as gym
import numpy as np
import torch

import cellgym.envs  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--grid", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = gym.make("CellEnv-Reprogram-HSC-Dose-v0").unwrapped
    p = env.n_perturbations
    levels = np.round(np.arange(args.grid, 1.0 + 1e-9, args.grid), 6)
    aa, bb = (g.ravel() for g in np.meshgrid(levels, levels, indexing="ij"))
    pairs = list(itertools.combinations(range(p), 2))
    actions = np.zeros((len(pairs) * len(aa), p), np.float32)
    for k, (i, j) in enumerate(pairs):
        actions[k * len(aa):(k + 1) * len(aa), i] = aa
        actions[k * len(aa):(k + 1) * len(aa), j] = bb
    best = []
    for seed in range(args.episodes):
        env.reset(seed=seed)
        nxt, _ = env.lookahead(actions)
        ok = nxt.distance.numpy() <= env.dynamics.threshold
        dose = actions.sum(1)
        k = int(np.argmin(np.where(ok, dose, np.inf)))
        names = [f"{env.perturbations[i]} {actions[k, i]:.2f}" for i in np.flatnonzero(actions[k])]
        best.append(dose[k] if ok.any() else np.nan)
        print(f"seed {seed}: least dose {dose[k]:.2f} ({' + '.join(names)})" if ok.any() else f"seed {seed}: none")
    print(f"mean least total dose over {args.episodes} starts (grid {args.grid}): {np.nanmean(best):.2f}")


if __name__ == "__main__":
    main()
