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
4. lambda is chosen on a *validation screen* (``hsc_screen(seed=1)``: fresh start cells, 20 cells x 22
   singles + 83 doubles, the same 2,100 cells as 50 x 42), never on the true-world test.
   ``--lam-rule plans`` (default, :func:`choose_lambda_by_plans`): from a grid (0 and 0.03-3 x the slope
   below), the value whose penalised objective picks, in bootstrap populations of the validation
   screen, the conditions whose *measured* outcome is best (one-standard-error rule towards smaller
   lambda). ``--lam-rule slope`` (the previous rule, :func:`choose_lambda`): per validation condition,
   the error of the predicted mean state against the disagreement; the least-squares slope through
   the origin, so lambda x disagreement estimates the model's error (MOPO, Yu et al. 2020).
5. MaskablePPO (the task's tuned hyperparameters) is trained in each world with lambda = 0 and with the
   chosen lambda (``reward="uncertainty.penalised"``), ``--seeds`` training seeds each; every agent's
   deterministic plans (``--episodes`` start populations, seeds 1000+) are replayed open-loop in the
   true world (what ``cellgym enjoy --truth grn.boolean`` does): true-world success and steps.
6. Diagnosis: every plan of at most 2 perturbations is played from every start in the learned world and
   in the true one (:func:`plan_outcomes`, one batch per step). The *exact planner* of the learned world
   (its best plan under the penalised objective, for each lambda of the grid) shows what an optimiser
   that exploits the world fully would do; :func:`diagnose` says for each failed start whether the
   world's favourite wrong plan is the *less* certain one (a penalty can reverse the choice) or the
   surer one (typically stopping early: the world under-rates a second perturbation; a penalty deepens it).

Run: ``OMP_NUM_THREADS=1 python examples/sim_to_real.py --seeds 3 [--timesteps 12000] [--plot docs/sim_to_real.png]``
(``--seeds 0``: the planner and the lambda choice only, seconds).
The same from the command line, for one world and lambda::

    cellgym fit --predictor ensemble --data screen.h5ad --out fit/hsc_ens --counts none --context-key none \\
        --predictor-kwargs "members:[baseline.linear]" n_members:5
    cellgym train --env CellEnv-Reprogram-HSC-v0 --algo maskable_ppo --env-kwargs predictor:fit/hsc_ens \\
        reward:uncertainty.penalised "reward_kwargs:{lam: 0.5}"
"""

from __future__ import annotations

import argparse
import json
import os
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


def score(agent, env, true_env, episodes: int = 100, plans: list[tuple[int, ...]] | None = None) -> dict:
    """Success in ``env`` and, replayed open-loop, success and steps in ``true_env``; each episode's plan
    as an index into ``plans`` (-1: not among them)."""
    played = run_episodes(agent, env, episodes, seed=1000)
    in_truth = [replay(ep, true_env) for ep in played]
    index = {p: i for i, p in enumerate(plans or [])}
    n_actions = env.unwrapped.n_perturbations
    return {"success": float(np.mean([e.success for e in played])),
            "true_success": float(np.mean([e.success for e in in_truth])),
            "true_steps": float(np.mean([e.steps for e in in_truth])),
            "example": " -> ".join(played[0].names),
            "plans": np.array([index.get(tuple(int(a) for a in e.actions if int(a) < n_actions), -1) for e in played])}


def start_populations(env, episodes: int, seed: int = 1000) -> torch.Tensor:
    """(S, N, G) the start populations of episodes ``seed .. seed + S - 1`` (what ``run_episodes`` plays)."""
    out = []
    for k in range(episodes):
        env.reset(seed=seed + k)
        out.append(env.unwrapped.state.cells)
    return torch.cat(out)


def all_plans(n_actions: int, depth: int = 2) -> list[tuple[int, ...]]:
    """Every plan of at most ``depth`` distinct perturbations, in order (``()`` stops at once)."""
    plans: list[tuple[int, ...]] = [()]
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(depth):
        frontier = [(*p, a) for p in frontier for a in range(n_actions) if a not in p]
        plans += frontier
    return plans


@torch.no_grad()
def plan_outcomes(env, sources: torch.Tensor, plans: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Every plan from every start in ``env``'s dynamics, in one batch per step: (S, n_plans) arrays.

    ``value``: the goal return (distance gained - cost per perturbation + success bonus, no penalty);
    ``success``; ``distance`` at the end; ``disagreement``: the ensemble's summed per-step disagreement
    (what ``uncertainty.penalised`` charges lam times; zeros in a world without an ensemble). An
    episode ends at success, as in the environment.
    """
    dyn = env.unwrapped.dynamics
    n_s, n_p, depth = sources.shape[0], len(plans), max(len(p) for p in plans)
    state = dyn.initial(sources.repeat_interleave(n_p, 0))
    value, dis = np.zeros(n_s * n_p), np.zeros(n_s * n_p)
    done = np.zeros(n_s * n_p, dtype=bool)
    success = np.zeros(n_s * n_p, dtype=bool)
    penalised = hasattr(dyn.world.reward, "disagreement")
    for t in range(depth):
        act = np.tile([p[t] if len(p) > t else -1 for p in plans], n_s)
        stop = done | (act < 0)
        chosen = torch.zeros(n_s * n_p, dyn.n_perturbations, dtype=torch.bool)
        chosen[np.flatnonzero(~stop), act[~stop]] = True
        out = dyn.step(state, chosen, torch.from_numpy(stop))
        if penalised and (~stop).any():
            dis[~stop] += dyn.world.reward.disagreement(int((~stop).sum())).double().numpy()
        value += np.where(stop, 0.0, out.reward)
        success |= out.success
        done |= stop | out.success
        state = out.state
    if penalised:  # the step rewards carry - lam * disagreement: add it back, so value is the goal return
        value += dyn.world.reward.lam * dis
    shape = (n_s, n_p)
    return {"value": value.reshape(shape), "success": success.reshape(shape), "disagreement": dis.reshape(shape),
            "distance": state.distance.double().numpy().reshape(shape)}


def diagnose(model: dict[str, np.ndarray], truth: dict[str, np.ndarray], chosen: np.ndarray,
             plans: list[tuple[int, ...]]) -> dict[str, float]:
    """Why the plans ``chosen`` (S,) (indices into ``plans``; -1: not among them) fail in the true world.

    Per failed start, the learned world rated the chosen plan c at least as high as the truly best plan
    g (highest true goal return). A pessimistic penalty (MOPO, Yu et al. 2020) lowers each plan by
    lam x its disagreement, so it can only reverse that ranking where c is the MORE uncertain plan:
    ``exploited`` is the share of failures with u(c) > u(g) (the world's favourite wrong plan is one it
    is unsure of); the rest are failures a penalty deepens (c is the surer plan -- typically stopping
    after one perturbation because the world under-rates the second: ``steps``). ``optimism`` is the mean
    d_true(c) - d_model(c) of the final distance over failures (> 0: the chosen plan is over-rated in
    absolute terms too), ``pessimism_best`` the mean d_model(g) - d_true(g).
    """
    known = chosen >= 0
    rows, c = np.flatnonzero(known), chosen[known]
    best = truth["value"][rows].argmax(1)
    failed = ~truth["success"][rows, c]
    n = max(int(failed.sum()), 1)
    exploit = failed & (model["disagreement"][rows, c] > model["disagreement"][rows, best])
    optimism = truth["distance"][rows, c] - model["distance"][rows, c]
    pessimism = model["distance"][rows, best] - truth["distance"][rows, best]
    return {"exploited": float(exploit.sum() / n), "optimism": float(optimism[failed].sum() / n),
            "pessimism_best": float(pessimism[failed].sum() / n), "n_failed": int(failed.sum()),
            "plan_success": float(1 - failed.mean()) if rows.size else float("nan"),
            "steps": float(np.mean([len(plans[i]) for i in c])) if c.size else float("nan")}


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


@torch.no_grad()
def choose_lambda_by_plans(world: EnsemblePredictor, validation, env, grid: list[float], n_boot: int = 50,
                           seed: int = 0) -> tuple[float, dict[float, float]]:
    """lambda from ``grid`` by the validation outcome of the plans the penalised objective chooses.

    The validation screen measured every condition c (each single, some doubles) one task step after
    fresh start cells. In each of ``n_boot`` bootstrap draws of a population (the task's N cells, drawn
    with replacement from the controls, and from each condition's cells), the penalised objective
    picks ``argmin_c d_pred(c) + cost |c| - bonus [d_pred(c) <= threshold] + lam U(c)`` over the
    conditions and stopping (no change, U = 0), where d_pred is the goal distance of the world's
    predicted population, U(c) the disagreement the environment would charge along the plan (u(c),
    plus the surer of its singles for a double: the step before), and the choice costs what the
    *measured* population of c scores on the same objective without the penalty. lambda is the
    smallest grid value whose mean cost is within one standard error of the best (the one-standard-
    error rule, Hastie, Tibshirani & Friedman, ESL 7.10): held-out selection of an offline-RL
    hyperparameter by the quality of the decisions it leads to (Paine et al. 2020, arXiv:2007.09055),
    not by model calibration. Never uses the true world.
    """
    dyn = env.unwrapped.dynamics
    goal = dyn.world.reward
    n_cells = env.unwrapped.state.cells.shape[1] if getattr(env.unwrapped, "state", None) is not None else 32
    x = torch.from_numpy(expression(validation, HSC_SCREEN_SPEC))
    labels = validation.obs["perturbation"].astype(str).to_numpy()
    conditions = [c for c in dict.fromkeys(labels) if c != "control" and all(p in world.perturbations for p in c.split("+"))]
    rows = {c: np.flatnonzero(labels == c) for c in ["control", *conditions]}
    size = np.array([0, *(len(c.split("+")) for c in conditions)])
    rng = np.random.default_rng(seed)
    costs = np.zeros((n_boot, len(grid)))
    for b in range(n_boot):
        draw = {c: torch.from_numpy(rng.choice(r, size=n_cells)) for c, r in rows.items()}
        ctrl = x[draw["control"]]
        pert = world.encode_perturbations(conditions)  # (C, P)
        pred = world.predict_batch(ctrl.repeat(len(conditions), 1), pert.repeat_interleave(n_cells, 0))
        u = world.last_disagreement.reshape(len(conditions), n_cells).mean(1).double().numpy()
        d_pred = np.r_[goal.distance(ctrl[None]).double().numpy(),
                       goal.distance(pred.reshape(len(conditions), n_cells, -1)).double().numpy()]
        d_meas = np.r_[d_pred[0], goal.distance(torch.stack([x[draw[c]] for c in conditions])).double().numpy()]
        u_single = dict(zip(conditions, u, strict=True))
        plan_u = np.r_[0.0, [u_single[c] + min((u_single.get(s, 0.0) for s in c.split("+")), default=0.0)
                             if "+" in c else u_single[c] for c in conditions]]

        def objective(d):
            return d + dyn.cost * size - dyn.success_bonus * (d <= dyn.threshold)

        pick = [int(np.argmin(objective(d_pred) + lam * plan_u)) for lam in grid]
        costs[b] = objective(d_meas)[pick]
    mean, se = costs.mean(0), costs.std(0, ddof=1) / np.sqrt(n_boot)
    best = int(np.argmin(mean))
    chosen = next(lam for lam, m in zip(grid, mean, strict=True) if m <= mean[best] + se[best])
    return float(chosen), {float(lam): float(m) for lam, m in zip(grid, mean, strict=True)}


def main() -> None:
    """Fit the worlds, choose lambda on the validation screen, train and replay; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["baseline.linear", "gem1.bulk", "baseline.linear+gem1.bulk"],
                        help="member families of each ensemble world ('+' mixes families)")
    parser.add_argument("--members", type=int, default=4, help="ensemble members per world (default 4)")
    parser.add_argument("--resampling", default="bootstrap", choices=["bootstrap", "cells", "seeds"],
                        help="how members differ: bootstrap of perturbation groups (default) or of cells within groups")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per world and lambda (default 3; 0: planner only)")
    parser.add_argument("--timesteps", type=int, default=None, help="training steps (default: the task's 12,000)")
    parser.add_argument("--episodes", type=int, default=100, help="start populations replayed in the true world")
    parser.add_argument("--screen-cells", type=int, default=20, help="cells per condition of the training screen")
    parser.add_argument("--screen-doubles", type=int, default=5, help="double perturbations in the training screen")
    parser.add_argument("--validation-cells", type=int, default=20, help="cells per condition of the validation screen")
    parser.add_argument("--validation-doubles", type=int, default=83,
                        help="doubles of the validation screen (default 83: 105 conditions x 20 cells = 2,100 cells)")
    parser.add_argument("--lam-rule", default="plans", choices=["plans", "slope"],
                        help="plans (default): the grid value whose chosen plans score best on the validation screen; "
                             "slope: least-squares slope of error on disagreement there")
    parser.add_argument("--lam", type=float, default=None, help="use this lambda instead of the validation choice")
    parser.add_argument("--slope-scales", type=float, nargs="*", default=[],
                        help="also train with these multiples of the slope lambda (sensitivity; default none)")
    parser.add_argument("--out", default="runs/fit", help="folder the fitted worlds are saved under")
    parser.add_argument("--plot", default=None, help="figure PNG")
    parser.add_argument("--json", default=None, help="write the rows (PPO runs and planner) to this JSON file")
    parser.add_argument("--plot-from", nargs="+", default=None,
                        help="only plot (--plot) the rows of these --json files (runs of one world each, merged)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.plot_from:
        loaded = [json.loads(Path(f).read_text()) for f in args.plot_from]
        screens = {(d["args"]["screen_cells"], d["args"]["screen_doubles"], d["args"]["resampling"]) for d in loaded}
        for d in loaded:  # runs on different screens: name the screen under each world
            a = d["args"]
            tag = f"\n{a['screen_cells']} cells, {a['screen_doubles']} doubles ({a['resampling']})" if len(screens) > 1 else ""
            for r in d["rows"] + d["planner"]:
                r["world"] += tag
        title = loaded[0]["title"] if len(screens) == 1 else loaded[0]["title"].split(" from a ")[0] + " from HSC screens " + \
            loaded[0]["title"].split(" screen ", 1)[1]
        plot([r for d in loaded for r in d["rows"]], [p for d in loaded for p in d["planner"]], args.plot, title)
        print(f"plot: {args.plot}")
        return

    screen = hsc_screen(n_cells_per_condition=args.screen_cells, doubles=args.screen_doubles, seed=0)
    validation = hsc_screen(n_cells_per_condition=args.validation_cells, doubles=args.validation_doubles, seed=1)
    true_env = gymnasium.make(TASK, predictor="grn.boolean")  # the task's own simulator
    print(f"training screen: {args.screen_cells} cells x {screen.obs['perturbation'].nunique() - 1} conditions "
          f"({args.screen_doubles} doubles); validation screen (seed 1): {args.validation_cells} cells x "
          f"{validation.obs['perturbation'].nunique() - 1} conditions")
    plans = all_plans(true_env.unwrapped.n_perturbations, 2)
    sources = start_populations(true_env, args.episodes)
    truth = plan_outcomes(true_env, sources, plans)
    print(f"true world: the best plan of <= 2 perturbations succeeds from {truth['success'].any(1).mean():.0%} of the "
          f"{args.episodes} starts")
    rows, planner = [], []
    for name in args.worlds:
        world = fit_world(name.split("+"), screen, args.members, resampling=args.resampling)
        folder = str(world.save(Path(args.out) / f"hsc_ensemble_{name.replace('.', '_').replace('+', '_and_')}_{args.resampling}"))
        learned0 = gymnasium.make(TASK, predictor=folder, reward="uncertainty.penalised", reward_kwargs={"lam": 0.0})
        learned0.reset(seed=0)
        slope, rho = choose_lambda(world, validation)
        grid = [0.0, *(slope * f for f in (0.03, 0.1, 0.3, 1.0, 3.0))]
        by_plans, curve = choose_lambda_by_plans(world, validation, learned0, grid)
        lam = args.lam if args.lam is not None else by_plans if args.lam_rule == "plans" else slope
        print(f"{name}: {args.members} members ({args.resampling}); validation Spearman(disagreement, error) {rho:.2f}; "
              f"lambda by plans {by_plans:.3g} (validation cost per grid lambda: "
              f"{', '.join(f'{k:.3g}: {v:.3f}' for k, v in curve.items())}), by slope {slope:.3g}; using {lam:.3g}", flush=True)
        model = plan_outcomes(learned0, sources, plans)
        for g in sorted({*grid, lam}):  # the exact planner of the learned world, penalised by g
            chosen = (model["value"] - g * model["disagreement"]).argmax(1)
            planner.append({"world": name, "lam": g, "chosen": g == lam, **diagnose(model, truth, chosen, plans)})
        rules = {0.0: "lambda = 0"}
        rules.setdefault(lam, f"lambda chosen on validation ({'given' if args.lam is not None else args.lam_rule} rule)")
        for f in args.slope_scales:
            rules.setdefault(slope * f, "slope rule (previous)" if f == 1 else f"{f:g} x slope rule")
        for penalty, rule in rules.items():
            env_kwargs = {"predictor": folder, "reward": "uncertainty.penalised", "reward_kwargs": {"lam": penalty}}
            learned = gymnasium.make(TASK, **env_kwargs)
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                r = score(train(env_kwargs, seed, args.timesteps), learned, true_env, args.episodes, plans)
                d = diagnose(model, truth, r.pop("plans"), plans)
                rows.append({"world": name, "lam": penalty, "rule": rule + (" (chosen on validation)" if penalty == lam == 0 else ""),
                             "seed": seed, **r, **d})
                print(f"  lambda {penalty:.3g} seed {seed}: success {r['success']:.0%} in the learned world, "
                      f"{r['true_success']:.0%} in the true world ({r['true_steps']:.2f} steps; e.g. {r['example']}); "
                      f"{d['n_failed']} failed plan(s) of <= 2 perturbations, {d['exploited']:.0%} of them the less "
                      f"certain plan [{time.perf_counter() - t0:.0f} s]", flush=True)

    print("\nExact planner of each learned world (every plan of <= 2 perturbations, penalised by lambda), replayed "
          "in the true world:\n\n| world | lambda | true-world success | failures where the chosen plan is the less "
          "certain (penalty can help) | mean steps |\n|---|---|---|---|---|")
    for p in planner:
        print(f"| {p['world']} | {p['lam']:.3g} | {p['plan_success']:.0%} | {p['exploited']:.0%} of {p['n_failed']} "
              f"| {p['steps']:.2f} |")
    if rows:
        print(f"\n| world (ensemble of {args.members}) | lambda | true-world success (mean ± sd over {args.seeds} seeds) "
              "| per seed | true-world steps | success in the learned world | failures where the chosen plan is the less certain |")
        print("|---|---|---|---|---|---|---|")
        groups = {(r["world"], r["lam"]): [] for r in rows}
        for r in rows:
            groups[(r["world"], r["lam"])].append(r)
        for (name, lam), rs in groups.items():
            s = np.array([r["true_success"] for r in rs])
            print(f"| {name} | {lam:.3g} | {s.mean():.0%} ± {s.std():.0%} | {' / '.join(f'{v:.0%}' for v in s)} "
                  f"| {np.mean([r['true_steps'] for r in rs]):.2f} | {np.mean([r['success'] for r in rs]):.0%} "
                  f"| {sum(r['exploited'] * r['n_failed'] for r in rs) / max(sum(r['n_failed'] for r in rs), 1):.0%} "
                  f"of {sum(r['n_failed'] for r in rs)} |")

    title = (f"MaskablePPO trained in worlds learned from a {args.screen_cells}-cell, {args.screen_doubles}-double HSC "
             f"screen ({args.seeds} seeds, dots), replayed in the true world ({args.episodes} starts); x: exact planner")
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"title": title, "args": vars(args), "rows": rows, "planner": planner}, indent=1))
        os.replace(tmp, out)
    if args.plot and rows:
        plot(rows, planner, args.plot, title)
        print(f"plot: {args.plot}")


def plot(rows: list[dict], planner: list[dict], path: str, title: str) -> None:
    """Bars: mean true-world success of the PPO agents per world and lambda (dots: seeds); x: the exact
    planner of the same learned world at that lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["world"] for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    width = 0.8 / max(len({r["lam"] for r in rows if r["world"] == n}) for n in names)
    fig, ax = plt.subplots(figsize=(max(9.0, 2.4 * len(names)), 4.2))
    palette = ["tab:orange", "tab:green", "tab:olive", "tab:cyan", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
    colors = {rule: palette[i % len(palette)] for i, rule in enumerate(rules)}
    for i, name in enumerate(names):
        lams = list(dict.fromkeys(r["lam"] for r in rows if r["world"] == name))
        for j, lam in enumerate(lams):
            here = [r for r in rows if r["world"] == name and r["lam"] == lam]
            v = [r["true_success"] for r in here]
            x = i + (j - (len(lams) - 1) / 2) * width
            bar = ax.bar(x, np.mean(v), width, color=colors[here[0]["rule"]], label=here[0]["rule"])
            ax.bar_label(bar, labels=[f"{np.mean(v):.0%}\n(λ={lam:.2g})"], fontsize=7)
            ax.scatter(np.full(len(v), x), v, s=10, c="k", zorder=3)
            exact = [p["plan_success"] for p in planner if p["world"] == name and p["lam"] == lam]
            if exact:
                ax.scatter([x], exact[:1], marker="x", s=40, c="tab:red", zorder=4)
    handles, labels = ax.get_legend_handles_labels()
    keep = dict(zip(labels, handles, strict=True))
    ax.set_xticks(np.arange(len(names)), [f"ensemble of\n{n}" for n in names], fontsize=8)
    ax.set_ylim(0, 1.35)
    ax.set_ylabel("success replayed in the TRUE world")
    ax.legend(keep.values(), keep.keys(), fontsize=8, loc="upper center", ncol=3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
