"""A simulated differentiation time course (the ground-truth SERGIO world) and forecast scoring.

The test bed of CellGen's trajectory mode: cells start at the steady state of one SERGIO cell type and
follow the true dynamics of another (its master-regulator rates switched on at time 0), snapshotted at
several time points. Snapshots are destructive, as in a real time course: each time point holds its
own cells (independent trajectories), so a model only ever sees unpaired populations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .. import metrics as M
from ..base import DataSpecError

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import CellGen

__all__ = ["TIME_SPEC", "forecast_scores", "simulate_time_course"]

TIME_KEY = "time"


def simulate_time_course(
    n_cells: int = 200,
    n_times: int = 7,
    *,
    source: str = "type0",
    target: str = "type1",
    steps_per_time: int = 20,
    network: str = "lineages",
    seed: int = 0,
) -> AnnData:
    """Cells of ``source`` differentiating into ``target`` under ``grn.sergio`` (chemical-Langevin noise).

    Parameters
    ----------
    n_cells
        Cells per time point (each its own trajectory).
    n_times
        Time points 0, 1, ..., n_times - 1 (one unit = ``steps_per_time`` x 0.05 SERGIO time units).
    source, target
        SERGIO cell types: the start state and the type whose master-regulator rates drive the dynamics.
    steps_per_time
        Euler-Maruyama steps between time points.
    network
        ``grn.sergio`` network (default the shipped 20-gene ``"lineages"``).
    seed
        Seed of every draw.

    Returns
    -------
    AnnData (n_cells x n_times, G): ``X`` log1p of the simulated expression, ``obs['time']`` (0, 1, ...),
    ``obs['perturbation']`` = ``"control"``; fit with :data:`TIME_SPEC`.
    """
    import anndata as ad

    from cellgym.registry import make_predictor

    if n_cells < 2 or n_times < 2 or steps_per_time < 1:
        raise DataSpecError(f"simulate_time_course: expected n_cells >= 2, n_times >= 2, steps_per_time >= 1; got {n_cells}, {n_times}, {steps_per_time}.")
    sim = make_predictor("grn.sergio", network=network, n_steps=steps_per_time)
    src, tgt = sim.context_index(source), sim.context_index(target)
    gen = torch.Generator().manual_seed(seed)
    total = n_cells * n_times
    x = sim.initial_states(total, torch.full((total,), src, dtype=torch.long), generator=gen)
    no_pert = torch.zeros(total, len(sim.perturbations))
    ctx = torch.full((total,), tgt, dtype=torch.long)
    snaps = []
    for k in range(n_times):
        snaps.append(x[k * n_cells : (k + 1) * n_cells].clone())  # cells of time k leave the dish here
        x = sim.sample_batch(x, no_pert, ctx, generator=gen)
    obs = pd.DataFrame({TIME_KEY: np.repeat(np.arange(n_times, dtype=np.float32), n_cells), "perturbation": "control"})
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=torch.log1p(torch.cat(snaps)).numpy(), obs=obs, var=pd.DataFrame(index=pd.Index(sim.genes, dtype=str)))


def _spec():  # a DataSpec for simulate_time_course's AnnData
    from ..base import DataSpec

    return DataSpec(counts=None, time_key=TIME_KEY)


TIME_SPEC = _spec()
"""DataSpec of :func:`simulate_time_course`'s AnnData (log1p in X, time points in ``obs['time']``)."""


def forecast_scores(model: CellGen, course: AnnData, horizons: tuple[int, ...] = (1, 3), *, seed: int = 0) -> pd.DataFrame:
    """Forecast each time point t + k of ``course`` from its cells at t; compare with two baselines.

    Predictors: ``cellgen`` (``k`` rolled transitions from the cells at t), ``nochange`` (the cells at
    t) and ``linear_mean`` (the cells at t shifted by ``k`` times the last change of the mean,
    ``mean_t - mean_{t-1}``; only for t >= 1, so every predictor is scored on t >= 1). Scores against
    the real cells at t + k: energy distance and the MSE of the mean.

    Returns
    -------
    DataFrame with one row per (horizon, predictor): ``energy_distance`` and ``mse_mean`` averaged
    over the start times, and ``n_starts``.
    """
    t = course.obs[TIME_KEY].to_numpy(np.float64)
    times = sorted(np.unique(t))
    x = np.asarray(course.X, dtype=np.float32)
    cells = {tt: x[t == tt] for tt in times}
    rows = []
    for k in horizons:
        for i in range(1, len(times) - k):
            now, past, future = cells[times[i]], cells[times[i - 1]], cells[times[i + k]]
            cg = course[t == times[i]]
            preds = {
                "cellgen": np.asarray(model.predict(cg, start=times[i], steps=k).X),
                "nochange": now,
                "linear_mean": now + k * (now.mean(0) - past.mean(0)),
            }
            for name, p in preds.items():
                rows.append({"horizon": k, "predictor": name, "start": times[i],
                             "energy_distance": M.energy_distance(p, future, seed=seed),
                             "mse_mean": float(np.mean((p.mean(0) - future.mean(0)) ** 2))})
    df = pd.DataFrame(rows)
    out = df.groupby(["horizon", "predictor"], sort=False)[["energy_distance", "mse_mean"]].mean()
    out["n_starts"] = df.groupby(["horizon", "predictor"], sort=False).size()
    return out
