"""``cellgym benchmark``: trained agents next to the random, greedy and (where defined) bfs baselines.

Every agent plays the same episodes (the same starting populations, seeds ``1000 + k``). Learning agents
are trained first (``--seeds K`` runs each, default hyperparameters, run folders under ``<-f>/benchmark/``, apart
from the runs of ``cellgym train``); their
rows pool the episodes of all seeds; "timesteps trained" is per run, "wall time" covers training and
evaluation of all seeds. Writes a Markdown table (printed, and ``<out>.md``) and ``<out>.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from cellgym.predictors.base._atomic import atomic_write_text
from cellgym.predictors.base.errors import CellgymError

from ._options import make_baseline, parse_kv
from ._progress import bar
from ._train import make_config, next_run_dir, train, write_config

__all__ = ["COLUMNS", "add_parser", "benchmark", "run"]

BASELINES = ("random", "greedy", "bfs")
COLUMNS = ("task", "agent", "success_rate", "mean_return", "mean_steps", "steps_vs_optimum",
           "timesteps_trained", "wall_time_s")
EVAL_SEED = 1000


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``benchmark`` subcommand."""
    p = sub.add_parser("benchmark", help="train and compare agents against random/greedy/bfs baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", nargs="+", required=True, metavar="TASK")
    p.add_argument("--algo", nargs="+", required=True, metavar="NAME")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per learning agent")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per agent (and seed)")
    p.add_argument("-n", "--n-timesteps", type=int, default=None, help="training steps (default: from YAML)")
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY:VALUE")
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE")
    p.add_argument("-f", "--folder", default="runs")
    p.add_argument("--out", default=None, help="output prefix (default: <folder>/benchmark)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (stderr): one over the train/play jobs, one over each training run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Benchmark, print the Markdown table, write .md and .csv."""
    if args.seeds < 1 or args.episodes < 1:
        raise CellgymError(f"benchmark: expected --seeds >= 1 and --episodes >= 1, got {args.seeds}, {args.episodes}.")
    rows = benchmark(args.env, args.algo, seeds=args.seeds, episodes=args.episodes, n_timesteps=args.n_timesteps,
                     hyperparams=parse_kv(args.hyperparams, "--hyperparams"),
                     env_kwargs=parse_kv(args.env_kwargs, "--env-kwargs"), folder=args.folder,
                     progress_bar=args.progress)
    out = Path(args.out) if args.out else Path(args.folder) / "benchmark"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    print(table)
    atomic_write_text(out.with_suffix(".md"), table + "\n")  # a kill leaves the old files or the new ones
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out.with_suffix(".csv"), buffer.getvalue())
    print(f"\nwritten: {out.with_suffix('.md')}, {out.with_suffix('.csv')}")
    return 0


def benchmark(tasks: list[str], algos: list[str], *, seeds: int = 1, episodes: int = 50,
              n_timesteps: int | None = None, hyperparams: dict[str, Any] | None = None,
              env_kwargs: dict[str, Any] | None = None, folder: str | Path = "runs",
              progress_bar: bool = False) -> list[dict[str, Any]]:
    """One row per (task, agent): see :data:`COLUMNS`."""
    from cellgym.agents.zoo._rollout import optimum_steps
    from cellgym.registry import get, is_parallel_task

    for task in tasks:
        get("tasks", task)
        if is_parallel_task(task):
            raise CellgymError(f"benchmark {task}: multi-agent tasks have no random/greedy/bfs baselines; "
                               "use cellgym train / enjoy.")
    for algo in algos:
        get("agents", algo)
    env_kwargs = dict(env_kwargs or {})
    plan = []  # (task, optimum, [(agent, learns)]): known up front, so the bar has its total
    for task in tasks:
        optimum = optimum_steps(task, env_kwargs, episodes=episodes, seed=EVAL_SEED)
        names = list(dict.fromkeys([*algos, "random", "greedy"] + (["bfs"] if optimum is not None else [])))
        plan.append((task, optimum, [(n, bool(getattr(get("agents", n).load(), "learns", False))) for n in names]))
    jobs = sum(seeds if learns else 1 for _, _, agents in plan for _, learns in agents)
    rows = []
    with bar(jobs, "benchmark", "run", enabled=progress_bar) as progress:
        for task, optimum, agents in plan:
            rows += _benchmark_task(task, optimum, agents, seeds=seeds, episodes=episodes, n_timesteps=n_timesteps,
                                    hyperparams=hyperparams, env_kwargs=env_kwargs, folder=folder, progress=progress)
    return rows


def _benchmark_task(task: str, optimum: float | None, agents: list[tuple[str, bool]], *, seeds: int, episodes: int,
                    n_timesteps: int | None, hyperparams: dict[str, Any] | None, env_kwargs: dict[str, Any],
                    folder: str | Path, progress: Any) -> list[dict[str, Any]]:
    """The rows of one task; ``progress`` advances once per trained-and-played seed or played baseline."""
    import gymnasium

    from cellgym.agents.zoo._rollout import run_episodes

    from ._enjoy import load_agent

    rows = []
    for name, learns in agents:
        played, trained, t0 = [], 0, time.perf_counter()
        for seed in range(seeds if learns else 1):
            progress.set_postfix_str(f"{task} {name}" + (f" seed {seed}" if learns else ""))
            env = gymnasium.make(task, **env_kwargs)
            if learns:
                config = make_config(task, name, seed=seed, n_timesteps=n_timesteps, env_kwargs=env_kwargs,
                                     hyperparams=hyperparams, eval_freq=0)
                env.close()
                env = gymnasium.make(task, **config["hyperparams"]["env_kwargs"])
                run_dir = next_run_dir(Path(folder) / "benchmark", name, task)  # not runs/<algo>/
                write_config(config, run_dir)
                train(config, run_dir, tb_dir=run_dir, progress_bar=not progress.disable)
                agent = load_agent(name, task, run_dir, env)
                trained = config["n_timesteps"]  # per run; the rows pool every seed's episodes
            else:
                agent = make_baseline(name, EVAL_SEED)
            played += run_episodes(agent, env, episodes, seed=EVAL_SEED)
            env.close()
            progress.update(1)
        steps = float(np.mean([e.steps for e in played]))
        rows.append({"task": task, "agent": name,
                     "success_rate": float(np.mean([e.success for e in played])),
                     "mean_return": float(np.mean([e.ret for e in played])),
                     "mean_steps": steps,
                     "steps_vs_optimum": steps / optimum if optimum else float("nan"),
                     "timesteps_trained": trained if learns else 0,
                     "wall_time_s": time.perf_counter() - t0})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = "| task | agent | success rate | mean return | mean steps | steps vs optimum | timesteps trained | wall time (s) |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ratio = "-" if np.isnan(r["steps_vs_optimum"]) else f"{r['steps_vs_optimum']:.2f}x"
        lines.append(f"| {r['task']} | {r['agent']} | {r['success_rate']:.0%} | {r['mean_return']:.3f} | "
                     f"{r['mean_steps']:.2f} | {ratio} | {r['timesteps_trained']:,} | {r['wall_time_s']:.1f} |")
    return "\n".join(lines)
