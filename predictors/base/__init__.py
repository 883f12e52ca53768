"""Contracts every predictor and environment relies on: data, predictor, adapters, errors."""

from ._adapters import RewardModel, Transition
from ._checkpoint import FORMAT_VERSION, read_checkpoint, write_checkpoint
from ._data import (
    DataSpec,
    Split,
    SplitKind,
    check_genes,
    expression,
    has_counts,
    is_count_matrix,
    perturbation_genes,
    raw_counts,
    split,
    validate,
)
from ._fit import train_module, validation_rows
from ._keys import BATCH
from ._predictor import Predictor, PredictorModule, seeded
from ._types import FitData, FitReport, LossOutput
from .errors import CellgymError, CheckpointError, DataSpecError, GeneMismatchError, UnknownPerturbationError

__all__ = [
    "BATCH",
    "FORMAT_VERSION",
    "CellgymError",
    "CheckpointError",
    "DataSpec",
    "DataSpecError",
    "FitData",
    "FitReport",
    "GeneMismatchError",
    "LossOutput",
    "Predictor",
    "PredictorModule",
    "RewardModel",
    "Split",
    "SplitKind",
    "Transition",
    "UnknownPerturbationError",
    "check_genes",
    "expression",
    "has_counts",
    "is_count_matrix",
    "perturbation_genes",
    "raw_counts",
    "read_checkpoint",
    "seeded",
    "split",
    "train_module",
    "validate",
    "validation_rows",
    "write_checkpoint",
]
