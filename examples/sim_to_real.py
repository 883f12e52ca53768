"""Sim-to-real: train an agent in a *learned* world, then score it in the *true* one.

1. The ground-truth world is the Krumsiek 2011 Boolean myeloid network (``grn.boolean``), the
   transition of ``CellEnv-Reprogram-HSC-v0``.
2. A perturbation screen is simulated from it (single and double knockouts / overexpressions).
3. A perturbation-response predictor (default ``baseline.additive``) is fitted on that screen and
   becomes the transition of the *learned* world (same task, ``predictor=``).
4. MaskablePPO is trained in the learned world, and, for reference, in the true world.
5. Both agents' chosen perturbation sequences are replayed open-loop in the true world
   (what ``cellgym enjoy --truth grn.boolean`` does).

Run: ``python examples/sim_to_real.py [--predictor baseline.linear] [--plot docs/sim_to_real.png]``.
"""

from __future__ import annotations

import argparse

import gymnasium
import numpy as np
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo import load_hyperparams, make_sb3_vec_env
from cellgym.agents.zoo._rollout import replay, run_episodes
from cellgym.predictors.base import DataSpec
from cellgym.predictors.grn import simulate_screen
from cellgym.registry import make_agent, make_predictor

TASK = "CellEnv-Reprogram-HSC-v0"
EPISODES = 100


def train(env_kwargs: dict, seed: int = 0):
    """MaskablePPO with the task's tuned hyperparameters in the world ``env_kwargs`` describes."""
    hp = load_hyperparams("maskable_ppo", TASK)
    agent = make_agent("maskable_ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs,
                       algo_kwargs=hp.algo_kwargs, seed=seed)
    return agent.learn(make_sb3_vec_env(TASK, hp.n_envs, env_kwargs=env_kwargs), hp.n_timesteps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default="baseline.additive", help="learned world's predictor")
    parser.add_argument("--plot", default=None, help="bar chart PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)

    truth = make_predictor("grn.boolean", model="krumsiek11", dynamics="sync", n_steps=6)  # the task's own
    screen = simulate_screen(truth, n_cells_per_condition=100, doubles=40, seed=0)
    screen.X = screen.layers["simulated"].copy()  # the task's cells are Boolean states, not counts
    learned = make_predictor(args.predictor)
    learned.fit(screen, DataSpec(counts=None), seed=0)

    true_env = gymnasium.make(TASK)
    learned_env = gymnasium.make(TASK, predictor=learned)
    results = {}
    for world, kwargs in (("true", {}), ("learned", {"predictor": learned})):
        agent = train(kwargs)
        env = true_env if world == "true" else learned_env
        played = run_episodes(agent, env, EPISODES, seed=1000)
        in_truth = [replay(ep, true_env) for ep in played]
        results[world] = (np.mean([e.success for e in played]), np.mean([e.success for e in in_truth]))
        print(f"trained in the {world} world: success {results[world][0]:.0%} there, "
              f"{results[world][1]:.0%} replayed in the true world; e.g. {' -> '.join(played[0].names)}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = ["trained in true world\nscored in true world",
                  f"trained in learned world\n({args.predictor})\nscored in learned world",
                  "trained in learned world\nscored in TRUE world"]
        values = [results["true"][1], results["learned"][0], results["learned"][1]]
        fig, ax = plt.subplots(figsize=(7, 4))
        bars = ax.bar(labels, values, color=["tab:green", "tab:orange", "tab:red"])
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values])
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(f"success rate ({EPISODES} episodes)")
        ax.set_title(f"MaskablePPO on {TASK}: sim-to-real")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
