"""The CellTRIP worlds' default data, simulated by the project (nothing is downloaded).

- :func:`simulate_spatial_tissue`: a layered 2-D tissue; counts depend on the cell's layer and on smooth
  gradients along both axes, so position is partly recoverable from expression (imputation task).
- :func:`simulate_multimodal`: paired RNA counts and a protein-like modality driven by shared cell types
  (integration task).
"""

from __future__ import annotations

import numpy as np


def simulate_spatial_tissue(n_cells: int = 600, n_genes: int = 100, n_layers: int = 5,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layered tissue in the unit square.

    Returns
    -------
    counts : array of shape (N, G), float32 integer counts
    coords : array of shape (N, 2), float32, in [0, 1]
    layer : array of shape (N,), int64 layer label (0 = top)
    """
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, 1.0, (n_cells, 2)).astype(np.float32)
    layer = np.minimum((coords[:, 1] * n_layers).astype(np.int64), n_layers - 1)
    layer_effect = rng.normal(0.0, 1.0, (n_layers, n_genes))
    gradient = rng.normal(0.0, 1.0, (2, n_genes))
    log_mean = 0.5 + layer_effect[layer] + (coords - 0.5) @ gradient * 2.0
    library = rng.lognormal(np.log(2.0), 0.3, (n_cells, 1))
    counts = rng.poisson(np.exp(np.clip(log_mean, -5, 5)) * library)
    return counts.astype(np.float32), coords, layer


def simulate_multimodal(n_cells: int = 500, n_genes: int = 100, n_proteins: int = 20, n_types: int = 5,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired RNA counts and protein-like features of the same cells, both driven by the cell type.

    Returns
    -------
    rna : array of shape (N, G), float32 integer counts
    protein : array of shape (N, P), float32 log-scale features
    cell_type : array of shape (N,), int64
    """
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, n_types, n_cells)
    latent = rng.normal(0.0, 2.0, (n_types, 8))[cell_type] + rng.normal(0.0, 0.5, (n_cells, 8))
    rna_mean = np.exp(np.clip(latent @ rng.normal(0.0, 0.4, (8, n_genes)), -5, 5))
    rna = rng.poisson(rna_mean * rng.lognormal(np.log(2.0), 0.3, (n_cells, 1)))
    protein = latent @ rng.normal(0.0, 0.5, (8, n_proteins)) + rng.normal(0.0, 0.3, (n_cells, n_proteins))
    return rna.astype(np.float32), protein.astype(np.float32), cell_type.astype(np.int64)
