"""Plan in one species with responses learned in another: Galaxy-transferred world vs 1:1-ortholog world.

Two related species (simulated; the second test bed of the Galaxy issue):

- species A's true world: ``grn.sergio``'s ``lineages`` network (the world of ``CellEnv-Reprogram-SERGIO-v0``);
- species B's true world: the same wiring with every edge strength scaled by U(0.6, 1.4) and every
  master rate by U(0.8, 1.2) (seeded), written as SERGIO files and simulated by ``grn.sergio``.

A screen (the four masters' KO and OE, 4 doubles, all three cell types) is simulated in A only. B
contributes unperturbed cells, with its genes renamed (``sp2_G*``); gene embeddings are PCA loadings of
A's screen, and B's the ortholog's plus noise; only half of the genes are annotated 1:1 orthologs.

Learned B worlds (``CellEnv-Reprogram-v0``: B's type0 controls -> B's type1 controls, energy distance):
- **galaxy**: ``galaxy`` fitted on A's screen and B's controls, A's perturbations transferred to B;
- **1:1 orthologs**: ``baseline.additive`` fitted on A's screen copied onto B's annotated orthologs
  (other genes keep B's control mean, i.e. no known effect).
Agents (greedy one-step search; MaskablePPO with ``--ppo``) are trained / run in each learned world and
their perturbation sequences replayed in B's true world (``CellEnv-Reprogram-SERGIO-v0`` with B's
simulator): the action vocabularies are the same 8 master KO/OE in the same order.

Run: ``OMP_NUM_THREADS=1 python examples/galaxy_sim_to_real.py [--ppo] [--episodes 50]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium
import numpy as np
import pandas as pd
import torch

import cellgym.envs  # noqa: F401  (registers the CellEnv-* tasks)
from cellgym.agents.zoo._rollout import replay, run_episodes
from cellgym.predictors import DataSpec
from cellgym.predictors.galaxy import GalaxyPredictor, pca_gene_embeddings
from cellgym.predictors.genes import GeneEmbeddings
from cellgym.predictors.grn import SergioNetwork, SergioPredictor, simulate_screen
from cellgym.registry import make_agent, make_predictor

SPEC = DataSpec(context_key="cell_type", counts="counts")


def related_network(folder: Path, seed: int) -> Path:
    """Species B's SERGIO files: lineages wiring, strengths x U(0.6, 1.4), master rates x U(0.8, 1.2)."""
    rng = np.random.default_rng(seed)
    net = SergioNetwork.lineages()
    strength = net.strength * rng.uniform(0.6, 1.4, net.strength.shape)
    rates = net.rates * rng.uniform(0.8, 1.2, net.rates.shape)
    lines = []
    for t in sorted(set(net.tgt.tolist())):
        e = np.flatnonzero(net.tgt == t)
        lines.append(",".join(map(str, [t, len(e), *net.src[e].tolist(), *strength[e].tolist(), *net.hill[e].tolist()])))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Interaction_cID_4.txt").write_text("\n".join(lines) + "\n")
    (folder / "Regs_cID_4.txt").write_text("\n".join(",".join(map(str, [m, *rates[i].tolist()])) for i, m in enumerate(net.master)) + "\n")
    return folder


