"""``cellgym train -optimize``: hyperparameter search with Optuna, the RL-Baselines3-Zoo way.

Each trial samples hyperparameters, trains for the run's budget (``-n`` or the YAML's ``n_timesteps``) with
the run's seed, and is evaluated ``--n-evaluations`` times (mean return over ``--eval-episodes``
deterministic episodes); the pruner stops trials that fall behind. A trial's value is its last evaluation's
success rate, ties broken by mean return (the mean return alone where a task reports no success). The shipped hyperparameters are scored the same way first, so the file written is never worse
than them on this objective: ``<folder>/optimize/<algo>/<task>_<k>/best_hyperparams.yml`` (ready for
``-conf``), ``trials.csv`` and ``summary.yml``.

The search spaces follow RL Zoo's ``hyperparams_opt.py`` (Raffin et al., RL Baselines3 Zoo, 2020), with
rollouts shortened for episodes of a few perturbations.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from cellgym.predictors.base.errors import CellgymError

__all__ = ["optimize", "sample_params"]

_NET_ARCH = {"tiny": [64], "small": [64, 64], "medium": [256, 256]}


def sample_params(algo: str, trial: Any, n_envs: int) -> dict[str, Any]:
    """One draw of ``algo``'s hyperparameters (algorithm kwargs plus ``policy_kwargs``) from ``trial``."""
    s = trial.suggest_categorical
    out: dict[str, Any] = {"gamma": s("gamma", [0.9, 0.95, 0.98, 0.99]),
                           "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)}
    policy_kwargs: dict[str, Any] = {"net_arch": _NET_ARCH[s("net_arch", list(_NET_ARCH))]}
    if algo in ("ppo", "maskable_ppo", "a2c"):
        policy_kwargs["activation_fn"] = s("activation_fn", ["tanh", "relu"])
        out["ent_coef"] = trial.suggest_float("ent_coef", 1e-8, 0.1, log=True)
        out["gae_lambda"] = s("gae_lambda", [0.8, 0.9, 0.95, 0.99])
    if algo in ("ppo", "maskable_ppo"):
        out["n_steps"] = s("n_steps", [16, 32, 64, 128, 256])
        out["batch_size"] = min(s("batch_size", [32, 64, 128, 256]), out["n_steps"] * n_envs)
        out["n_epochs"] = s("n_epochs", [4, 8, 10, 20])
        out["clip_range"] = s("clip_range", [0.1, 0.2, 0.3])
    elif algo == "a2c":
        out["n_steps"] = s("n_steps", [5, 8, 16, 32])
    elif algo == "dqn":
        out["batch_size"] = s("batch_size", [32, 64, 128])
        out["buffer_size"] = s("buffer_size", [10_000, 50_000, 100_000])
        out["exploration_fraction"] = trial.suggest_float("exploration_fraction", 0.05, 0.5)
        out["exploration_final_eps"] = trial.suggest_float("exploration_final_eps", 0.0, 0.2)
        out["target_update_interval"] = s("target_update_interval", [100, 250, 500, 1000])
        out["learning_starts"] = s("learning_starts", [0, 500, 1000])
        out["train_freq"] = s("train_freq", [1, 4, 8])
        out["gradient_steps"] = out["train_freq"]
    elif algo in ("sac", "td3"):
        out["batch_size"] = s("batch_size", [64, 128, 256])
        out["buffer_size"] = s("buffer_size", [10_000, 50_000, 100_000])
        out["learning_starts"] = s("learning_starts", [0, 500, 1000])
        out["tau"] = s("tau", [0.005, 0.01, 0.02])
        out["train_freq"] = s("train_freq", [1, 4, 8])
        out["gradient_steps"] = out["train_freq"]
    else:
        raise CellgymError(f"-optimize: no search space for {algo!r}; it tunes ppo, maskable_ppo, a2c, dqn, sac, td3.")
    return {**out, "policy_kwargs": policy_kwargs}


def _score(config: dict[str, Any], hp: dict[str, Any], args: argparse.Namespace, log_path: Path,
           trial: Any = None) -> dict[str, Any]:
    """Train with ``hp`` for the run's budget; evaluate ``--n-evaluations`` times (reporting to ``trial``);
    the evaluations go to ``log_path/evaluations.npz``."""
    import numpy as np
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    from cellgym.agents.zoo import SB3Agent, make_sb3_vec_env
    from cellgym.agents.zoo._normalize import normalize_options, wrap_normalize

    seed, n_envs = config["seed"], hp["n_envs"]
    norm = normalize_options(hp.get("normalize"), gamma=hp["algo_kwargs"].get("gamma"))
    venv = wrap_normalize(make_sb3_vec_env(config["task"], n_envs, env_kwargs=hp["env_kwargs"],
                                           vec_env=config.get("vec_env", "native")), norm)
    eval_env = wrap_normalize(make_sb3_vec_env(config["task"], config.get("n_eval_envs", 1),
                                               env_kwargs=hp["env_kwargs"]), norm, training=False)
    eval_env.seed(seed + 10_000)
    agent = SB3Agent(config["algo"], policy=hp["policy"], policy_kwargs=hp["policy_kwargs"],
                     algo_kwargs=hp["algo_kwargs"], device=config["device"], seed=seed)

    class Report(BaseCallback):  # after each evaluation: tell Optuna, stop when the pruner says so
        pruned = False

        def _on_step(self) -> bool:
            if trial is None:
                return True
            successes = self.parent._is_success_buffer
            value = _objective(sum(successes) / len(successes) if successes else float("nan"),
                               self.parent.last_mean_reward)
            trial.report(value, len(self.parent.evaluations_results))
            self.pruned = trial.should_prune()
            return not self.pruned

    report = Report()
    eval_cls = EvalCallback
    if config["algo"] == "maskable_ppo":
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as eval_cls
    every = max(config["n_timesteps"] // max(args.n_evaluations, 1) // n_envs, 1)
    eval_cb = eval_cls(eval_env, n_eval_episodes=config["eval_episodes"], eval_freq=every, deterministic=True,
                       verbose=0, callback_after_eval=report, log_path=str(log_path))
    try:
        agent.learn(venv, config["n_timesteps"], callback=eval_cb)
    finally:
        venv.close()
        eval_env.close()
    if not eval_cb.evaluations_results:
        raise CellgymError("-optimize: the budget ended before the first evaluation; raise -n or lower --n-evaluations.")
    success = float(np.mean(eval_cb.evaluations_successes[-1])) if eval_cb.evaluations_successes else float("nan")
    return {"value": _objective(success, eval_cb.last_mean_reward), "pruned": report.pruned,
            "success_rate": success, "mean_return": float(eval_cb.last_mean_reward),
            "mean_steps": float(np.mean(eval_cb.evaluations_length[-1]))}


def _objective(success_rate: float, mean_return: float) -> float:
    """What the search maximises: the success rate, ties broken by mean return (shaped rewards can pay for
    getting close without arriving); the mean return alone where the task reports no success."""
    if math.isnan(success_rate):
        return float(mean_return)
    return float(success_rate) + 1e-3 * float(mean_return)


def _entry(hp: dict[str, Any]) -> dict[str, Any]:
    """A YAML entry (the ``<algo>.yml`` layout) for resolved hyperparameters."""
    entry: dict[str, Any] = {"n_timesteps": hp["n_timesteps"], "policy": hp["policy"], "n_envs": hp["n_envs"],
                             **hp["algo_kwargs"]}
    for key in ("policy_kwargs", "env_kwargs"):
        if hp.get(key):
            entry[key] = hp[key]
    if hp.get("normalize"):
        entry["normalize"] = hp["normalize"]
    return entry


def _write_yaml(path: Path, data: Any, header: str = "") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def _out_dir(folder: str, algo: str, task: str) -> Path:
    root = Path(folder) / "optimize" / algo
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.rsplit("_", 1)[1]) for p in root.glob(f"{task}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    out = root / f"{task}_{max(taken, default=0) + 1}"
    out.mkdir()
    return out


def optimize(config: dict[str, Any], args: argparse.Namespace) -> int:
    """Run the search for ``config``'s algorithm and task; write the best hyperparameters as YAML."""
    import optuna

    from cellgym.agents.zoo._hyperparams import check_entry
    from cellgym.agents.zoo._rollout import optimum_steps

    if config.get("parallel") or config.get("backend") == "ray":
        raise CellgymError("-optimize tunes the SB3 algorithms on single-agent tasks (--backend sb3).")
    if args.n_trials < 1:
        raise CellgymError(f"--n-trials: expected >= 1, got {args.n_trials}.")
    algo, task, base = config["algo"], config["task"], config["hyperparams"]
    from ._zoo import set_threads

    set_threads(config)
    samplers = {"tpe": optuna.samplers.TPESampler(n_startup_trials=args.n_startup_trials, seed=config["seed"]),
                "random": optuna.samplers.RandomSampler(seed=config["seed"])}
    pruners = {"median": optuna.pruners.MedianPruner(n_startup_trials=args.n_startup_trials,
                                                     n_warmup_steps=max(args.n_evaluations // 3, 1)),
               "halving": optuna.pruners.SuccessiveHalvingPruner(), "none": optuna.pruners.NopPruner()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=samplers[args.sampler], pruner=pruners[args.pruner])
    out = _out_dir(args.folder, algo, task)
    print(f"optimizing {algo} on {task}: {args.n_trials} trials x {config['n_timesteps']:,} steps, "
          f"{args.sampler} sampler, {args.pruner} pruner -> {out}")

    t0 = time.perf_counter()
    shipped = _score(config, base, args, out / "shipped")
    print(f"shipped hyperparameters ({base['source']}): mean return {shipped['mean_return']:.3f}, "
          f"success {shipped['success_rate']:.0%}, {shipped['mean_steps']:.2f} steps")
    results: dict[int, dict[str, Any]] = {}

    def objective(trial: Any) -> float:
        drawn = sample_params(algo, trial, base["n_envs"])
        policy_kwargs = drawn.pop("policy_kwargs")
        check_entry(algo, drawn, f"sampled in trial {trial.number}")
        hp = {**base, "algo_kwargs": {**base["algo_kwargs"], **drawn}, "policy_kwargs": policy_kwargs}
        result = _score(config, hp, args, out / f"trial_{trial.number}", trial)
        results[trial.number] = {**result, "hp": hp}
        print(f"trial {trial.number}: mean return {result['mean_return']:.3f}, success {result['success_rate']:.0%}, "
              f"{result['mean_steps']:.2f} steps" + (" (pruned)" if result["pruned"] else ""), flush=True)
        if result["pruned"]:
            raise optuna.TrialPruned()
        return result["value"]

    study.optimize(objective, n_trials=args.n_trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = results[study.best_trial.number] if done else None
    use_best = best is not None and best["value"] > shipped["value"]  # ties keep the shipped values
    winner = best if use_best else {**shipped, "hp": base}
    optimum = optimum_steps(task, base["env_kwargs"], seed=config["seed"])
    header = (f"# cellgym train -optimize: {algo} on {task}, {args.n_trials} trials x {config['n_timesteps']} steps, "
              f"seed {config['seed']}.\n# {'best trial ' + str(study.best_trial.number) if use_best else 'the shipped values (no trial beat them)'}: "
              f"mean return {winner['mean_return']:.3f}, success {winner['success_rate']:.0%}, {winner['mean_steps']:.2f} steps"
              + (f" (optimum {optimum:.2f})" if optimum else "") + f"; shipped: {shipped['mean_return']:.3f}, success {shipped['success_rate']:.0%}, {shipped['mean_steps']:.2f} steps.\n"
              f"# Use: cellgym train --env {task} --algo {algo} -conf THIS_FILE\n")
    _write_yaml(out / "best_hyperparams.yml", {task: _entry(winner["hp"])}, header)
    frame = study.trials_dataframe()
    frame.to_csv(out / "trials.csv.tmp", index=False)
    os.replace(out / "trials.csv.tmp", out / "trials.csv")
    summary = {"task": task, "algo": algo, "n_trials": args.n_trials, "n_timesteps": config["n_timesteps"],
               "seed": config["seed"], "sampler": args.sampler, "pruner": args.pruner,
               "seconds": round(time.perf_counter() - t0, 1), "optimum_steps": optimum,
               "shipped": {k: shipped[k] for k in ("value", "success_rate", "mean_return", "mean_steps")},
               "best": {k: winner[k] for k in ("value", "success_rate", "mean_return", "mean_steps")},
               "best_is_shipped": not use_best,
               "n_complete": len(done), "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}
    _write_yaml(out / "summary.yml", {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in summary.items()})
    print(f"best: {'trial ' + str(study.best_trial.number) if use_best else 'the shipped hyperparameters'} "
          f"(success {winner['success_rate']:.0%}, mean return {winner['mean_return']:.3f}, {winner['mean_steps']:.2f} steps; "
          f"shipped: {shipped['success_rate']:.0%}, {shipped['mean_return']:.3f}, {shipped['mean_steps']:.2f}) in {summary['seconds']:.0f} s")
    print(f"hyperparameters: {out / 'best_hyperparams.yml'}")
    print(f"train with them: cellgym train --env {task} --algo {algo} -conf {out / 'best_hyperparams.yml'}")
    return 0
