"""Fuzz suite (issue 9): generated AnnData through validate -> split -> evaluate, and arbitrary env actions.

Every outcome is a result or a :class:`~cellgym.predictors.base.errors.CellgymError` subclass (one clear
line), never another exception. Marked ``slow`` (a few hundred generated cases); run with ``-m slow``.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cellgym.predictors import DataSpec, split, validate  # noqa: E402
from cellgym.predictors.base.errors import CellgymError  # noqa: E402
from cellgym.predictors.evaluation import evaluate  # noqa: E402

pytestmark = pytest.mark.slow

LABELS = ["control", "A", "B", "A+B", "C", "", "+", "control+A", "A+"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def anndatas(draw: st.DrawFn) -> tuple[ad.AnnData, DataSpec]:
    rare = lambda: draw(st.integers(0, 7)) == 0  # noqa: E731  (one draw in 8: an injected problem)
    n_obs = 0 if rare() else draw(st.integers(1, 40))
    n_vars = 0 if rare() else draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["nan", "inf", "negative_counts", "negative"])) if rare() else \
        draw(st.sampled_from(["counts", "log"]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.poisson(3.0, size=(n_obs, n_vars)).astype(np.float64)
    if kind == "log":
        x = np.log1p(x)
    elif kind == "negative":
        x = x - 2.5
    elif kind in ("nan", "inf", "negative_counts") and x.size:
        x[rng.integers(n_obs), rng.integers(n_vars)] = {"nan": np.nan, "inf": np.inf, "negative_counts": -3}[kind]
    if dtype is np.int32 and np.isfinite(x).all():
        x = x.astype(np.int32)
    x = sp.csr_matrix(x) if draw(st.booleans()) and np.isfinite(x).all() else x
    vocabulary = LABELS if rare() else LABELS[:5]
    labels = draw(st.lists(st.sampled_from(vocabulary), min_size=n_obs, max_size=n_obs))
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n_obs)])
    with_context = draw(st.booleans())
    if with_context:
        obs["cell_type"] = draw(st.lists(st.sampled_from(["T", "M", "B"]), min_size=n_obs, max_size=n_obs))
    genes = [f"g{i}" for i in range(n_vars)]
    if n_vars > 1 and draw(st.integers(0, 9)) == 0:
        genes[1] = genes[0]  # duplicated gene names
    data = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))
    if draw(st.booleans()) and n_vars:
        data.layers["counts"] = np.abs(np.round(np.nan_to_num(np.asarray(x.todense() if sp.issparse(x) else x,
                                                                         dtype=np.float64))))
    counts = draw(st.sampled_from(["X", None, "counts", "missing_layer"])) if rare() else "auto"
    context_key = ("tissue" if rare() else draw(st.sampled_from(["cell_type", None]))) if with_context else None
    return data, DataSpec(context_key=context_key, counts=counts)


@FUZZ
@given(anndatas(), st.sampled_from(["perturbations", "combos", "contexts", "random", "bogus"]), st.integers(0, 3))
def test_validate_split_evaluate_never_raise_anything_else(case, kind, seed) -> None:
    data, spec = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            validate(data, spec)
            s = split(data, spec, kind, seed=seed)  # type: ignore[arg-type]
            result = evaluate(data, spec, s, ["baseline.nochange", "baseline.mean"], seed=seed)
        except CellgymError:
            return
    assert set(result.metrics.index) == {"baseline.nochange", "baseline.mean"}


ACTIONS = st.one_of(
    st.integers(-3, 20), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
    st.lists(st.integers(0, 1), max_size=18).map(np.array), st.integers(0, 16).map(np.int64),
    st.integers(0, 16).map(lambda i: np.array(i, dtype=np.int16)), st.just(np.array([1.5])),
)


@FUZZ
@given(st.lists(st.one_of(st.just("reset"), ACTIONS), max_size=12), st.sampled_from(["single", "combination"]))
def test_env_actions_never_raise_anything_else(steps, action_mode) -> None:
    import gymnasium

    import cellgym.envs  # noqa: F401

    env = gymnasium.make("CellEnv-Reprogram-HSC-v0", action_mode=action_mode).unwrapped
    for k, action in enumerate(steps):
        try:
            if isinstance(action, str) and action == "reset":
                env.reset(seed=k)
                continue
            obs, reward, *_ = env.step(action)
        except CellgymError:
            continue
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        assert env.steps <= env.budget  # never past the budget


@FUZZ
@given(st.lists(st.one_of(st.just("reset"), st.floats(-5, 5), st.just("nan"), st.just("missing")), max_size=8))
def test_trip_actions_never_raise_anything_else(steps) -> None:
    from cellgym.registry import make

    env = make("CellEnv-Trip-Integration-v0", n_cells=20, min_cells=5, max_cells=20, episode_length=(2, 4))
    for k, step in enumerate(steps):
        try:
            if step == "reset":
                env.reset(seed=k)
                continue
            value = np.nan if step == "nan" else 0.0 if step == "missing" else step
            actions = {a: np.full(env.dim, value, np.float32) for a in env.agents}
            if step == "missing" and actions:
                actions.pop(next(iter(actions)))
            env.step(actions)
        except CellgymError:
            continue