def build(seed: int, folder: Path) -> dict:
    truth_a = make_predictor("grn.sergio", network="lineages", overexpression=1.0)
    truth_b = SergioPredictor(network=str(related_network(folder / "species_b", seed)), overexpression=1.0)
    masters = [truth_a.genes[i] for i in truth_a.network.master]
    singles = [f"{g}_{k}" for g in masters for k in ("KO", "OE")]
    screen_a = simulate_screen(truth_a, n_cells_per_condition=60, perturbations=singles, doubles=4, seed=seed)
    screen_b = simulate_screen(truth_b, n_cells_per_condition=60, perturbations=singles[:1], seed=seed + 1)
    b = screen_b[screen_b.obs["perturbation"] == "control"].copy()
    rename = {g: f"sp2_{g}" for g in b.var_names}
    b.var_names = [rename[g] for g in b.var_names]
    rng = np.random.default_rng(seed)
    genes = list(screen_a.var_names)
    annotated = set(rng.permutation(genes)[: len(genes) // 2].tolist())
    from cellgym.predictors import expression

    emb_a = pca_gene_embeddings(expression(screen_a, SPEC), genes, dim=8, seed=seed)
    noise = rng.normal(0, 0.3 * float(emb_a.matrix.std()), size=emb_a.matrix.shape).astype(np.float32)
    emb_b = GeneEmbeddings([rename[g] for g in genes], emb_a.matrix.numpy() + noise)
    return {"truth_b": truth_b, "a": screen_a, "b": b, "emb": (emb_a, emb_b), "annotated": annotated, "rename": rename}


def ortholog_screen(bed: dict):
    """A's screen in B's genes: annotated orthologs copied, other genes B's control counts (no known effect)."""
    import anndata as ad

    a, b, rename = bed["a"], bed["b"], bed["rename"]
    counts = np.zeros((a.n_obs, b.n_vars), np.float32)
    b_counts = b.layers["counts"].toarray() if hasattr(b.layers["counts"], "toarray") else np.asarray(b.layers["counts"])
    a_counts = a.layers["counts"].toarray() if hasattr(a.layers["counts"], "toarray") else np.asarray(a.layers["counts"])
    col = {g: i for i, g in enumerate(b.var_names)}
    rng = np.random.default_rng(0)
    for ct in a.obs["cell_type"].unique():
        rows = np.flatnonzero((a.obs["cell_type"] == ct).to_numpy())
        pool = np.flatnonzero((b.obs["cell_type"] == ct).to_numpy())
        counts[rows] = b_counts[rng.choice(pool, size=len(rows))]
    for g in bed["annotated"]:
        counts[:, col[rename[g]]] = a_counts[:, list(a.var_names).index(g)]
    out = ad.AnnData(counts.copy(), obs=a.obs.copy(), var=pd.DataFrame(index=b.var_names))
    out.layers["counts"] = counts
    return out


def world_kwargs(bed: dict, predictor) -> dict:
    b = bed["b"]
    ct = b.obs["cell_type"].astype(str).to_numpy()
    return {"world": "data", "adata": b, "spec": SPEC, "predictor": predictor, "source": ct == "type0",
            "target": ct == "type1", "reward": "target.energy", "budget": 6,
            # explicit context: data_world's default reads `source or "control"`, which fails for a boolean mask
            "context": "type0"}


def score(agent, env, true_env, episodes: int) -> dict[str, float]:
    played = run_episodes(agent, env, episodes, seed=1000)
    names = [[env.unwrapped.perturbations[a] if a < len(env.unwrapped.perturbations) else "stop" for a in ep.actions] for ep in played]
    in_truth = [replay(ep, true_env) for ep in played]
    return {"success": float(np.mean([e.success for e in played])), "true_success": float(np.mean([e.success for e in in_truth])),
            "example": " -> ".join(names[0])}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--ppo", action="store_true", help="also train MaskablePPO in each world (slower)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bed = build(args.seed, Path(tmp))
        true_env = gymnasium.make("CellEnv-Reprogram-SERGIO-v0", predictor=bed["truth_b"])
        galaxy = GalaxyPredictor(celltype_key="cell_type", n_macrogenes=8, n_latent=8, n_hidden=64, epochs=150)
        emb_a, emb_b = bed["emb"]
        galaxy.fit({"A": bed["a"], "B": bed["b"]}, SPEC, protein_embeddings={"A": emb_a, "B": emb_b}, batch_size=128, seed=args.seed)
        ortho = make_predictor("baseline.additive")
        ortho.fit(ortholog_screen(bed), SPEC, seed=args.seed)
        worlds = {"galaxy": galaxy, "1:1 orthologs": ortho}
        agents = {"greedy": lambda env: make_agent("greedy"), "random": lambda env: make_agent("random")}
        print(f"species B's true world: success replaying {args.episodes} episodes (vocabulary {true_env.unwrapped.perturbations})")
        print(f"  bfs in the true world itself: {score(make_agent('bfs'), true_env, true_env, args.episodes)['true_success']:.0%}")
        for world, model in worlds.items():
            env = gymnasium.make("CellEnv-Reprogram-v0", **world_kwargs(bed, model))
            assert env.unwrapped.perturbations == true_env.unwrapped.perturbations, env.unwrapped.perturbations
            for name, make in agents.items():
                r = score(make(env), env, true_env, args.episodes)
                print(f"  {name:>6} planned in the {world:>13} world: {r['success']:.0%} there, {r['true_success']:.0%} in B's true world; e.g. {r['example']}")
            if args.ppo:
                from cellgym.agents.zoo import make_sb3_vec_env

                agent = make_agent("maskable_ppo", seed=args.seed)
                agent = agent.learn(make_sb3_vec_env("CellEnv-Reprogram-v0", 8, env_kwargs=world_kwargs(bed, model)), 20_000)
                r = score(agent, env, true_env, args.episodes)
                print(f"  maskable_ppo trained in the {world:>13} world: {r['success']:.0%} there, {r['true_success']:.0%} in B's true world")
