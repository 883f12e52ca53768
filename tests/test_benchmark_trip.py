"""benchmarks/trip.py's dense reference computes the world's step: same rewards as the world's all-cells view."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "trip.py"
    spec = importlib.util.spec_from_file_location("trip_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedActions(torch.nn.Module):
    """A policy that returns the actions it is given (so both worlds see the same forces)."""

    actions: torch.Tensor

    def forward(self, moving: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        return self.actions


def test_dense_reference_rewards_equal_the_worlds_all_pairs_rewards():
    trip = load_benchmark()
    env = trip.make_world(120, view="all")
    env.reset_batch(seed=0)
    dense = trip.DenseReferenceWorld(env)
    env.positions, env.velocities = dense.x.clone(), dense.v.clone()  # the same starting state
    env._phi_dist, env._phi_pin = env._distance_potential(env.positions), env._pinning_potential(env.positions)
    policy, gen = FixedActions(), torch.Generator().manual_seed(1)
    for _ in range(3):
        policy.actions = torch.rand(120, env.dim, generator=gen) * 2 - 1
        r_dense = dense.step(policy)
        _, r_env, *_ = env.step_batch(policy.actions)
        assert r_env.abs().mean() > 1e-3
        torch.testing.assert_close(r_dense, r_env, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(dense.x, env.positions)


def test_dense_reference_policy_has_celltrips_size_and_reuses_its_feature_embeddings():
    trip = load_benchmark()
    config = trip.Config(300, "dense", "celltrip")
    assert 305_000 < config.params < 320_000  # CellTRIP's EntitySelfAttentionLite at dim 32: ~314k
    cached = config.model.feature_embeds[0]
    with torch.no_grad():
        config.run(2)
    assert config.model.feature_embeds[0] is cached  # the feature part is computed once per episode
