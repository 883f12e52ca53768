"""SAC and TD3 on CellEnv-Reprogram-HSC-Dose-v0 next to MaskablePPO on the on/off task: success, steps, total dose.

    python benchmarks/dose_agents.py [--algos sac td3 maskable_ppo] [-n N] [--episodes 50]
        [--env-kwargs cost:0.3] [--hyperparams gradient_steps:2] [--folder /tmp/dose_runs]

Each agent is trained exactly as ``cellgym train`` trains it (the shipped YAML of its task; ``-n`` overrides
the budget, ``--env-kwargs``/``--hyperparams`` are laid over both continuous agents' entries) into
``<folder>/benchmark``-style run folders, then plays ``--episodes`` deterministic episodes from starts
``0..episodes-1`` (the starts ``cellgym enjoy`` plays). MaskablePPO plays ``CellEnv-Reprogram-HSC-v0``
(on/off perturbations: each applied one is a dose of 1), in its Boolean world or, with ``--discrete-sde``,
in the dose task's SDE world. Total dose: the summed doses of an episode (the
env's ``info["total_dose"]``), compared with the least one-step dose found by ``benchmarks/dose_optimum.py``.
Timings are wall-clock on whatever machine this runs on (single torch thread).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import cellgym.envs  # noqa: F401
from cellgym.agents.cli._enjoy import load_agent
from cellgym.agents.cli._options import parse_kv
from cellgym.agents.cli._train import make_config, next_run_dir, train, write_config

TASKS = {"sac": "CellEnv-Reprogram-HSC-Dose-v0", "td3": "CellEnv-Reprogram-HSC-Dose-v0",
         "maskable_ppo": "CellEnv-Reprogram-HSC-v0"}


def play(agent, env, episodes: int) -> dict[str, float]:
    """Deterministic episodes from starts 0..episodes-1: success rate, mean steps, mean total dose."""
    success, steps, dose = [], [], []
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        agent.reset(env.unwrapped)
        done, n = False, 0
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, env.unwrapped, deterministic=True))
            n += 1
            done = terminated or truncated
        success.append(bool(info["success"]))
        steps.append(n)
        dose.append(float(info.get("total_dose", info.get("n_perturbations", np.nan))))
    return {"success": float(np.mean(success)), "steps": float(np.mean(steps)), "total_dose": float(np.mean(dose)),
            "dose_successful": float(np.mean([d for d, s in zip(dose, success, strict=True) if s] or [np.nan]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3", "maskable_ppo"], choices=list(TASKS))
    parser.add_argument("-n", "--n-timesteps", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-kwargs", nargs="*", default=[], help="for the dose task (e.g. cost:0.3)")
    parser.add_argument("--hyperparams", nargs="*", default=[], help="for SAC and TD3")
    parser.add_argument("--folder", default=None, help="runs folder (default: a temporary one)")
    parser.add_argument("--discrete-sde", action="store_true",
                        help="MaskablePPO in the dose task's SDE world (dynamics:sde) instead of the Boolean one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="dose_agents_"))
    env_kwargs = parse_kv(args.env_kwargs, "--env-kwargs")
    hyperparams = parse_kv(args.hyperparams, "--hyperparams")
    print("| agent | task | success | steps | total dose (all) | total dose (successes) | steps trained | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for algo in args.algos:
        task = TASKS[algo]
        dose_task = task.endswith("Dose-v0")
        discrete = {"dynamics": "sde"} if args.discrete_sde else {}
        config = make_config(task, algo, seed=args.seed, n_timesteps=args.n_timesteps,
                             env_kwargs=env_kwargs if dose_task else discrete,
                             hyperparams=hyperparams if dose_task else {}, eval_freq=0, save_freq=0)
        run_dir = next_run_dir(folder, algo, task)
        write_config(config, run_dir)
        t0 = time.perf_counter()
        train(config, run_dir, tb_dir=run_dir)
        seconds = time.perf_counter() - t0
        env = gym.make(task, **config["hyperparams"]["env_kwargs"])
        r = play(load_agent(algo, task, run_dir, env), env, args.episodes)
        kwargs = config["hyperparams"]["env_kwargs"]
        print(f"| {algo} | {task} {kwargs or ''} | {r['success']:.0%} | {r['steps']:.2f} | {r['total_dose']:.2f} | "
              f"{r['dose_successful']:.2f} | {config['n_timesteps']:,} | {seconds:.0f} |", flush=True)
    print(f"runs: {folder}")


if __name__ == "__main__":
    main()
