"""Names of the tensors that travel in a training batch (after scvi-tools' ``REGISTRY_KEYS``)."""

from __future__ import annotations

from typing import NamedTuple


class _BatchKeys(NamedTuple):
    X: str = "x"  # Tensor[B, G] float32: log1p-normalised expression (or counts for count models)
    COUNTS: str = "counts"  # Tensor[B, G] float32: raw counts, where the data has them
    LIBRARY: str = "library"  # Tensor[B] float32: total counts per cell
    PERT: str = "pert"  # Tensor[B, P] float32 multi-hot over single perturbations (0 = control)
    CTX: str = "ctx"  # Tensor[B] int64: context (cell type / line) index
    CONTROL_X: str = "control_x"  # Tensor[B, G]: a control cell of the same context, for response models


BATCH = _BatchKeys()
