"""Simulated perturbation screens from a ground-truth simulator: AnnData with the truth attached."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..base import DataSpec
from ..base._data import TARGET_SUM
from ..base.errors import DataSpecError
from ._model import BooleanPredictor
from ._sergio import technical_noise as _technical_noise
from ._sergio_model import SergioPredictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["simulate_screen"]

BASAL = 0.05  # basal expression added before technical noise, so that off genes still yield a few counts
CHUNK = 8192  # cells per simulator call


def _pick_doubles(singles: list[str], n: int, rng: np.random.Generator) -> list[str]:
    gene = [s.rsplit("_", 1)[0] for s in singles]
    pairs = [(i, j) for i in range(len(singles)) for j in range(i + 1, len(singles)) if gene[i] != gene[j]]
    if n > len(pairs):
        raise DataSpecError(f"doubles={n} but only {len(pairs)} pairs of the {len(singles)} singles act on different genes.")
    chosen = rng.choice(len(pairs), size=n, replace=False) if n else []
    return [f"{singles[pairs[k][0]]}+{singles[pairs[k][1]]}" for k in sorted(chosen)]


def simulate_screen(
    predictor: BooleanPredictor | SergioPredictor,
    *,
    n_cells_per_condition: int = 100,
    perturbations: Sequence[str] | None = None,
    doubles: int | Sequence[str] = 0,
    contexts: Sequence[str] | None = None,
    technical_noise: bool = True,
    seed: int | None = 0,
) -> AnnData:
    """Simulate a pooled perturbation screen (control, single and double perturbations) with known truth.

    In every context, ``n_cells_per_condition`` start cells per condition (:meth:`initial_states`:
    steady-state cells for SERGIO, states spread over the state space for Boolean models) evolve for
    the simulator's ``n_steps`` under the condition's perturbations with the simulator's noise
    (``sample_batch``). Their expression (plus a basal level 0.05) becomes UMI counts through
    :func:`~cellgym.predictors.grn.technical_noise` (library size, dropout, Poisson; Poisson only when
    ``technical_noise=False``).

    Parameters
    ----------
    predictor
        A :class:`BooleanPredictor` or :class:`SergioPredictor`.
    n_cells_per_condition
        Cells per (condition, context).
    perturbations
        Single perturbations to screen (vocabulary names, e.g. ``"Gata1_KO"``); default all.
    doubles
        Number of random pairs of the singles (on different genes), or explicit labels ``"A+B"``.
    contexts
        Cell types to screen (SERGIO); default all.
    technical_noise
        Apply library-size variation and dropout before Poisson sampling.
    seed
        Seed of everything random; the same seed gives the same AnnData.

    Returns
    -------
    AnnData (N cells x G genes): ``X`` log1p of counts normalised to 1e4 per cell (float32),
    ``layers['counts']`` int64 UMI counts, ``layers['simulated']`` the simulator's expression before
    technical noise (float32), ``obs['perturbation']`` (``control``, ``A``, ``A+B``), ``obs['cell_type']`` (SERGIO: the
    context; Boolean: the fate label of the final state), and ``uns['grn']`` the simulator config,
    the network (rules or edges) and the :class:`DataSpec` to evaluate with.
    """
    import anndata as ad

    if not isinstance(predictor, BooleanPredictor | SergioPredictor):
        raise DataSpecError(f"simulate_screen needs a grn.boolean or grn.sergio predictor, got {type(predictor).__name__}.")
    if n_cells_per_condition < 1:
        raise DataSpecError(f"n_cells_per_condition must be >= 1, got {n_cells_per_condition}.")
    rng = np.random.default_rng(seed)
    singles = list(predictor.perturbations if perturbations is None else perturbations)
    predictor.encode_perturbations(singles)  # unknown names fail here, with close matches
    if isinstance(doubles, int):
        combos = _pick_doubles(singles, doubles, rng)
    else:
        combos = list(doubles)
        bad = [c for c in combos if len(c.split("+")) != 2]
        if bad:
            raise DataSpecError(f"doubles must be labels 'A+B'; got {bad[:5]}.")
        predictor.encode_perturbations(combos)
    conditions = ["control", *singles, *combos]
    ctx_names = list(predictor.contexts if contexts is None else contexts)
    ctx_index = predictor.encode_contexts(ctx_names).tolist()

    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    labels = np.repeat(np.asarray(conditions, dtype=object), n_cells_per_condition)
    pert_all = predictor.encode_perturbations(labels)
    states, obs = [], []
    for name, c in zip(ctx_names, ctx_index, strict=True):
        for start in range(0, len(labels), CHUNK):
            sl = slice(start, start + CHUNK)
            n = len(labels[sl])
            ctx = torch.full((n,), c, dtype=torch.long)
            x0 = predictor.initial_states(n, ctx, generator=generator)
            states.append(predictor.sample_batch(x0, pert_all[sl], ctx, generator=generator))
        cell_type = [name] * len(labels) if isinstance(predictor, SergioPredictor) else None
        obs.append(pd.DataFrame({"perturbation": labels.astype(str), "context": name, "cell_type": cell_type}))
    y = torch.cat(states).numpy().astype(np.float32)
    obs_df = pd.concat(obs, ignore_index=True)
    if isinstance(predictor, BooleanPredictor):
        obs_df["cell_type"] = predictor.attractor_label(y)
        obs_df = obs_df.drop(columns="context")
        spec = DataSpec(counts="counts")
        network = {"rules": dict(predictor.network.rules)}
    else:
        obs_df = obs_df.drop(columns="context")
        spec = DataSpec(counts="counts", context_key="cell_type")
        net = predictor.network
        network = {
            "edges": pd.DataFrame({
                "regulator": [net.genes[i] for i in net.src], "target": [net.genes[i] for i in net.tgt],
                "strength": net.strength, "hill": net.hill, "half_response": net.half,
            }),
            "master_regulators": [net.genes[i] for i in net.master],
            "production_rates": net.rates,
            "decay": net.decay,
        }
    obs_df["cell_type"] = obs_df["cell_type"].astype("category")
    obs_df["perturbation"] = obs_df["perturbation"].astype("category")
    obs_df.index = obs_df.index.astype(str)

    counts = _technical_noise(y + BASAL, rng, enabled=technical_noise)
    lib = counts.sum(1, keepdims=True).astype(np.float64)
    lib[lib == 0] = 1.0
    x = np.log1p(counts / lib * TARGET_SUM).astype(np.float32)
    config = {k: ("" if v is None else v) for k, v in predictor.config.items()}  # h5ad cannot store None
    uns = {
        "grn": {
            "predictor": predictor.name, "config": config, "seed": -1 if seed is None else int(seed),
            "technical_noise": bool(technical_noise), "basal": BASAL, "n_cells_per_condition": int(n_cells_per_condition),
            "conditions": conditions, "contexts": ctx_names,
            "spec": {k: ("" if v is None else v) for k, v in spec.to_dict().items()}, **network,
        }
    }
    return ad.AnnData(
        X=x, obs=obs_df, var=pd.DataFrame(index=pd.Index(predictor.genes, dtype=str)),
        layers={"counts": counts, "simulated": y}, uns=uns,
    )
