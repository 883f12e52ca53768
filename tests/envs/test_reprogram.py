"""ReprogramEnv / ReprogramVectorEnv: dynamics, rewards, masks, errors, vector batching, generic data world."""

from __future__ import annotations

import warnings

import anndata as ad
import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import cellgym.envs  # noqa: F401
from cellgym.envs.errors import InvalidActionError
from cellgym.envs.reprogram import HSC_FATES, ReprogramEnv, ReprogramVectorEnv
from cellgym.predictors.base import CellgymError, DataSpec, DataSpecError
from cellgym.registry import make_predictor

HSC = "CellEnv-Reprogram-HSC-v0"


@pytest.fixture(scope="module")
def hsc() -> gym.Env:
    return gym.make(HSC)


def test_hsc_fates_are_fixed_points_of_the_boolean_model() -> None:
    model = make_predictor("grn.boolean", model="krumsiek11", dynamics="sync", n_steps=6)
    states = torch.zeros(len(HSC_FATES), len(model.genes))
    for i, on in enumerate(HSC_FATES.values()):
        states[i, [model.genes.index(g) for g in on]] = 1.0
    after = model.predict_batch(states, torch.zeros(len(HSC_FATES), len(model.perturbations)))
    assert torch.equal(after, states)


def test_hsc_two_step_reprogramming_and_potential_based_reward(hsc: gym.Env) -> None:
    env = hsc.unwrapped
    obs, info = hsc.reset(seed=0)
    assert obs.shape == (49,) and obs.dtype == np.float32 and hsc.observation_space.contains(obs)
    assert info == {"perturbations": [], "distance": pytest.approx(info["distance"]), "success": False,
                    "n_perturbations": 0, "cost": 0.0, "total_dose": 0.0}
    d0 = info["distance"]
    names = env.perturbations
    total = 0.0
    obs, r, term, trunc, info = hsc.step(names.index("Gata1_OE"))
    total += r
    assert not term and info["perturbations"] == ["Gata1_OE"] and not env.action_masks()[names.index("Gata1_OE")]
    assert obs[4 * 8 + names.index("Gata1_OE")] == 1.0  # perturbations in force are observed
    obs, r, term, trunc, info = hsc.step(names.index("Eklf_OE"))
    total += r
    assert term and not trunc and info["success"] and info["distance"] <= env.dynamics.threshold
    assert info["n_perturbations"] == 2 and info["cost"] == pytest.approx(0.2)
    # potential-based: the rewards telescope to d0 - d_final - costs + bonus
    assert total == pytest.approx(d0 - info["distance"] - 0.2 + 1.0, abs=1e-5)


def test_single_perturbations_do_not_reach_the_erythrocyte_goal(hsc: gym.Env) -> None:
    hsc.reset(seed=0)
    env = hsc.unwrapped
    nxt, _ = env.lookahead(np.arange(env.n_perturbations))
    assert (nxt.distance.numpy() > env.dynamics.threshold).all()
    assert env.steps == 0 and not env.state.applied.any()  # lookahead leaves the env alone


def test_stop_and_reapplying_and_budget(hsc: gym.Env) -> None:
    env = hsc.unwrapped
    hsc.reset(seed=3)
    _, r, term, _, info = hsc.step(env.n_perturbations)
    assert term and r == 0.0 and not info["success"]
    obs, _ = hsc.reset(seed=3)
    assert obs[-1] == 1.0
    hsc.step(0)
    obs, r, _, _, info = hsc.step(0)  # already applied: legal, no new cost
    assert info["cost"] == pytest.approx(0.1) and obs[-1] == pytest.approx(1 - 2 / 6)
    for _ in range(4):
        *_, term, trunc, _ = hsc.step(0)
    assert trunc and not term  # TimeLimit of the registration after 6 steps


@pytest.mark.parametrize("bad", [17, -1, 2.5, np.array([1, 2]), "3"])
def test_invalid_actions_raise_a_named_error(hsc: gym.Env, bad: object) -> None:
    hsc.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"dtype .* shape .* Discrete\(17\)") as exc:
        hsc.unwrapped.step(bad)
    assert isinstance(exc.value, CellgymError) and isinstance(exc.value, ValueError)


