"""Sim-to-real: train an agent in a *learned* world, then score it in the *true* one, with and without an uncertainty penalty.

1. The ground-truth world is the Krumsiek 2011 Boolean myeloid network (``grn.boolean``), the
   transition of ``CellEnv-Reprogram-HSC-v0``.
2. A perturbation screen is simulated from it (``cellgym.envs.reprogram.hsc_screen``: single and double
   knockouts / overexpressions from the task's own start cells, X = the 0/1 states after one task step;
   ``examples/hsc_screen.py`` writes it to a file). ``--screen-cells`` / ``--screen-doubles`` set its size.
3. Each learned world is an ``ensemble`` fitted on that screen (bootstrap resamples of the screen's
   perturbation groups; ``--worlds`` names the member families, ``+`` mixes them), saved to a folder, and
   becomes the transition of the *learned* world (same task, ``predictor=FOLDER``). Its prediction is the
   member mean; its members' disagreement is what ``uncertainty.penalised`` charges for.
4. lambda is chosen on a *validation screen* (``hsc_screen(seed=1)``: fresh start cells and other doubles),
   never on the true-world test: per validation condition, the error of the predicted mean state
   (Euclidean, the goal reward's metric) against the disagreement; lambda is the least-squares slope
   through the origin, so lambda x disagreement estimates the model's error in the distance the reward
   differences (MOPO, Yu et al. 2020, NeurIPS: the penalty should bound the model error of the reward).
5. MaskablePPO (the task's tuned hyperparameters) is trained in each world with lambda = 0 and with the
   chosen lambda (``reward="uncertainty.penalised"``), ``--seeds`` training seeds each; every agent's
   deterministic plans (``--episodes`` start populations, seeds 1000+) are replayed open-loop in the
   true world (what ``cellgym enjoy --truth grn.boolean`` does): true-world success and steps.

Run: ``OMP_NUM_THREADS=1 python examples/sim_to_real.py --seeds 3 [--timesteps 12000] [--plot docs/sim_to_real.png]``.
The same from the command line, for one world and lambda::

    cellgym fit --predictor ensemble --data screen.h5ad --out fit/hsc_ens --counts none --context-key none \\
        --predictor-kwargs "members:[baseline.linear]" n_members:5
    cellgym train --env CellEnv-Reprogram-HSC-v0 --algo maskable_ppo --env-kwargs predictor:fit/hsc_ens \\
        reward:uncertainty.penalised "reward_kwargs:{lam: 0.5}"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo import load_hyperparams, make_sb3_vec_env
from cellgym.agents.zoo._rollout import replay, run_episodes
from cellgym.envs.reprogram import HSC_SCREEN_SPEC, hsc_screen
from cellgym.predictors import expression
from cellgym.predictors.ensemble import EnsemblePredictor
from cellgym.registry import make_agent

TASK = "CellEnv-Reprogram-HSC-v0"


def train(env_kwargs: dict, seed: int = 0, timesteps: int | None = None):
    """MaskablePPO with the task's tuned hyperparameters in the world ``env_kwargs`` describes."""
    hp = load_hyperparams("maskable_ppo", TASK)
    agent = make_agent("maskable_ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs,
                       algo_kwargs=hp.algo_kwargs, seed=seed)
    return agent.learn(make_sb3_vec_env(TASK, hp.n_envs, env_kwargs=env_kwargs), timesteps or hp.n_timesteps)


def score(agent, env, true_env, episodes: int = 100) -> dict[str, float]:
    """Success in ``env`` and, replayed open-loop, success and steps in ``true_env``."""
    played = run_episodes(agent, env, episodes, seed=1000)
    in_truth = [replay(ep, true_env) for ep in played]
    return {"success": float(np.mean([e.success for e in played])),
            "true_success": float(np.mean([e.success for e in in_truth])),
            "true_steps": float(np.mean([e.steps for e in in_truth])),
            "example": " -> ".join(played[0].names)}


def fit_world(members: list[str], screen, k: int, seed: int = 0, resampling: str = "bootstrap") -> EnsemblePredictor:
    """An ensemble of ``k`` members (families round-robin), each on a bootstrap resample of the screen."""
    world = EnsemblePredictor(members=members, n_members=k, resampling=resampling)
    world.fit(screen, HSC_SCREEN_SPEC, seed=seed)
    return world


def choose_lambda(world: EnsemblePredictor, validation) -> tuple[float, float]:
    """lambda fitted on the validation screen, and Spearman(disagreement, error) there.

    Per condition c of the validation screen (every perturbation, controls excluded): the members
    predict its cells from the validation controls; error e_c = Euclidean norm of (predicted mean
    state - measured mean state), disagreement u_c = mean over the cells of the members' spread.
    lambda = sum(u e) / sum(u^2), the least-squares fit of e ~ lambda u.
    """
    from scipy import stats

    x = expression(validation, HSC_SCREEN_SPEC)
    labels = validation.obs["perturbation"].astype(str).to_numpy()
    ctrl = torch.from_numpy(x[labels == "control"])
    u, e = [], []
    for lab in sorted(set(labels) - {"control"}):
        pert = world.encode_perturbations([lab]).expand(ctrl.shape[0], -1)
        pred = world.predict_batch(ctrl, pert)
        u.append(float(world.last_disagreement.mean()))
        e.append(float(np.linalg.norm(pred.mean(0).numpy() - x[labels == lab].mean(0))))
    u_arr, e_arr = np.asarray(u), np.asarray(e)
    return float(u_arr @ e_arr / max(u_arr @ u_arr, 1e-12)), float(stats.spearmanr(u_arr, e_arr).statistic)


