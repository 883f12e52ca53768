"""Exceptions shared by every part of cellgym.

Each error subclasses both :class:`CellgymError` and the matching builtin, so ``except ValueError`` still
catches a :class:`DataSpecError`. Messages follow one shape: what is wrong, where, what was expected and
what was found, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CellgymError",
    "CheckpointError",
    "DataSpecError",
    "GeneMismatchError",
    "UnknownPerturbationError",
]


class CellgymError(Exception):
    """Root of every error cellgym raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataSpecError(CellgymError, ValueError):
    """An AnnData does not match its :class:`~cellgym.predictors.DataSpec` (missing column, NaN, ...)."""


class UnknownPerturbationError(CellgymError, KeyError):
    """A perturbation name is not in a predictor's or task's vocabulary."""


class GeneMismatchError(CellgymError, ValueError):
    """The genes of an AnnData differ from the genes a predictor was fitted on."""


class CheckpointError(CellgymError, ValueError):
    """A saved predictor folder is missing, corrupt or from an incompatible version."""
