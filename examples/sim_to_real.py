"""Sim-to-real: train an agent in a *learned* world, then score it in the *true* one.

1. The ground-truth world is the Krumsiek 2011 Boolean myeloid network (``grn.boolean``), the
   transition of ``CellEnv-Reprogram-HSC-v0``.
2. A perturbation screen is simulated from it (``cellgym.envs.reprogram.hsc_screen``: single and double
   knockouts / overexpressions, X = the 0/1 states; ``examples/hsc_screen.py`` writes it to a file).
3. A perturbation-response predictor (default ``baseline.additive``) is fitted on that screen, saved to
   a folder, and becomes the transition of the *learned* world (same task, ``predictor=FOLDER``).
4. MaskablePPO is trained in the learned world, and, for reference, in the true world.
5. Both agents' chosen perturbation sequences are replayed open-loop in the true world
   (what ``cellgym enjoy --truth grn.boolean`` does).

Run: ``python examples/sim_to_real.py [--predictor baseline.linear] [--plot docs/sim_to_real.png]``.
The same loop from the command line: see ``examples/hsc_screen.py``.
"""

from __future__ import annotations

import argparse

import gymnasium
import numpy as np
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo import load_hyperparams, make_sb3_vec_env
from cellgym.agents.zoo._rollout import replay, run_episodes
from cellgym.envs.reprogram import HSC_SCREEN_SPEC, hsc_screen
from cellgym.registry import make_agent, make_predictor

TASK = "CellEnv-Reprogram-HSC-v0"
EPISODES = 100


def train(env_kwargs: dict, seed: int = 0):
    """MaskablePPO with the task's tuned hyperparameters in the world ``env_kwargs`` describes."""
    hp = load_hyperparams("maskable_ppo", TASK)
    agent = make_agent("maskable_ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs,
                       algo_kwargs=hp.algo_kwargs, seed=seed)
    return agent.learn(make_sb3_vec_env(TASK, hp.n_envs, env_kwargs=env_kwargs), hp.n_timesteps)


def score(agent, env, true_env) -> dict[str, float]:
    """Success and final distance in ``env`` and, replayed open-loop, in ``true_env``."""
    played = run_episodes(agent, env, EPISODES, seed=1000)
    in_truth = [replay(ep, true_env) for ep in played]
    return {"success": np.mean([e.success for e in played]), "distance": np.mean([e.distances[-1] for e in played]),
            "true_success": np.mean([e.success for e in in_truth]),
            "true_distance": np.mean([e.distances[-1] for e in in_truth]),
            "example": " -> ".join(played[0].names)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", nargs="+", default=["baseline.additive", "baseline.linear"],
                        help="predictors of the learned worlds")
    parser.add_argument("--plot", default=None, help="figure PNG")
    parser.add_argument("--out", default="runs/fit", help="folder the fitted predictors are saved under")
    args = parser.parse_args()
    torch.set_num_threads(1)

    screen = hsc_screen(n_cells_per_condition=100, doubles=40, seed=0)
    true_env = gymnasium.make(TASK, predictor="grn.boolean")  # the task's own simulator
    results = {"true world": score(train({}), true_env, true_env)}
    for name in args.predictor:
        learned = make_predictor(name)
        learned.fit(screen, HSC_SCREEN_SPEC, seed=0)
        folder = str(learned.save(f"{args.out}/hsc_{name.replace('.', '_')}"))  # = cellgym fit ... --out
        results[name] = score(train({"predictor": folder}), gymnasium.make(TASK, predictor=folder), true_env)
    for world, r in results.items():
        print(f"trained in {world:>18}: success {r['success']:.0%} (distance {r['distance']:.2f}) there, "
              f"{r['true_success']:.0%} (distance {r['true_distance']:.2f}) replayed in the true world; "
              f"e.g. {r['example']}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        x = np.arange(len(results))
        for ax, key, label in ((axes[0], "success", f"success rate ({EPISODES} episodes)"),
                               (axes[1], "distance", "final distance to the goal")):
            own = [r[key] for r in results.values()]
            true = [r[f"true_{key}"] for r in results.values()]
            b1 = ax.bar(x - 0.2, own, 0.4, color="tab:orange", label="scored in the world it trained in")
            b2 = ax.bar(x + 0.2, true, 0.4, color="tab:green", label="scored in the TRUE world (grn.boolean)")
            fmt = "{:.0%}" if key == "success" else "{:.2f}"
            ax.bar_label(b1, labels=[fmt.format(v) for v in own], fontsize=8)
            ax.bar_label(b2, labels=[fmt.format(v) for v in true], fontsize=8)
            ax.set_xticks(x, [f"trained in\n{w}" for w in results])
            ax.set_ylabel(label)
        axes[0].set_ylim(0, 1.15)
        axes[1].axhline(0.3, ls="--", c="k", lw=1, label="success threshold")
        axes[1].legend(fontsize=8)
        fig.suptitle(f"MaskablePPO on {TASK}: trained in learned worlds (predictors fitted on a simulated "
                     "screen), scored in the true one", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
