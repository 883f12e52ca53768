"""``cellgym enjoy``: run a trained agent (or a baseline) and print what it did, episode by episode.

With ``--truth PREDICTOR`` the chosen perturbations are replayed, open-loop and from the same starting
population, in the same task whose transition is ``PREDICTOR`` (e.g. ``grn.boolean``, the true world of
an agent trained in a learned one): the sim-to-real check.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cellgym.predictors.base.errors import CellgymError

from ._options import make_baseline, parse_kv
from ._progress import bar
from ._runs import newest_checkpoint
from ._zoo import add_enjoy_options, model_dir, resolve_run

__all__ = ["add_parser", "find_run", "load_agent", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``enjoy`` subcommand."""
    p = sub.add_parser("enjoy", help="run a trained agent or a baseline and show what it did",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_enjoy_options(p)  # --env --algo -f --exp-id --load-best --load-checkpoint
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="episode k starts from seed + k")
    p.add_argument("--plot", default=None, metavar="PNG", help="write source, target and paths to PNG")
    p.add_argument("--truth", default=None, metavar="PREDICTOR",
                   help="replay the chosen perturbations in the world whose transition is PREDICTOR")
    p.add_argument("--truth-kwargs", nargs="*", default=[], metavar="KEY:VALUE",
                   help="constructor kwargs of the --truth predictor, e.g. n_steps:6")
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE",
                   help="gymnasium.make kwargs (default: those of the run)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar over the episodes (stderr)")
    p.set_defaults(run=run)


def find_run(folder: str | Path, algo: str, task: str, exp_id: int = 0) -> Path:
    """The run folder ``folder/algo/task_<exp_id>`` (``exp_id`` 0: the highest k holding a complete checkpoint)."""
    root = Path(folder) / algo
    runs = {int(p.name.rsplit("_", 1)[1]): p for p in root.glob(f"{task}_*")
            if p.name.rsplit("_", 1)[1].isdigit() and newest_checkpoint(p) is not None}
    if not runs:
        raise CellgymError(f"no trained {algo} run for {task} under {root}/ (looked for {task}_<k>/model or "
                           f"checkpoints/step_N). Train one: cellgym train --env {task} --algo {algo} -f {folder}.")
    if exp_id and exp_id not in runs:
        raise CellgymError(f"--exp-id {exp_id}: no run {root}/{task}_{exp_id} with a complete checkpoint; runs with "
                           f"one: {sorted(runs)}.")
    return runs[exp_id or max(runs)]


def load_agent(algo: str, task: str, run_dir: Path | None, env: Any, model: Path | None = None,
               seed: int | None = None) -> Any:
    """A baseline by name, or the agent saved in ``model`` (``best_model/``, ``checkpoints/step_N/``; default:
    ``run_dir``'s newest complete checkpoint, ``model/`` when training ended, else the last periodic checkpoint
    of an interrupted run), rebuilt from that folder alone. ``seed`` seeds a baseline that draws random numbers."""
    from cellgym.registry import get

    spec = get("agents", algo)
    if not getattr(spec.load(), "learns", False):
        return make_baseline(algo, seed)
    if run_dir is None:
        raise CellgymError(f"agent {algo!r} learns: it needs a trained run (cellgym train --algo {algo}).")
    model = model or model_dir(run_dir)
    cls = spec.load()
    if algo in ("ppo", "a2c", "dqn", "sac", "td3", "maskable_ppo") or cls.__name__ == "SB3Agent":
        return cls.load(model, env=env)
    return cls.load(model)


def _truth(args: argparse.Namespace) -> Any:
    """The ``--truth`` predictor as the task's ``predictor=``: a saved folder or a registered name, which the
    world resolves (``grn.boolean`` in the HSC task is the task's own simulator); with ``--truth-kwargs`` an
    instance made with those."""
    from cellgym.registry import make_predictor

    kwargs = parse_kv(args.truth_kwargs, "--truth-kwargs")
    return make_predictor(args.truth, **kwargs) if kwargs else args.truth


def run(args: argparse.Namespace) -> int:
    """Play, print, plot."""
    import gymnasium

    from cellgym.agents.zoo._rollout import replay, run_episodes
    from cellgym.registry import get, is_parallel_task

    get("tasks", args.env)
    if args.episodes < 1:
        raise CellgymError(f"enjoy --episodes: expected >= 1, got {args.episodes}.")
    run_dir, env_kwargs = resolve_run(args)

    if is_parallel_task(args.env):
        from cellgym.registry import make

        env = make(args.env, **env_kwargs)
        agent = load_agent(args.algo, args.env, run_dir, env, model_dir(run_dir, args) if run_dir else None, args.seed)
        with bar(args.episodes, f"enjoy {args.algo}", "episode", enabled=args.progress) as progress:
            report = agent.enjoy(env, episodes=args.episodes, plot=args.plot, seed=args.seed, progress=progress.update)
        print(report)
        return 0

    env = gymnasium.make(args.env, **env_kwargs)
    model = model_dir(run_dir, args) if run_dir else None
    agent = load_agent(args.algo, args.env, run_dir, env, model, args.seed)
    episodes = []
    with bar(args.episodes, f"enjoy {args.algo}", "episode", enabled=args.progress) as progress:
        for k in range(args.episodes):  # one at a time, for the bar (episode k starts from seed + k)
            episodes += run_episodes(agent, env, 1, seed=args.seed + k, deterministic=args.deterministic)
            progress.update(1)
    truth = None
    if args.truth:
        from cellgym.envs.reprogram import truth_kwargs

        truth_env = gymnasium.make(args.env, **truth_kwargs(env_kwargs, _truth(args)))  # goal kept, model penalty dropped
        truth = [replay(ep, truth_env) for ep in episodes]
    if model is not None:
        print(f"agent: {args.algo} from {model} (step {agent.model.num_timesteps:,})" if hasattr(agent, "model")
              else f"agent: {args.algo} from {model}")
    for k, ep in enumerate(episodes):
        path = " -> ".join(f"{n} ({d:.3f})" for n, d in zip(ep.names, ep.distances, strict=True))
        print(f"episode {k + 1} (seed {ep.seed}): start ({ep.start_distance:.3f}) -> {path}")
        line = f"  {'success' if ep.success else 'failure'}, return {ep.ret:.3f}, {ep.steps} steps"
        if truth is not None:
            t = truth[k]
            line += (f" | in {args.truth}: {'success' if t.success else 'failure'}, distance "
                     f"{t.distances[-1] if t.distances else float('nan'):.3f}")
        print(line)
    print(f"success rate {np.mean([e.success for e in episodes]):.0%}, mean return "
          f"{np.mean([e.ret for e in episodes]):.3f}, mean steps {np.mean([e.steps for e in episodes]):.2f}"
          + (f" | in {args.truth}: success rate {np.mean([t.success for t in truth]):.0%}, mean steps "
             f"{np.mean([t.steps for t in truth]):.2f}" if truth else ""))
    if args.plot:
        from cellgym.envs.reprogram._render import plot_episodes

        plot_episodes(env.unwrapped, episodes, args.plot, title=f"{args.algo} on {args.env}")
        print(f"plot: {args.plot}")
    env.close()
    return 0