def main() -> None:
    """Fit the worlds, choose lambda on the validation screen, train and replay; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["baseline.linear", "gem1.bulk", "baseline.linear+gem1.bulk"],
                        help="member families of each ensemble world ('+' mixes families)")
    parser.add_argument("--members", type=int, default=4, help="ensemble members per world (default 4)")
    parser.add_argument("--resampling", default="bootstrap", choices=["bootstrap", "cells", "seeds"],
                        help="how members differ: bootstrap of perturbation groups (default) or of cells within groups")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per world and lambda (default 3)")
    parser.add_argument("--timesteps", type=int, default=None, help="training steps (default: the task's 12,000)")
    parser.add_argument("--episodes", type=int, default=100, help="start populations replayed in the true world")
    parser.add_argument("--screen-cells", type=int, default=20, help="cells per condition of the training screen")
    parser.add_argument("--screen-doubles", type=int, default=5, help="double perturbations in the training screen")
    parser.add_argument("--lam", type=float, default=None, help="use this lambda instead of the validation choice")
    parser.add_argument("--lam-scales", type=float, nargs="*", default=[1.0],
                        help="train with these multiples of the chosen lambda besides 0 (default: 1; none: lambda 0 only)")
    parser.add_argument("--out", default="runs/fit", help="folder the fitted worlds are saved under")
    parser.add_argument("--plot", default=None, help="figure PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)

    screen = hsc_screen(n_cells_per_condition=args.screen_cells, doubles=args.screen_doubles, seed=0)
    validation = hsc_screen(n_cells_per_condition=50, doubles=20, seed=1)  # held-out starts and doubles
    true_env = gymnasium.make(TASK, predictor="grn.boolean")  # the task's own simulator
    print(f"training screen: {args.screen_cells} cells x {screen.obs['perturbation'].nunique() - 1} conditions "
          f"({args.screen_doubles} doubles); validation screen: 50 cells x 42 conditions (seed 1)")
    rows = []
    for name in args.worlds:
        world = fit_world(name.split("+"), screen, args.members, resampling=args.resampling)
        folder = str(world.save(Path(args.out) / f"hsc_ensemble_{name.replace('.', '_').replace('+', '_and_')}_{args.resampling}"))
        lam, rho = (args.lam, float("nan")) if args.lam is not None else choose_lambda(world, validation)
        print(f"{name}: {args.members} members ({args.resampling}); validation Spearman(disagreement, error) {rho:.2f}, "
              f"lambda {lam:.3g}", flush=True)
        for penalty in (0.0, *(lam * f for f in args.lam_scales)):
            env_kwargs = {"predictor": folder, "reward": "uncertainty.penalised", "reward_kwargs": {"lam": penalty}}
            learned = gymnasium.make(TASK, **env_kwargs)
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                r = score(train(env_kwargs, seed, args.timesteps), learned, true_env, args.episodes)
                rows.append({"world": name, "lam": penalty, "seed": seed, **r})
                print(f"  lambda {penalty:.3g} seed {seed}: success {r['success']:.0%} in the learned world, "
                      f"{r['true_success']:.0%} in the true world ({r['true_steps']:.2f} steps; e.g. {r['example']}) "
                      f"[{time.perf_counter() - t0:.0f} s]", flush=True)

    print(f"\n| world (ensemble of {args.members}) | lambda | true-world success (mean ± sd over {args.seeds} seeds) "
          "| per seed | true-world steps | success in the learned world |")
    print("|---|---|---|---|---|---|")
    groups = {(r["world"], r["lam"]): [] for r in rows}
    for r in rows:
        groups[(r["world"], r["lam"])].append(r)
    for (name, lam), rs in groups.items():
        s = np.array([r["true_success"] for r in rs])
        print(f"| {name} | {lam:.3g} | {s.mean():.0%} ± {s.std():.0%} | {' / '.join(f'{v:.0%}' for v in s)} "
              f"| {np.mean([r['true_steps'] for r in rs]):.2f} | {np.mean([r['success'] for r in rs]):.0%} |")

    if args.plot:
        plot(rows, args.plot, f"MaskablePPO trained in worlds learned from a {args.screen_cells}-cell HSC screen "
             f"({args.seeds} seeds, dots), replayed in the true world ({args.episodes} episodes)")
        print(f"plot: {args.plot}")


def plot(rows: list[dict], path: str, title: str) -> None:
    """Bars: mean true-world success per world and lambda (0, the chosen one, its multiples); dots: seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["world"] for r in rows))
    n_lams = max(len({r["lam"] for r in rows if r["world"] == n}) for n in names)
    width = 0.8 / n_lams
    fig, ax = plt.subplots(figsize=(9, 4))
    colors = ["tab:orange", "tab:green", "tab:olive", "tab:cyan"]
    for i, name in enumerate(names):
        lams = list(dict.fromkeys(r["lam"] for r in rows if r["world"] == name))  # 0, chosen, multiples: run order
        for j, lam in enumerate(lams):
            v = [r["true_success"] for r in rows if r["world"] == name and r["lam"] == lam]
            x = i + (j - (len(lams) - 1) / 2) * width
            label = None if i else ("lambda = 0" if j == 0 else "lambda chosen on validation" if j == 1 else
                                    f"{lam / lams[1]:g} x chosen lambda")
            bar = ax.bar(x, np.mean(v), width, color=colors[j % len(colors)], label=label)
            ax.bar_label(bar, labels=[f"{np.mean(v):.0%}\n(λ={lam:.2g})"], fontsize=7)
            ax.scatter(np.full(len(v), x), v, s=10, c="k", zorder=3)
    ax.set_xticks(np.arange(len(names)), [f"ensemble of\n{n}" for n in names])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("success replayed in the TRUE world")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
