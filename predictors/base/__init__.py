"""Contracts every predictor and environment relies on: data, predictor, adapters, errors.

Names load on first use (PEP 562 module ``__getattr__``), so ``from cellgym.predictors.base.errors import
CellgymError`` -- what the CLI and the registry need -- imports neither torch nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_WHERE: dict[str, str] = {
    "RewardModel": "_adapters", "Transition": "_adapters",
    "FORMAT_VERSION": "_checkpoint", "read_checkpoint": "_checkpoint", "write_checkpoint": "_checkpoint",
    "DataSpec": "_data", "Split": "_data", "SplitKind": "_data", "check_genes": "_data", "expression": "_data",
    "has_counts": "_data", "is_count_matrix": "_data", "perturbation_genes": "_data", "raw_counts": "_data",
    "split": "_data", "target_gene": "_data", "validate": "_data",
    "train_module": "_fit", "validation_rows": "_fit",
    "BATCH": "_keys",
    "Pseudobulk": "_pseudobulk", "own_target_change": "_pseudobulk", "own_target_columns": "_pseudobulk",
    "pseudobulk": "_pseudobulk",
    "Predictor": "_predictor", "PredictorModule": "_predictor", "seeded": "_predictor",
    "FitData": "_types", "FitReport": "_types", "LossOutput": "_types",
    "CellgymError": "errors", "CheckpointError": "errors", "DataSpecError": "errors",
    "GeneMismatchError": "errors", "UnknownPerturbationError": "errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})

