"""Issue 9, defect 9: ``CellEnv-Reprogram-v0`` sources as masks, ``column=value`` pairs and combinations; each
source cell keeps its own context; a source the predictor cannot tell apart is refused."""

from __future__ import annotations

import anndata as ad
import gymnasium
import numpy as np
import pandas as pd
import pytest
import torch

import cellgym.envs  # noqa: F401
from cellgym.envs.reprogram._worlds import data_world
from cellgym.predictors import DataSpec
from cellgym.predictors.base.errors import DataSpecError
from cellgym.registry import make_predictor

SPEC = DataSpec(context_key="cell_type", counts=None)


def _screen() -> ad.AnnData:
    """Two cell types with different baselines and different responses to A and B."""
    rng = np.random.default_rng(0)
    xs, obs = [], []
    for t, shift in (("T", 0.0), ("M", 2.0)):
        base = 1.0 + shift + rng.uniform(0, 0.5, size=6)
        for label, delta in (("control", 0.0), ("A", 1.0 if t == "T" else -0.8), ("B", 0.5)):
            xs.append(np.clip(base + delta + rng.normal(scale=0.05, size=(20, 6)), 0, None))
            obs += [(label, t)] * 20
    frame = pd.DataFrame(obs, columns=["perturbation", "cell_type"], index=[f"c{i}" for i in range(len(obs))])
    return ad.AnnData(np.vstack(xs).astype(np.float32), obs=frame, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))


@pytest.fixture(scope="module")
def screen_and_model():
    data = _screen()
    model = make_predictor("baseline.additive")
    model.fit(data, SPEC, seed=0)
    return data, model


def _world(data, model, source, **kw):
    return data_world(adata=data, spec=SPEC, source=source, target="A", predictor=model, reward="target.energy",
                      n_cells=16, context=kw.get("context"))


def test_every_source_cell_keeps_its_own_context(screen_and_model) -> None:
    """source='control' on two cell types gave every cell the first control cell's type."""
    data, model = screen_and_model
    world = _world(data, model, "control")
    rng = np.random.default_rng(1)
    cells = torch.from_numpy(world.sampler(rng))[None]  # (1, N, G), both types mixed
    applied = torch.zeros(1, len(model.perturbations))
    applied[0, model.perturbations.index("A")] = 1.0
    moved = world.transition(cells, applied, cells)[0]
    # the truth per cell: its own type's response (T goes up by ~1, M down by ~0.8)
    is_m = cells[0, :, 0] > 2.5
    assert is_m.any() and (~is_m).any()
    ctx = torch.where(is_m, model.contexts.index("M"), model.contexts.index("T"))
    expected = model.predict_batch(cells[0], applied.repeat(cells.shape[1], 1), ctx)
    torch.testing.assert_close(moved, expected)
    shift = (moved - cells[0]).mean(1)
    assert (shift[is_m] < -0.5).all() and (shift[~is_m] > 0.5).all()


def test_a_mask_source_without_context_works(screen_and_model) -> None:
    """A boolean mask as source with context=None crashed ('truth value of an array is ambiguous')."""
    data, model = screen_and_model
    mask = ((data.obs["perturbation"] == "control") & (data.obs["cell_type"] == "M")).to_numpy()
    env = gymnasium.make("CellEnv-Reprogram-v0", adata=data, spec=SPEC, source=mask, target="A", predictor=model)
    env.reset(seed=0)
    env.step(model.perturbations.index("A"))
    assert env.unwrapped.dynamics.world.transition.context_index == model.contexts.index("M")


@pytest.mark.parametrize("source", ["control,cell_type=M", "cell_type=M,control", ["control", "cell_type=M"]])
def test_pairs_and_combinations_select_a_type_and_condition(screen_and_model, source) -> None:
    data, model = screen_and_model
    world = _world(data, model, source)
    pool = world.sampler.pool
    expected = data.X[((data.obs["perturbation"] == "control") & (data.obs["cell_type"] == "M")).to_numpy()]
    assert sorted(map(tuple, pool)) == sorted(map(tuple, expected))
    assert world.transition.context_index == model.contexts.index("M")


def test_a_mask_combined_with_a_pair(screen_and_model) -> None:
    data, model = screen_and_model
    first_half = np.arange(data.n_obs) < data.n_obs // 2  # the T cells
    world = _world(data, model, [first_half, "control"])
    assert world.sampler.pool.shape[0] == 20 and world.transition.context_index == model.contexts.index("T")


def test_a_source_the_predictor_cannot_tell_apart_is_refused(screen_and_model) -> None:
    data, _ = screen_and_model
    blind = make_predictor("baseline.additive")
    blind.fit(data, DataSpec(counts=None), seed=0)  # no context column: one context for all cells
    with pytest.raises(DataSpecError, match=r"source spans 2 contexts .* has one context.*cell_type=M"):
        _world(data, blind, "control")
    _world(data, blind, "control,cell_type=T")  # one context: fine


@pytest.mark.parametrize(("source", "message"), [
    ("control,cell_type=X", "selects no cells"),
    ("control,tissue=M", "no column 'tissue'"),
    (np.ones(3, dtype=bool), "boolean mask of shape"),
    (np.ones(120), "boolean mask of shape"),
    ([], "pass a perturbation label"),
    ("control,", "an empty item"),
])
def test_bad_sources_are_one_line(screen_and_model, source, message) -> None:
    data, model = screen_and_model
    with pytest.raises(DataSpecError, match=message):
        _world(data, model, source)