def test_combination_variant_applies_a_set_at_once() -> None:
    env = ReprogramEnv("hsc", action_mode="combination", budget=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    assert isinstance(env.action_space, gym.spaces.MultiBinary) and env.action_space.n == 17
    env.reset(seed=0)
    action = np.zeros(17, dtype=np.int8)
    action[[env.perturbations.index("Gata1_OE"), env.perturbations.index("Eklf_OE")]] = 1
    _, _r, term, _, info = env.step(action)
    assert term and info["success"] and info["n_perturbations"] == 2


def test_bad_arguments_fail_clearly() -> None:
    with pytest.raises(DataSpecError, match="erythrocyte"):
        ReprogramEnv("hsc", fate="neuron")
    with pytest.raises(DataSpecError, match="'hsc', 'sergio' or 'data'"):
        ReprogramEnv("mars")
    with pytest.raises(ValueError, match="single"):
        ReprogramEnv("hsc", action_mode="both")
    with pytest.raises(DataSpecError, match="adata"):
        gym.make("CellEnv-Reprogram-v0")


def test_make_vec_gives_the_native_env_with_one_transition_call_per_step() -> None:
    venv = gym.make_vec(HSC, num_envs=16)
    assert isinstance(venv, ReprogramVectorEnv) and venv.max_episode_steps == 6
    transition = venv.dynamics.world.transition
    calls = []
    original = transition.predictor.predict_batch

    def counting(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, *args)

    transition.predictor.predict_batch = counting
    venv.reset(seed=0)
    venv.action_space.seed(0)
    for _ in range(5):
        calls.clear()
        venv.step(np.random.default_rng(0).integers(0, 16, size=16))  # perturbations only, nobody stops
        assert len(calls) == 1  # all populations in one call (rows being autoreset skip it)
    masks = venv.action_masks()
    assert masks.shape == (16, 17) and masks[:, -1].all()


def test_native_same_step_autoreset_equals_sync_vector_env() -> None:
    """``autoreset_mode="same_step"``: the native env replays SyncVectorEnv(SAME_STEP) step by step."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    n, seed = 4, 3
    native = gym.make_vec(HSC, num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode="same_step")
    assert isinstance(native, ReprogramVectorEnv) and native.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert ReprogramVectorEnv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP  # class default untouched
    sync = SyncVectorEnv([lambda: gym.make(HSC) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP)
    calls = []
    transition = native.dynamics.world.transition
    original = transition.predictor.predict_batch

    def counting(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, *args)

    transition.predictor.predict_batch = counting
    a, _ = native.reset(seed=seed)
    b, _ = sync.reset(seed=seed)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(25):
        actions = rng.integers(0, 17, n)  # 16 = stop
        calls.clear()
        oa, ra, ta, tra, ia = native.step(actions)
        assert len(calls) <= 1  # one batched transition call (none when every sub-env stops)
        ob, rb, tb, trb, ib = sync.step(actions)
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_allclose(ra, rb)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(tra, trb)
        np.testing.assert_array_equal(ia["success"], ib["success"])
        np.testing.assert_allclose(ia["distance"], ib["distance"])
        ended = ta | tra
        assert ("final_obs" in ia) == ("final_obs" in ib) == bool(ended.any())
        if ended.any():
            ends += int(ended.sum())
            np.testing.assert_array_equal(ia["_final_obs"], ib["_final_obs"])
            np.testing.assert_array_equal(ia["_final_info"], ib["_final_info"])
            for i in np.flatnonzero(ended):
                np.testing.assert_array_equal(ia["final_obs"][i], ib["final_obs"][i])
                for key in ("success", "distance", "n_perturbations", "cost"):
                    assert ia["final_info"][key][i] == pytest.approx(ib["final_info"][key][i])
                assert sorted(ia["final_info"]["perturbations"][i]) == sorted(ib["final_info"]["perturbations"][i])
    assert ends > 0
    with pytest.raises(ValueError, match="autoreset_mode"):
        ReprogramVectorEnv(2, autoreset_mode="later")


def _screen() -> ad.AnnData:
    """Controls, two single perturbations and their combination with additive effects (log1p scale)."""
    rng = np.random.default_rng(0)
    effect = {"control": np.zeros(6), "A": np.array([2.0, 0, 0, 0, 0, 0]), "B": np.array([0, 2.0, 0, 0, 0, 0])}
    effect["A+B"] = effect["A"] + effect["B"]
    labels = np.repeat(list(effect), 60)
    x = np.stack([effect[lab] for lab in labels]) + 3.0 + rng.normal(0, 0.2, size=(labels.size, 6))
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(labels.size)])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))


def test_generic_task_fits_caches_and_reaches_a_combination(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path))
    adata, spec = _screen(), DataSpec(counts=None)
    kw = {"adata": adata, "spec": spec, "target": "A+B", "predictor": "baseline.additive"}
    env = gym.make("CellEnv-Reprogram-v0", **kw)
    cached = list((tmp_path / "predictors").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("baseline.additive-")
    assert env.unwrapped.perturbations == ["A", "B"]
    _, info = env.reset(seed=0)
    *_, term, _, info_a = env.step(0)
    assert not term
    *_, term, _, info_ab = env.step(1)
    assert term and info_ab["success"] and info_ab["distance"] < info_a["distance"] < info["distance"]
    # a second env loads the cached fit instead of fitting again
    from cellgym.predictors.baselines import AdditiveBaseline

    monkeypatch.setattr(AdditiveBaseline, "fit", lambda *a, **k: pytest.fail("refitted despite the cache"))
    again = gym.make("CellEnv-Reprogram-v0", **kw)
    assert again.unwrapped.perturbations == ["A", "B"]
    # a saved folder and an instance work too
    env_dir = gym.make("CellEnv-Reprogram-v0", **{**kw, "predictor": cached[0], "reward": "target.centroid"})
    assert env_dir.unwrapped.dynamics.world.reward.name == "target.centroid"


# ------------------------------------------------------------------------------------------------ SERGIO
SERGIO = "CellEnv-Reprogram-SERGIO-v0"


@pytest.fixture(scope="module")
def sergio() -> gym.Env:
    return gym.make(SERGIO)


def test_sergio_bfs_finds_the_three_master_regulator_plan(sergio: gym.Env) -> None:
    from cellgym.agents.planning import BFSAgent

    env = sergio.unwrapped
    assert env.perturbations == [f"G{i}_{k}" for i in range(4) for k in ("KO", "OE")]
    _, info = sergio.reset(seed=0)
    assert info["distance"] > 5 * env.dynamics.threshold
    plan = BFSAgent().plan(env)
    assert plan is not None and {env.perturbations[i] for i in plan} == {"G0_KO", "G1_OE", "G3_KO"}
    for i, a in enumerate(plan):
        *_, term, _, info = sergio.step(a)
        assert term == (i == 2)  # no shorter set reaches type1: BFS returns the shortest
    assert info["success"] and info["distance"] < 0.3 * env.dynamics.threshold


def test_sergio_unperturbed_cells_stay_at_their_type(sergio: gym.Env) -> None:
    world = sergio.unwrapped.dynamics.world
    thr = sergio.unwrapped.dynamics.threshold
    predictor = world.transition.predictor
    source_state = predictor.steady_state("type0")
    x = torch.from_numpy(np.stack([world.sampler(np.random.default_rng(s)) for s in range(4)]))  # (4, 32, 20)
    d0 = world.reward.distance(x)
    assert ((x.mean(1) - source_state).norm(dim=1) < 0.5 * thr).all()  # start populations are of the source type
    none = torch.zeros(4, len(world.transition.perturbations))
    for _ in range(3):
        x = world.transition(x, none, x)
        assert ((x.mean(1) - source_state).norm(dim=1) < 0.01 * thr).all()  # at the source type's steady state
        assert torch.allclose(world.reward.distance(x), d0, atol=0.25 * thr)  # no drift towards or away from the goal


def test_sergio_world_arguments_fail_clearly() -> None:
    with pytest.raises(DataSpecError, match="type0"):
        ReprogramEnv("sergio", source="type0", target="type0")
    with pytest.raises(DataSpecError, match=r"target cell type 'neuron'"):
        ReprogramEnv("sergio", target="neuron")
    with pytest.raises(DataSpecError, match=r"grn\.sergio predictor"):
        ReprogramEnv("sergio", predictor=make_predictor("grn.boolean"))


def test_sergio_world_on_ds1_keeps_unperturbed_cells_at_their_type(shared_data) -> None:
    predictor = make_predictor("grn.sergio", network=str(shared_data / "grn" / "sergio_ds1"))
    env = ReprogramEnv("sergio", predictor=predictor, source="type0", target="type1", n_cells=8)
    _, info = env.reset(seed=0)
    assert info["distance"] > env.dynamics.threshold
    world = env.dynamics.world
    x = env.state.cells
    x = world.transition(x, torch.zeros(1, len(world.transition.perturbations)), x)
    assert float((x[0].mean(0) - predictor.steady_state("type0")).norm()) < 0.01 * env.dynamics.threshold
