"""Constructors behind the registered ``CellEnv-Trip-*`` tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._data import simulate_multimodal, simulate_spatial_tissue
from ._env import TripParallelEnv


def make_trip_env(adatas: Sequence[Any], input_modalities: Sequence[int] | None = None,
                  target_modalities: Sequence[int] | None = None, **kwargs: Any) -> TripParallelEnv:
    """The generic world over paired modalities (AnnData objects or arrays, one per modality)."""
    return TripParallelEnv(list(adatas), input_modalities=input_modalities,
                           target_modalities=target_modalities, **kwargs)


def make_integration_env(n_cells: int = 300, seed: int = 0, **kwargs: Any) -> TripParallelEnv:
    """Two simulated modalities of the same cells (RNA counts, protein features), both input and target."""
    rna, protein, cell_type = simulate_multimodal(n_cells=n_cells, seed=seed)
    return TripParallelEnv([rna, protein], kinds=["counts", "features"], names=["rna", "protein"],
                           **{"labels": cell_type, "label_name": "cell type", **kwargs})


def make_imputation_env(n_cells: int = 300, seed: int = 0, **kwargs: Any) -> TripParallelEnv:
    """A simulated layered tissue: cells see expression (input) and must reproduce space (target)."""
    counts, coords, layer = simulate_spatial_tissue(n_cells=n_cells, seed=seed)
    return TripParallelEnv([counts, coords], kinds=["counts", "spatial"], names=["rna", "spatial"],
                           input_modalities=[0], target_modalities=[1],
                           **{"labels": np.asarray(layer), "label_name": "tissue layer", **kwargs})
