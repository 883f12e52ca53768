"""Speed of CellTRIP's world + policy: steps per second, batched interface vs PettingZoo dict API.

Single thread, random weights, dim 32, two modalities of 64 and 32 features (both input and target),
N = 100, 1000, 4000 cells; once with the reference implementation's view (every cell sees all others up
to 1000 cells, a 1000-cell sample beyond) and once with cellgym's default view (``view_size=256``).
The reference CellTRIP implementation measured 393, 30.5 and 6.5 steps/s on this kind of machine with
the same settings; ratios are printed next to it.

    .venv/bin/python benchmarks/trip.py [--min-seconds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cellgym.agents.celltrip import CellTripAgent
from cellgym.envs.trip import TripParallelEnv

REFERENCE = {100: 393.0, 1000: 30.5, 4000: 6.5}


def make_world(n_cells: int, view_size: int, seed: int = 0) -> TripParallelEnv:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_cells, 8))
    m1 = latent @ rng.normal(size=(8, 64)) + 0.3 * rng.normal(size=(n_cells, 64))
    m2 = latent @ rng.normal(size=(8, 32)) + 0.3 * rng.normal(size=(n_cells, 32))
    return TripParallelEnv([m1, m2], kinds=["features", "features"], dim=32, view_size=view_size,
                           episode_length=(10**9, 10**9))


def steps_per_second(env: TripParallelEnv, agent: CellTripAgent, *, dict_api: bool, min_seconds: float) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    if dict_api:
        obs, _ = env.reset(seed=0)
        step = lambda o: env.step(agent.act(o, env, deterministic=False))[0]  # noqa: E731
    else:
        obs = env.reset_batch(seed=0)
        step = lambda o: env.step_batch(agent.model.act(o, generator=gen)[0])[0]  # noqa: E731
    with torch.no_grad():
        obs = step(obs)  # warm-up
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while n < 3 or time.perf_counter() - start < min_seconds:
            obs = step(obs)
            n += 1
    # The machine is shared: CPU time of this (single-threaded) process is the fairer clock; wall is printed too.
    return n / (time.process_time() - cpu), n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 1000, 4000])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("steps/s per CPU-second of this process (wall-clock steps/s in brackets; the machine is shared)")
    print("| view | N | batched steps/s | agent-steps/s | vs reference | dict-API steps/s | dict overhead |")
    print("|---|---|---|---|---|---|---|")
    for label, view_size in (("reference (all <=1000, sample 1000)", 1000), ("cellgym default (256)", 256)):
        for n in args.cells:
            env = make_world(n, view_size)
            agent = CellTripAgent()
            agent._check_env(env)
            batched, batched_wall = steps_per_second(env, agent, dict_api=False, min_seconds=args.min_seconds)
            dicts, dicts_wall = steps_per_second(env, agent, dict_api=True, min_seconds=args.min_seconds)
            print(f"| {label} | {n} | {batched:.1f} ({batched_wall:.1f}) | {batched * n:,.0f} | "
                  f"{batched / REFERENCE[n]:.2f}x (ref {REFERENCE[n]}) | {dicts:.1f} ({dicts_wall:.1f}) | "
                  f"{batched / dicts:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
