"""Sim-to-real across species (examples/galaxy_sim_to_real.py): plan in B with responses learned in A."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium
import pytest

import cellgym.envs  # noqa: F401
from cellgym.registry import make_agent, make_predictor

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "galaxy_sim_to_real.py"


@pytest.mark.slow
def test_greedy_plans_from_the_galaxy_world_transfer_to_the_true_world(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("galaxy_sim_to_real", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    bed = ex.build(0, tmp_path)
    true_env = gymnasium.make("CellEnv-Reprogram-SERGIO-v0", predictor=bed["truth_b"])
    galaxy = ex.GalaxyPredictor(celltype_key="cell_type", n_macrogenes=8, n_latent=8, n_hidden=64, epochs=150)
    emb_a, emb_b = bed["emb"]
    galaxy.fit({"A": bed["a"], "B": bed["b"]}, ex.SPEC, protein_embeddings={"A": emb_a, "B": emb_b}, batch_size=128, seed=0)
    ortho = make_predictor("baseline.additive")
    ortho.fit(ex.ortholog_screen(bed), ex.SPEC, seed=0)
    rates = {}
    for name, model in (("galaxy", galaxy), ("orthologs", ortho)):
        env = gymnasium.make("CellEnv-Reprogram-v0", **ex.world_kwargs(bed, model))
        assert env.unwrapped.perturbations == true_env.unwrapped.perturbations
        rates[name] = ex.score(make_agent("greedy"), env, true_env, 20)["true_success"]
    assert rates["galaxy"] >= 0.4 and rates["galaxy"] > rates["orthologs"] + 0.2, rates
