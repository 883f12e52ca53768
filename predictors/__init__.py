"""cellgym.predictors — the predictor contract, data contract, metrics, and every predictor family.

Importing this package never imports gymnasium, pettingzoo or stable-baselines3, nor any predictor
family (``cellgym.predictors.baselines``, ``.gem1``, ... load when used or made through the registry).
Its names load on first use (PEP 562), so importing a light submodule such as ``.base.errors`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import __all__ as _base_all

__all__ = [*_base_all, "EvaluationResult", "evaluate", "metrics"]


def __getattr__(name: str) -> Any:
    if name == "metrics":
        value: Any = importlib.import_module(f"{__name__}.metrics")
    elif name in ("EvaluationResult", "evaluate"):
        value = getattr(importlib.import_module(f"{__name__}.evaluation"), name)
    elif name in _base_all:
        value = getattr(importlib.import_module(f"{__name__}.base"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

