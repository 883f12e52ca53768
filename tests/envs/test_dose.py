"""Dose actions: graded knockdown / overexpression in the GRN simulators and CellEnv-Reprogram-HSC-Dose-v0."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import cellgym.envs  # noqa: F401
from cellgym.envs.reprogram import ReprogramEnv
from cellgym.predictors.base import DataSpecError
from cellgym.registry import make_predictor

DOSE = "CellEnv-Reprogram-HSC-Dose-v0"


def _pert(p, doses: dict[str, float], n: int = 1) -> torch.Tensor:
    out = torch.zeros(n, len(p.perturbations))
    for name, d in doses.items():
        out[:, p.perturbations.index(name)] = d
    return out


def test_sergio_master_regulator_steady_state_scales_with_the_dose() -> None:
    # a master regulator's production is its cell type's rate, so its steady state under a dose is exact:
    # KO dose d keeps (1 - d) of it, OE dose d mixes (1 - d) natural + d overexpressed production
    p = make_predictor("grn.sergio", network="lineages", overexpression=1.0, n_steps=400)  # 20 time units
    g = p.genes[p.network.master[0]]
    i = p.genes.index(g)
    doses = torch.tensor([0.0, 0.3, 0.7, 1.0])
    x = p.steady_state("type0")[None].repeat(8, 1)
    pert = torch.zeros(8, len(p.perturbations))
    pert[:4, p.perturbations.index(f"{g}_KO")] = doses
    pert[4:, p.perturbations.index(f"{g}_OE")] = doses
    y = p.predict_batch(x, pert, None)[:, i]
    base = float(x[0, i])
    level = float(p.module.oe_level[i]) / p.network.decay
    assert torch.allclose(y[:4], (1 - doses) * base, atol=1e-3)
    assert torch.allclose(y[4:], (1 - doses) * base + doses * level, atol=1e-3)


def test_boolean_sde_doses_are_graded_and_0_1_doses_are_the_plain_perturbations() -> None:
    p = make_predictor("grn.boolean", dynamics="sde", n_steps=40, dt=0.25)
    x = p.network.initial_state()[None].float()
    i = p.genes.index("Gata1")
    levels = [float(p.predict_batch(x, _pert(p, {"Gata1_KO": d}), None)[0, i]) for d in (0.0, 0.5, 1.0)]
    assert levels[2] == pytest.approx(0.0, abs=1e-6)  # a full-dose knockout is the knockout
    oe = [float(p.predict_batch(x, _pert(p, {"Gata1_OE": d}), None)[0, i]) for d in (0.0, 0.25, 0.5, 1.0)]
    assert oe == sorted(oe) and oe[-1] == pytest.approx(1.0, abs=1e-3)  # more dose, more Gata1; full dose forces it
    both = p.predict_batch(x, _pert(p, {"Gata1_KO": 1.0, "Gata1_OE": 1.0}), None)[0, i]
    assert float(both) == pytest.approx(0.0, abs=1e-6)  # the knockout wins, as with 0/1 perturbations


def test_dose_task_spaces_reward_and_doses_in_force() -> None:
    env = gym.make(DOSE)
    u = env.unwrapped
    assert env.action_space == gym.spaces.Box(0.0, 1.0, (16,), np.float32)
    obs, info = env.reset(seed=0)
    d0 = info["distance"]
    zero = np.zeros(16, np.float32)
    _, r, term, _, info = env.step(zero)  # no dose: no cost, the unperturbed drift only
    assert info["cost"] == 0.0 and info["total_dose"] == 0.0 and r == pytest.approx(d0 - info["distance"], abs=1e-5)
    a = zero.copy()
    a[u.perturbations.index("Gata1_OE")] = 0.6
    a[u.perturbations.index("Eklf_OE")] = 0.6
    d1 = info["distance"]
    obs, r, term, _trunc, info = env.step(a)
    assert term and info["success"] and info["total_dose"] == pytest.approx(1.2, abs=1e-6)
    assert info["cost"] == pytest.approx(0.12, abs=1e-6) and info["perturbations"] == ["Gata1_OE", "Eklf_OE"]
    assert r == pytest.approx(d1 - info["distance"] - 0.12 + 1.0, abs=1e-5)
    assert obs[4 * 8 + u.perturbations.index("Gata1_OE")] == pytest.approx(0.6)  # doses in force are observed


def test_doses_act_during_their_step_and_each_step_pays_for_its_doses() -> None:
    env = gym.make(DOSE)
    u = env.unwrapped
    env.reset(seed=3)
    a = np.zeros(16, np.float32)
    a[u.perturbations.index("Gata1_OE")] = 0.8
    obs, *_ = env.step(a)
    assert obs[4 * 8 + u.perturbations.index("Gata1_OE")] == pytest.approx(0.8)
    a[u.perturbations.index("Gata1_OE")] = 0.2  # the next action replaces the doses in force
    obs, _, _, _, info = env.step(a)
    assert obs[4 * 8 + u.perturbations.index("Gata1_OE")] == pytest.approx(0.2)
    assert info["total_dose"] == pytest.approx(1.0) and info["cost"] == pytest.approx(0.1)


def test_one_full_dose_is_not_enough_and_half_doses_of_the_right_pair_are() -> None:
    env = gym.make(DOSE)
    u = env.unwrapped
    env.reset(seed=0)
    single = np.eye(16, dtype=np.float32)
    nxt, _ = u.lookahead(single)
    assert (nxt.distance.numpy() > u.dynamics.threshold).all()  # no single perturbation reaches the goal
    pair = np.zeros((1, 16), np.float32)
    pair[0, [u.perturbations.index("Gata1_OE"), u.perturbations.index("Eklf_OE")]] = 0.5
    nxt, _ = u.lookahead(pair)
    assert float(nxt.distance[0]) <= u.dynamics.threshold


def test_dose_mode_needs_a_world_whose_perturbations_take_a_strength() -> None:
    with pytest.raises(DataSpecError, match=r"action_mode='dose' needs a world .* dynamics='sde'"):
        ReprogramEnv(world="hsc", action_mode="dose")
    with pytest.raises(DataSpecError, match="dynamics='sde' chooses the HSC world's simulator"):
        ReprogramEnv(world="sergio", dynamics="sde")


def test_sergio_dose_world_reaches_type1_with_full_doses_of_the_known_plan() -> None:
    env = ReprogramEnv(world="sergio", source="type0", target="type1", action_mode="dose")
    env.reset(seed=0)
    a = np.zeros(env.n_perturbations, np.float32)
    for name in ("G0_KO", "G1_OE", "G3_KO"):
        a[env.perturbations.index(name)] = 1.0
    _, _, term, _, info = env.step(a)
    assert term and info["success"] and info["total_dose"] == pytest.approx(3.0)
