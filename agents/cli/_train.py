"""``cellgym train``: train an agent on a task, RL-Baselines3-Zoo style, into ``runs/<algo>/<task>_<k>/``.

The run folder holds ``model/`` (the agent checkpoint), ``config.yml`` (everything needed to reproduce the
run: ``cellgym train --config <run>/config.yml``), ``args.yml``, ``command.txt``, ``monitor.csv``,
``eval/evaluations.npz``, ``checkpoints/`` and the TensorBoard events (SB3's scalars plus ``cell/*``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from cellgym.predictors.base.errors import CellgymError

from ._options import parse_kv
from ._zoo import add_train_options, best_model_callback, set_threads, zoo_config

#: environment steps on a PettingZoo task when -n is not given. Each step moves every cell, so 3000 steps
#: at 300 cells are ~0.9M agent-steps (a few minutes on one core); on CellEnv-Trip-Integration-v0 this
#: lifts kNN label agreement from 0.21 to 0.73 (benchmarks/trip.py integration --steps 3000).
PARALLEL_TIMESTEPS = 3_000

__all__ = ["add_parser", "make_config", "next_run_dir", "run", "train", "write_config"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``train`` subcommand."""
    p = sub.add_parser("train", help="train an agent on a task (SB3 zoo, CellTRIP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="task id, e.g. CellEnv-Reprogram-HSC-v0")
    p.add_argument("--algo", help="registered agent name: ppo, a2c, dqn, sac, td3, maskable_ppo, celltrip")
    p.add_argument("-n", "--n-timesteps", type=int, default=None, help="training steps (default: from YAML)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE", help="gymnasium.make kwargs")
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY:VALUE", help="override the YAML")
    p.add_argument("-f", "--folder", default="runs", help="runs folder (default: runs)")
    p.add_argument("-tb", "--tensorboard-log", default=None,
                   help="TensorBoard root (default: the run folder itself)")
    p.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N steps (<= 0: never)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N steps (<= 0: never)")
    p.add_argument("-i", "--trained-agent", default=None, metavar="CHECKPOINT",
                   help="resume from a checkpoint folder (a run's model/ or checkpoints/step_N/)")
    p.add_argument("--backend", default="sb3", choices=["sb3", "ray"],
                   help='sb3 (default) or ray: RLlib PPO, needs pip install "cellgym[ray]"')
    p.add_argument("--num-env-runners", type=int, default=0, help="--backend ray: remote sampling workers")
    p.add_argument("--config", default=None, help="reproduce a run from its config.yml")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    add_train_options(p)
    p.set_defaults(run=run)


def next_run_dir(folder: str | Path, algo: str, task: str) -> Path:
    """``folder/algo/task_<k>`` with the next free ``k`` (1, 2, ...), created."""
    root = Path(folder) / algo
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.rsplit("_", 1)[1]) for p in root.glob(f"{task}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    run_dir = root / f"{task}_{max(taken, default=0) + 1}"
    run_dir.mkdir()
    return run_dir


def _command(args: argparse.Namespace) -> str:
    """The command line of this run, rebuilt from the parsed arguments (non-default options only)."""
    words = ["cellgym", "train"]
    for action in build_train_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0 if value else 1])
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def build_train_parser() -> argparse.ArgumentParser:
    """A stand-alone parser holding only the ``train`` options."""
    sub = argparse.ArgumentParser(prog="cellgym").add_subparsers()
    add_parser(sub)
    return sub.choices["train"]


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the run needs, validated before any folder is made (the future ``config.yml``)."""
    from cellgym.agents.zoo._hyperparams import check_entry

    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CellgymError(f"train --config {path}: no such file; pass a run folder's config.yml.")
        config = yaml.safe_load(path.read_text())
        from cellgym.agents.zoo._compat import (
            check_algo_task,  # registers the tasks; the run's algo still fits
        )

        check_algo_task(config["algo"], config["task"], env_kwargs=config["hyperparams"].get("env_kwargs"))
        if not config.get("parallel"):
            hp = dict(config["hyperparams"])
            algo_kwargs = hp.pop("algo_kwargs")
            own = {k: v for k, v in hp.items() if k not in ("algo", "task", "source")}
            check_entry(config["algo"], {**own, **algo_kwargs}, f"in {path}")
        return config
    if not args.env or not args.algo:
        raise CellgymError("train: expected --env TASK and --algo NAME (or --config RUN/config.yml).")
    if args.trained_agent and not Path(args.trained_agent).is_dir():
        raise CellgymError(f"train -i {args.trained_agent}: no such checkpoint folder. Pass a run's model/ "
                           "or checkpoints/step_N/ folder.")
    if args.backend == "ray":
        from cellgym.agents.zoo._ray import _import_ray

        _import_ray()  # a clear install hint before anything else
        from cellgym.registry import is_parallel_task

        if args.algo != "ppo":
            raise CellgymError(f"--backend ray trains RLlib PPO: pass --algo ppo (got {args.algo!r}).")
        if is_parallel_task(args.env):
            raise CellgymError(f"--backend ray: {args.env} is a multi-agent task; its Dict observations need an "
                               "attention RLModule that is not written yet. Use --algo celltrip (sb3 backend).")
        if args.trained_agent:
            raise CellgymError("--backend ray cannot resume from a checkpoint (-i) yet.")
    config = make_config(args.env, args.algo, seed=args.seed,
                         device=args.device, n_timesteps=args.n_timesteps,
                         env_kwargs=parse_kv(args.env_kwargs, "--env-kwargs"),
                         hyperparams=parse_kv(args.hyperparams, "--hyperparams"), eval_freq=args.eval_freq,
                         eval_episodes=args.eval_episodes, save_freq=args.save_freq,
                         trained_agent=args.trained_agent, conf=args.conf_file) | zoo_config(args)
    if args.backend == "ray":
        config |= {"backend": "ray", "num_env_runners": args.num_env_runners}
    return config


def make_config(task: str, algo: str, *, seed: int = 0, device: str = "cpu", n_timesteps: int | None = None,
                env_kwargs: dict[str, Any] | None = None, hyperparams: dict[str, Any] | None = None,
                eval_freq: int = 0, eval_episodes: int = 10, save_freq: int = -1,
                trained_agent: str | None = None, conf: str | None = None) -> dict[str, Any]:
    """The checked configuration of one training run (what ``config.yml`` holds)."""
    from cellgym.agents.zoo._compat import check_algo_task
    from cellgym.agents.zoo._hyperparams import load_hyperparams, whole_rollouts
    from cellgym.registry import get, is_parallel_task, make_agent

    get("tasks", task)
    get("agents", algo)
    parallel = is_parallel_task(task)
    env_kwargs = dict(env_kwargs or {})
    check_algo_task(algo, task, env_kwargs=env_kwargs)  # one line on what fits, before any run folder
    if parallel:
        hp: dict[str, Any] = {"agent_kwargs": {"device": device, **(hyperparams or {})}, "env_kwargs": env_kwargs}
        n_timesteps = n_timesteps or PARALLEL_TIMESTEPS
        try:  # the multi-agent learner checks its own hyperparameters; fail before any run folder exists
            make_agent(algo, **hp["agent_kwargs"])
        except TypeError as exc:
            raise CellgymError(f"--hyperparams for {algo}: {exc}") from exc
    else:
        hparams = load_hyperparams(algo, task, hyperparams, conf=conf)
        hparams = replace(hparams, env_kwargs={**hparams.env_kwargs, **env_kwargs})
        n_timesteps = whole_rollouts(algo, n_timesteps or hparams.n_timesteps, hparams.n_envs, hparams.algo_kwargs)
        hp = replace(hparams, n_timesteps=n_timesteps).to_dict()
    if n_timesteps <= 0:
        raise CellgymError(f"train -n: expected a positive number of timesteps, got {n_timesteps}.")
    return {"task": task, "algo": algo, "parallel": parallel, "seed": seed, "device": device,
            "n_timesteps": n_timesteps, "eval_freq": eval_freq, "eval_episodes": eval_episodes,
            "save_freq": save_freq, "trained_agent": trained_agent, "hyperparams": hp,
            "versions": {p: version(p) for p in ("cellgym", "stable-baselines3", "sb3-contrib", "gymnasium",
                                                 "torch")}}


def run(args: argparse.Namespace) -> int:
    """Train, print where everything went."""
    if args.optimize_hyperparameters:
        from ._optimize import optimize

        return optimize(_resolve(args), args)
    config = _resolve(args)
    run_dir = next_run_dir(args.folder, config["algo"], config["task"])
    tb_dir = run_dir if args.tensorboard_log is None else Path(args.tensorboard_log) / run_dir.relative_to(
        args.folder)
    write_config(config, run_dir)
    (run_dir / "args.yml").write_text(yaml.safe_dump(vars(args) | {"run": None}, sort_keys=False))
    (run_dir / "command.txt").write_text(_command(args) + "\n")
    t0 = time.perf_counter()
    summary = train(config, run_dir, tb_dir=Path(tb_dir), progress_bar=args.progress)
    print(f"trained {config['algo']} on {config['task']} for {config['n_timesteps']:,} steps "
          f"in {time.perf_counter() - t0:.0f} s")
    print(f"run folder:  {run_dir}")
    print(f"TensorBoard: tensorboard --logdir {tb_dir}")
    if summary:
        print(summary)
    return 0


def write_config(config: dict[str, Any], run_dir: Path) -> Path:
    """Write ``run_dir/config.yml`` (``cellgym train --config`` reruns it)."""
    path = run_dir / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train(config: dict[str, Any], run_dir: Path, *, tb_dir: Path, progress_bar: bool = False) -> str:
    """Train as ``config`` says into ``run_dir``; returns a one-line evaluation summary (may be empty)."""
    import numpy as np

    set_threads(config)  # --num-threads (default 1: small networks, and the box is shared)
    if config.get("backend") == "ray":
        from cellgym.agents.zoo._ray import train_ray

        return train_ray(config, run_dir, tb_dir=tb_dir, progress_bar=progress_bar)
    if config.get("parallel"):
        return _train_parallel(config, run_dir, tb_dir, progress_bar)

    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.utils import set_random_seed

    from cellgym.agents._callbacks import CellMetricsCallback, CheckpointCallback
    from cellgym.agents.zoo import SB3Agent, make_sb3_vec_env
    from cellgym.agents.zoo._normalize import normalize_options, wrap_normalize
    from cellgym.agents.zoo._rollout import optimum_steps

    hp = config["hyperparams"]
    seed = config["seed"]
    set_random_seed(seed)  # global seeding belongs in the CLI only (STYLE R13)
    norm = normalize_options(hp.get("normalize"), gamma=hp["algo_kwargs"].get("gamma"))
    venv = wrap_normalize(make_sb3_vec_env(config["task"], hp["n_envs"], env_kwargs=hp["env_kwargs"],
                                           monitor_path=run_dir / "monitor.csv",
                                           vec_env=config.get("vec_env", "native")), norm)
    agent = SB3Agent(config["algo"], policy=hp["policy"], policy_kwargs=hp["policy_kwargs"],
                     algo_kwargs=hp["algo_kwargs"], device=config["device"], seed=seed)
    agent.build(venv)
    if config.get("trained_agent"):
        agent.load_weights(config["trained_agent"])
    agent.model.set_logger(configure(str(tb_dir), ["tensorboard", "csv"]))

    callbacks: list[Any] = [CellMetricsCallback(optimum_steps(config["task"], hp["env_kwargs"], seed=seed))]
    eval_cb = None
    if config["eval_freq"] > 0:
        eval_env = wrap_normalize(make_sb3_vec_env(config["task"], config.get("n_eval_envs", 1),
                                                   env_kwargs=hp["env_kwargs"]), norm, training=False)
        eval_env.seed(seed + 10_000)
        eval_cls = EvalCallback
        if config["algo"] == "maskable_ppo":
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as eval_cls
        eval_cb = eval_cls(eval_env, n_eval_episodes=config["eval_episodes"],
                           eval_freq=max(config["eval_freq"] // hp["n_envs"], 1),
                           log_path=str(run_dir / "eval"), deterministic=True, verbose=0,
                           callback_on_new_best=best_model_callback(agent, run_dir / "best_model"))
        callbacks.append(eval_cb)
    if config["save_freq"] > 0:
        callbacks.append(CheckpointCallback(agent, run_dir / "checkpoints", config["save_freq"]))
    agent.learn(venv, config["n_timesteps"], callback=CallbackList(callbacks), progress_bar=progress_bar,
                log_interval=max(config.get("log_interval", -1), 1))
    agent.save(run_dir / "model")
    venv.close()
    if eval_cb is None or not eval_cb.evaluations_results:
        return ""
    line = f"last evaluation ({config['eval_episodes']} episodes): mean return " \
           f"{np.mean(eval_cb.evaluations_results[-1]):.3f}"
    if eval_cb.evaluations_successes:
        line += f", success rate {np.mean(eval_cb.evaluations_successes[-1]):.0%}"
    return line


def _train_parallel(config: dict[str, Any], run_dir: Path, tb_dir: Path, progress_bar: bool) -> str:
    """PettingZoo tasks: the multi-agent learner registered as ``config['algo']`` (CellTRIP)."""
    from cellgym.registry import make, make_agent

    hp = config["hyperparams"]
    env = make(config["task"], **hp["env_kwargs"])
    agent = make_agent(config["algo"], **hp["agent_kwargs"])
    agent.learn(env, config["n_timesteps"], seed=config["seed"], tensorboard_log=str(tb_dir),
                progress_bar=progress_bar)
    agent.save(run_dir / "model")
    return ""
