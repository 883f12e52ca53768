"""Every registered ``CellEnv-*`` gymnasium task passes cellgym.envs.testing.check_task (R9)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import cellgym.envs  # noqa: F401  (registers the tasks)
from cellgym.envs.testing import check_task
from cellgym.predictors.base import DataSpec


def _generic_kwargs() -> dict[str, Any]:
    """A tiny simulated screen for the generic task (it needs data and a predictor)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B"], 40)
    shift = {"control": 0.0, "A": 1.5, "B": -1.0}
    x = 2.0 + rng.normal(0, 0.3, size=(labels.size, 5)) + np.array([shift[s] for s in labels])[:, None] * np.eye(5)[0]
    adata = ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(labels.size)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(5)]))
    from cellgym.registry import make_predictor

    model = make_predictor("baseline.additive")
    model.fit(adata, DataSpec(counts=None), seed=0)
    return {"adata": adata, "spec": DataSpec(counts=None), "target": "A", "predictor": model}


def _design_kwargs() -> dict[str, Any]:
    kwargs = _generic_kwargs()
    kwargs["predictor"] = "baseline.additive"  # fitted by the task without the target
    return kwargs


TASK_KWARGS = {
    "CellEnv-Reprogram-v0": _generic_kwargs,
    "CellEnv-Design-v0": _design_kwargs,
}
SHARED_FILE_TASKS = {  # tasks that read a file of ../shared/data (skipped, naming it, where it is absent)
    "CellEnv-Design-Norman-v0": "perturb/norman19_mcfaline23_devel.h5ad",
    "CellEnv-Design-Papalexi-v0": "perturb/papalexi2021_thp1_lowmoi.h5ad",
}
TASKS = sorted(i for i in gym.registry if i.startswith("CellEnv-"))


@pytest.mark.parametrize("task_id", TASKS)
def test_task_passes_check_task(task_id: str, request: pytest.FixtureRequest) -> None:
    kwargs = TASK_KWARGS[task_id]() if task_id in TASK_KWARGS else {}
    if task_id in SHARED_FILE_TASKS:
        path = request.getfixturevalue("shared_data") / SHARED_FILE_TASKS[task_id]
        if not path.is_file():
            pytest.skip(f"real data file {path} is absent (it sits beside the repo in CI)")
        kwargs["path"] = str(path)
    check_task(task_id, **kwargs)
