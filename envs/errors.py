"""Errors raised by environments."""

from __future__ import annotations

from cellgym.predictors.base.errors import CellgymError

__all__ = ["InvalidActionError"]


class InvalidActionError(CellgymError, ValueError):
    """An action outside the environment's action space (the message names value, dtype, shape and space)."""
