"""``cellgym train``: train an agent on a task, RL-Baselines3-Zoo style, into ``runs/<algo>/<task>_<k>/``.

The run folder holds ``model/`` (the agent checkpoint), ``config.yml`` (everything needed to reproduce the
run: ``cellgym train --config <run>/config.yml``), ``args.yml``, ``command.txt``, ``monitor.csv``,
``eval/evaluations.npz``, ``checkpoints/`` and the TensorBoard events (SB3's scalars plus ``cell/*``).

Nothing is lost to an interruption: checkpoints are saved periodically by default (a tenth of the run, at
least every 1,000 steps), each written under a temporary name and renamed; SIGINT (Ctrl-C) or SIGTERM ends
training at the next step and saves ``model/`` with one line saying how to continue. ``-i RUN`` continues
that run in its own folder from its newest complete checkpoint (``-n`` is the total): same step counter,
replay buffer, TensorBoard curves and monitor CSV. A run that fails before its first checkpoint leaves no
folder behind.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from cellgym.predictors.base._atomic import atomic_dir, atomic_write_text
from cellgym.predictors.base.errors import CellgymError

from ._options import parse_kv
from ._progress import sb3_progress_callback
from ._runs import TB_POINTER, Checkpoint, newest_checkpoint, next_run_dir, read_yaml, resolve_resume
from ._zoo import add_train_options, best_model_callback, set_threads, zoo_config

__all__ = ["GracefulStop", "add_parser", "make_config", "next_run_dir", "run", "train", "write_config"]


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
    p.add_argument("--save-freq", type=int, default=None,
                   help="checkpoint every N steps (default: a tenth of -n, at least 1000; <= 0: never)")
    p.add_argument("-i", "--trained-agent", default=None, metavar="RUN",
                   help="continue a run in its own folder: the run folder, its model/ or a checkpoints/step_N/ "
                        "(default: its newest complete checkpoint); -n is the total number of steps")
    p.add_argument("--backend", default="sb3", choices=["sb3", "ray"],
                   help='sb3 (default) or ray (RLlib PPO; --algo celltrip: rollouts in Ray actors), needs pip install "cellgym[ray]"')
    p.add_argument("--num-env-runners", type=int, default=0, help="--backend ray: remote sampling workers")
    p.add_argument("--partition", default=None, choices=["labels", "random"],
                   help="--backend ray --algo celltrip: each runner simulates its own cells (whole label groups, "
                        "or a random split; CellTRIP's partition_cols)")
    p.add_argument("--config", default=None, help="reproduce a run from its config.yml")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    add_train_options(p)
    p.set_defaults(run=run)


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
        config = read_yaml(path, "run config")
        if not isinstance(config, dict) or not {"task", "algo", "hyperparams"} <= set(config):
            raise CellgymError(f"train --config {path}: not a run's config.yml (no task, algo, hyperparams).")
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
    if args.backend == "ray":
        from cellgym.agents.zoo._ray import _import_ray

        _import_ray()  # a clear install hint before anything else
        from cellgym.registry import is_parallel_task

        if args.algo == "celltrip":
            if not is_parallel_task(args.env):
                raise CellgymError(f"--backend ray --algo celltrip trains on a CellTRIP world; {args.env} is not one.")
            if args.num_env_runners < 1:
                raise CellgymError("--backend ray --algo celltrip: pass --num-env-runners N (>= 1) Ray actors.")
        elif args.algo != "ppo":
            raise CellgymError(f"--backend ray trains RLlib PPO (--algo ppo) or CellTRIP (--algo celltrip); "
                               f"got {args.algo!r}.")
        elif is_parallel_task(args.env):
            raise CellgymError(f"--backend ray --algo ppo: {args.env} is a multi-agent task; use --algo celltrip.")
        if args.trained_agent:
            raise CellgymError("--backend ray cannot resume from a checkpoint (-i) yet.")
    if args.partition and not (args.backend == "ray" and args.algo == "celltrip"):
        raise CellgymError("--partition splits the cells between Ray runners: use it with --backend ray --algo celltrip.")
    config = make_config(args.env, args.algo, seed=args.seed,
                         device=args.device, n_timesteps=args.n_timesteps,
                         env_kwargs=parse_kv(args.env_kwargs, "--env-kwargs"),
                         hyperparams=parse_kv(args.hyperparams, "--hyperparams"), eval_freq=args.eval_freq,
                         eval_episodes=args.eval_episodes, save_freq=args.save_freq,
                         conf=args.conf_file) | zoo_config(args)
    if args.backend == "ray":
        config |= {"backend": "ray", "num_env_runners": args.num_env_runners}
        if args.partition:
            config["partition"] = args.partition
    return config


def make_config(task: str, algo: str, *, seed: int = 0, device: str = "cpu", n_timesteps: int | None = None,
                env_kwargs: dict[str, Any] | None = None, hyperparams: dict[str, Any] | None = None,
                eval_freq: int = 0, eval_episodes: int = 10, save_freq: int | None = None,
                conf: str | None = None) -> dict[str, Any]:
    """The checked configuration of one training run (what ``config.yml`` holds).

    ``save_freq`` None: a checkpoint every tenth of the run, at least 1,000 steps apart; <= 0: none.
    ``conf``: a hyperparameter YAML laid over the shipped ones (RL Zoo's ``-conf``).
    """
    from cellgym.agents.zoo._compat import check_algo_task
    from cellgym.agents.zoo._hyperparams import load_hyperparams, whole_rollouts
    from cellgym.registry import get, is_parallel_task, make_agent

    get("tasks", task)
    get("agents", algo)
    parallel = is_parallel_task(task)
    env_kwargs = dict(env_kwargs or {})
    check_algo_task(algo, task, env_kwargs=env_kwargs)  # one line on what fits, before any run folder
    if parallel:  # <algo>.yml (celltrip.yml): n_timesteps, env_kwargs and the learner's own hyperparameters
        hparams = load_hyperparams(algo, task, hyperparams, conf=conf)
        hp: dict[str, Any] = {"agent_kwargs": {"device": device, **hparams.algo_kwargs},
                              "env_kwargs": {**hparams.env_kwargs, **env_kwargs}, "source": hparams.source}
        n_timesteps = n_timesteps or hparams.n_timesteps
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
    if save_freq is None:
        save_freq = max(n_timesteps // 10, 1000)
    return {"task": task, "algo": algo, "parallel": parallel, "seed": seed, "device": device,
            "n_timesteps": n_timesteps, "eval_freq": eval_freq, "eval_episodes": eval_episodes,
            "save_freq": save_freq, "hyperparams": hp,
            "versions": {p: version(p) for p in ("cellgym", "stable-baselines3", "sb3-contrib", "gymnasium",
                                                 "torch")}}


class GracefulStop:
    """While active, the first SIGINT/SIGTERM sets :attr:`signal` (training ends at the next step and saves);
    a second one, or the first where training cannot stop between steps (``immediate``), raises
    ``KeyboardInterrupt``."""

    def __init__(self, *, immediate: bool = False) -> None:
        self.immediate = immediate
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None or self.immediate:
            self.signal = signum
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resume_target(args: argparse.Namespace) -> tuple[Path, Checkpoint, dict[str, Any]]:
    """Where ``-i`` continues: (run folder, checkpoint, the run's config with the new total); writes nothing."""
    run_dir, ckpt = resolve_resume(args.trained_agent)
    config = read_yaml(run_dir / "config.yml", "run config")
    if not isinstance(config, dict) or not {"task", "algo", "n_timesteps", "hyperparams"} <= set(config):
        raise CellgymError(f"train -i: {run_dir / 'config.yml'} is not a run config (task, algo, n_timesteps, "
                           "hyperparams); restore it from the run.")
    from cellgym.registry import get

    get("tasks", config["task"])  # registers the task with gymnasium (and checks it still exists)
    get("agents", config["algo"])
    if config.get("parallel") or config.get("backend") == "ray":
        raise CellgymError(f"train -i {args.trained_agent}: only stable-baselines3 runs can be continued yet; "
                           f"{config['algo']} runs cannot. Start a new run.")
    for flag, key, given in (("--env", "task", args.env), ("--algo", "algo", args.algo)):
        if given and given != config[key]:
            raise CellgymError(f"train -i: the run {run_dir} is {config[key]!r}, not {flag} {given!r}; "
                               f"drop {flag} or pass another run.")
    if args.hyperparams or args.env_kwargs or args.config:
        raise CellgymError("train -i continues a run with its own config.yml; --hyperparams, --env-kwargs and --config "
                           "start a new run instead (drop -i).")
    checkpoint_config = read_yaml(ckpt.path / "config.yaml")  # a damaged one fails here, in one line
    if not isinstance(checkpoint_config, dict) or not isinstance(checkpoint_config.get("num_timesteps"), int):
        raise CellgymError(f"train -i: {ckpt.path / 'config.yaml'} does not record num_timesteps; it is not a "
                           "checkpoint of cellgym train. Pass another checkpoint of the run.")
    total = args.n_timesteps or config["n_timesteps"]
    if total < ckpt.step:
        raise CellgymError(f"train -i: {ckpt.path} is already at step {ckpt.step:,} > {total:,}; pass a larger -n "
                           "(the total number of steps of the run).")
    save_freq = config.get("save_freq") if args.save_freq is None else args.save_freq
    return run_dir, ckpt, {**config, "n_timesteps": total, "save_freq": save_freq}


def run(args: argparse.Namespace) -> int:
    """Train (or continue a run), print where everything went."""
    if args.optimize_hyperparameters:
        from ._optimize import optimize

        return optimize(_resolve(args), args)
    if args.trained_agent:
        run_dir, resume, config = _resume_target(args)
        if resume.step >= config["n_timesteps"]:  # e.g. killed after its last save: resuming it is a no-op
            print(f"{run_dir} is already trained to {resume.step:,} steps ({resume.path}); nothing to continue. "
                  f"Pass a larger -n to train further; evaluate it with cellgym enjoy.")
            return 0
        pointer = run_dir / TB_POINTER
        tb_dir = Path(pointer.read_text().strip()) if pointer.is_file() else run_dir
    else:
        config, resume = _resolve(args), None
        run_dir = next_run_dir(args.folder, config["algo"], config["task"])
        # TensorBoard runs get their own unique name under -tb (another runs folder may hold a run of the same k)
        tb_dir = run_dir if args.tensorboard_log is None else next_run_dir(args.tensorboard_log, config["algo"],
                                                                           config["task"])
    t0 = time.perf_counter()
    immediate = bool(config.get("parallel")) or config.get("backend") == "ray"
    try:
        with GracefulStop(immediate=immediate) as stop:
            if resume is None:
                write_config(config, run_dir)
                atomic_write_text(run_dir / "args.yml", yaml.safe_dump(vars(args) | {"run": None}, sort_keys=False))
                atomic_write_text(run_dir / "command.txt", _command(args) + "\n")
                if tb_dir != run_dir:
                    atomic_write_text(run_dir / TB_POINTER, str(tb_dir.resolve()) + "\n")
            summary = train(config, run_dir, tb_dir=Path(tb_dir), progress_bar=args.progress, resume=resume, stop=stop)
            if resume is not None:  # recorded once it ran (a resume that fails changes nothing in the run)
                with (run_dir / "command.txt").open("a") as fh:
                    fh.write(f"# continued from {resume.path} (step {resume.step}): {_command(args)}\n")
    except BaseException as exc:
        removed = resume is None and newest_checkpoint(run_dir) is None
        if removed:  # nothing usable was saved: leave no half-made run behind
            shutil.rmtree(run_dir, ignore_errors=True)
            if tb_dir != run_dir:
                shutil.rmtree(tb_dir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            newest = None if removed else newest_checkpoint(run_dir)
            kept = f"newest checkpoint {newest.path} (step {newest.step:,})" if newest else "nothing was saved"
            print(f"cellgym train: interrupted; {kept}{'; the run folder was removed' if removed else ''}.",
                  file=sys.stderr)
            return 130
        raise
    if stop.signal is not None:
        newest = newest_checkpoint(run_dir)
        print(f"cellgym train: stopped by {signal.Signals(stop.signal).name} at step {newest.step:,} of "
              f"{config['n_timesteps']:,}; model saved to {newest.path}. Continue with: cellgym train -i {run_dir}",
              file=sys.stderr)
        return 128 + stop.signal
    verb = "continued" if resume else "trained"
    print(f"{verb} {config['algo']} on {config['task']} to {config['n_timesteps']:,} steps "
          f"in {time.perf_counter() - t0:.0f} s")
    print(f"run folder:  {run_dir}")
    print(f"TensorBoard: tensorboard --logdir {tb_dir}")
    if summary:
        print(summary)
    return 0


def write_config(config: dict[str, Any], run_dir: Path) -> Path:
    """Write ``run_dir/config.yml`` atomically (``cellgym train --config`` reruns it)."""
    return atomic_write_text(run_dir / "config.yml", yaml.safe_dump(config, sort_keys=False))


def _logger(folder: Path, start: int) -> Any:
    """SB3's TensorBoard + CSV logger for ``folder``, continuing an earlier segment of the run from ``start``.

    TensorBoard: ``purge_step=start`` tells readers to drop events of an earlier segment at or after
    ``start`` (written after the checkpoint this segment resumes from), so curves continue, never restart.
    CSV: ``progress.csv`` is appended to, not truncated.
    """
    from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
    from torch.utils.tensorboard import SummaryWriter

    class AppendingCSV(CSVOutputFormat):
        def __init__(self, path: Path) -> None:
            text = path.read_text() if path.is_file() else ""
            if not text:
                super().__init__(str(path))
                return
            if not text.endswith("\n"):  # a row cut short by a kill
                text = text[: text.rfind("\n") + 1]
                path.write_text(text)
            self.file = path.open("r+")  # not "a": SB3 rewrites the header in place when new keys appear
            self.file.seek(0, 2)
            self.keys = text.split("\n", 1)[0].split(",")
            self.separator, self.quotechar = ",", '"'

    folder.mkdir(parents=True, exist_ok=True)
    tensorboard = TensorBoardOutputFormat(str(folder))
    if start:
        tensorboard.writer.close()
        tensorboard.writer = SummaryWriter(log_dir=str(folder), purge_step=start)
    return Logger(str(folder), [tensorboard, AppendingCSV(folder / "progress.csv")])


def _drop_newer(run_dir: Path, step: int) -> None:
    """Remove checkpoints of a later step than the one a run continues from (they belong to another future)."""
    for folder in [*(run_dir / "checkpoints").glob("step_*"), run_dir / "model"]:
        ckpt_step = folder.name.removeprefix("step_")
        if folder.name != "model" and ckpt_step.isdigit() and int(ckpt_step) > step:
            shutil.rmtree(folder, ignore_errors=True)
    model = newest_checkpoint(run_dir)
    if model is not None and model.path.name == "model" and model.step > step:
        shutil.rmtree(run_dir / "model", ignore_errors=True)


def train(config: dict[str, Any], run_dir: Path, *, tb_dir: Path, progress_bar: bool = False,
          resume: Checkpoint | None = None, stop: GracefulStop | None = None) -> str:
    """Train as ``config`` says into ``run_dir``; returns a one-line evaluation summary (may be empty).

    ``resume``: a checkpoint of this run to continue from (its step counter, weights, optimiser and replay
    buffer), up to ``config["n_timesteps"]`` in total. ``stop``: ends training at the next step once set.
    """
    import numpy as np

    set_threads(config)  # --num-threads (default 1: small networks, and the box is shared)
    if config.get("backend") == "ray" and not config.get("parallel"):
        from cellgym.agents.zoo._ray import train_ray

        return train_ray(config, run_dir, tb_dir=tb_dir, progress_bar=progress_bar)
    if config.get("parallel"):
        return _train_parallel(config, run_dir, tb_dir, progress_bar)

    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.utils import set_random_seed

    from cellgym.agents._callbacks import CellMetricsCallback, CheckpointCallback, StopOnSignal
    from cellgym.agents.zoo import SB3Agent, make_sb3_vec_env
    from cellgym.agents.zoo._normalize import normalize_options, wrap_normalize
    from cellgym.agents.zoo._rollout import optimum_steps

    hp = config["hyperparams"]
    seed = config["seed"]
    set_random_seed(seed)  # global seeding belongs in the CLI only (STYLE R13)
    norm = normalize_options(hp.get("normalize"), gamma=hp["algo_kwargs"].get("gamma"))
    venv = wrap_normalize(make_sb3_vec_env(config["task"], hp["n_envs"], env_kwargs=hp["env_kwargs"],
                                           monitor_path=run_dir / "monitor.csv", monitor_append=resume is not None,
                                           vec_env=config.get("vec_env", "native")), norm)
    agent = SB3Agent(config["algo"], policy=hp["policy"], policy_kwargs=hp["policy_kwargs"],
                     algo_kwargs=hp["algo_kwargs"], device=config["device"], seed=seed)
    agent.build(venv)
    start = 0
    if resume is not None:
        start = agent.restore_training_state(resume.path)
        set_random_seed(seed + start)  # the continued episodes are new ones, and reproducible
        venv.seed(seed + start)
        _drop_newer(run_dir, start)
        write_config(config, run_dir)  # the new total
    agent.model.set_logger(_logger(Path(tb_dir), start))

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
        if resume is not None:
            _continue_evaluations(eval_cb, run_dir / "eval" / "evaluations.npz", start)
        callbacks.append(eval_cb)
    if config["save_freq"] and config["save_freq"] > 0:
        callbacks.append(CheckpointCallback(agent, run_dir / "checkpoints", config["save_freq"]))
    if stop is not None:
        callbacks.append(StopOnSignal(stop))
    if progress_bar:  # tqdm on stderr, to the whole-rollout total (SB3's own bar is rich, silent when piped)
        callbacks.append(sb3_progress_callback(config["n_timesteps"], start=start, desc=config["algo"]))
    agent.learn(venv, config["n_timesteps"] - start, callback=CallbackList(callbacks), progress_bar=False,
                reset_num_timesteps=resume is None, log_interval=max(config.get("log_interval", -1), 1))
    agent.save(run_dir / "model", training_state=True)
    agent.model.logger.close()
    venv.close()
    if eval_cb is None or not eval_cb.evaluations_results:
        return ""
    line = f"last evaluation ({config['eval_episodes']} episodes): mean return " \
           f"{np.mean(eval_cb.evaluations_results[-1]):.3f}"
    if eval_cb.evaluations_successes:
        line += f", success rate {np.mean(eval_cb.evaluations_successes[-1]):.0%}"
    return line


def _continue_evaluations(eval_cb: Any, file: Path, start: int) -> None:
    """Let SB3's EvalCallback extend the evaluations of the earlier segments (it rewrites the file whole)."""
    import numpy as np

    if not file.is_file():
        return
    with np.load(file) as data:  # allow_pickle=False: plain arrays only
        keep = data["timesteps"] <= start
        eval_cb.evaluations_timesteps = data["timesteps"][keep].tolist()
        eval_cb.evaluations_results = [list(r) for r in data["results"][keep]]
        eval_cb.evaluations_length = [list(r) for r in data["ep_lengths"][keep]]
        if "successes" in data:
            eval_cb.evaluations_successes = [list(r) for r in data["successes"][keep]]


def _train_parallel(config: dict[str, Any], run_dir: Path, tb_dir: Path, progress_bar: bool) -> str:
    """PettingZoo tasks: the multi-agent learner registered as ``config['algo']`` (CellTRIP)."""
    from cellgym.registry import make, make_agent

    hp = config["hyperparams"]
    env = make(config["task"], **hp["env_kwargs"])
    agent = make_agent(config["algo"], **hp["agent_kwargs"])
    collector = None
    if config.get("backend") == "ray":  # rollouts in Ray actors, the update here
        from cellgym.agents.celltrip._ray import RayCollector

        collector = RayCollector(config["task"], hp["env_kwargs"], hp["agent_kwargs"], config["num_env_runners"],
                                 seed=config["seed"], partition=config.get("partition"))
    try:
        agent.learn(env, config["n_timesteps"], seed=config["seed"], tensorboard_log=str(tb_dir),
                    progress_bar=progress_bar, collector=collector)
    finally:
        if collector is not None:
            collector.close()
    atomic_dir(run_dir / "model", agent.save)
    return ""
