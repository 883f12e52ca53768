"""RL-Baselines3-Zoo options of ``cellgym train`` / ``enjoy`` (same names as RL Zoo's), and what they do.

``train``: ``-conf FILE`` (custom hyperparameter YAML), ``--vec-env {native,dummy,subproc}``,
``--n-eval-envs``, ``--log-interval``, ``--num-threads``, ``-optimize`` (Optuna, see ``_optimize``).
``enjoy``: ``--load-best`` (the ``best_model/`` that evaluation kept) and ``--load-checkpoint N``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cellgym.predictors.base._atomic import atomic_dir
from cellgym.predictors.base.errors import CellgymError

from ._runs import newest_checkpoint, read_yaml

__all__ = ["add_enjoy_options", "add_train_options", "model_dir", "zoo_config"]


def add_train_options(p: argparse.ArgumentParser) -> None:
    """RL-Zoo's training options, as one group."""
    g = p.add_argument_group("RL-Zoo options")
    g.add_argument("-conf", "--conf-file", default=None, metavar="YAML",
                   help="custom hyperparameter file (task id -> values, laid over the shipped ones)")
    g.add_argument("--vec-env", default="native", choices=["native", "dummy", "subproc"],
                   help="native: the task's batched env (default); dummy/subproc: SB3's DummyVecEnv/SubprocVecEnv")
    g.add_argument("--n-eval-envs", type=int, default=1, help="envs of the evaluation (default 1)")
    g.add_argument("--log-interval", type=int, default=-1,
                   help="log every N rollouts (episodes for DQN/SAC/TD3); -1: every rollout")
    g.add_argument("--num-threads", type=int, default=1,
                   help="torch threads (default 1: small networks, shared machines; <= 0: torch's default)")
    o = p.add_argument_group("hyperparameter search (Optuna)")
    o.add_argument("-optimize", "--optimize-hyperparameters", action="store_true",
                   help="search hyperparameters with Optuna; writes best_hyperparams.yml for -conf")
    o.add_argument("--n-trials", type=int, default=10, help="trials (default 10)")
    o.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="Optuna sampler (default tpe)")
    o.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="Optuna pruner (default median)")
    o.add_argument("--n-startup-trials", type=int, default=5, help="trials before TPE / pruning start (default 5)")
    o.add_argument("--n-evaluations", type=int, default=4, help="evaluations per trial, for pruning (default 4)")


def add_enjoy_options(p: argparse.ArgumentParser) -> None:
    """Which run and which saved model of it ``enjoy`` / ``record-video`` load."""
    p.add_argument("--env", required=True, help="task id")
    p.add_argument("--algo", required=True, help="agent name (trained: ppo, ...; baselines: random, greedy, bfs)")
    p.add_argument("-f", "--folder", default="runs", help="runs folder (default: runs)")
    p.add_argument("--exp-id", type=int, default=0, help="run number k of <task>_<k> (default 0: the latest)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--load-best", action="store_true", help="the best model evaluation kept (best_model/)")
    g.add_argument("--load-checkpoint", type=int, default=None, metavar="N",
                   help="the checkpoint saved at step N (checkpoints/step_N/)")


def zoo_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run options that go into ``config.yml`` (so ``train --config`` reproduces them)."""
    if args.n_eval_envs < 1:
        raise CellgymError(f"train --n-eval-envs: expected >= 1, got {args.n_eval_envs}.")
    return {"vec_env": args.vec_env, "n_eval_envs": args.n_eval_envs, "log_interval": args.log_interval,
            "num_threads": args.num_threads}


def set_threads(config: dict[str, Any]) -> None:
    """``torch.set_num_threads`` as the run asks (default 1)."""
    import torch

    n = int(config.get("num_threads", 1))
    if n > 0:
        torch.set_num_threads(n)


def resolve_run(args: argparse.Namespace) -> tuple[Path | None, dict[str, Any]]:
    """The run ``enjoy`` / ``record-video`` play (``None`` for a baseline) and its env kwargs, ``--env-kwargs`` on top."""
    from cellgym.registry import get

    from ._enjoy import find_run
    from ._options import parse_kv

    learns = getattr(get("agents", args.algo).load(), "learns", False)
    run_dir = find_run(args.folder, args.algo, args.env, args.exp_id) if learns else None
    config = read_yaml(run_dir / "config.yml", "run config") if run_dir else {}
    if not isinstance(config, dict):
        raise CellgymError(f"{run_dir / 'config.yml'} is not a run config (a YAML mapping); restore it from the run.")
    return run_dir, config.get("hyperparams", {}).get("env_kwargs", {}) | parse_kv(args.env_kwargs, "--env-kwargs")


def model_dir(run_dir: Path, args: argparse.Namespace | None = None) -> Path:
    """The run's ``best_model/`` (``--load-best``), ``checkpoints/step_N/`` (``--load-checkpoint N``) or, by
    default, its newest complete checkpoint (``model/`` when training ended, else the last periodic one)."""
    if getattr(args, "load_best", False):
        folder = run_dir / "best_model"
        if not folder.is_dir():
            raise CellgymError(f"--load-best: {run_dir} has no best_model/ (it is kept when the run evaluates: "
                               "train with --eval-freq > 0).")
        return folder
    step = getattr(args, "load_checkpoint", None)
    if step is not None:
        folder = run_dir / "checkpoints" / f"step_{step}"
        if not folder.is_dir():
            saved = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
                           if p.name.split("_")[1].isdigit())
            raise CellgymError(f"--load-checkpoint {step}: {run_dir} has no checkpoints/step_{step}/; saved steps: "
                               f"{saved or 'none (train with --save-freq N)'}.")
        return folder
    newest = newest_checkpoint(run_dir)
    if newest is None:
        raise CellgymError(f"{run_dir} holds no complete checkpoint (model/ or checkpoints/step_N/); train again.")
    return newest.path


def best_model_callback(agent: Any, folder: Path) -> Any:
    """An SB3 callback for ``EvalCallback(callback_on_new_best=...)``: save ``agent`` to ``folder`` (pickle-free)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveBest(BaseCallback):
        def _on_step(self) -> bool:
            atomic_dir(folder, agent.save)
            return True

    return SaveBest()
