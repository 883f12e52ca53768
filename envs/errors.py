"""Errors raised by environments."""

from __future__ import annotations

import gymnasium

from cellgym.predictors.base.errors import CellgymError

__all__ = ["InvalidActionError", "ResetNeededError"]


class InvalidActionError(CellgymError, ValueError):
    """An action outside the environment's action space (the message names value, dtype, shape and space)."""


class ResetNeededError(CellgymError, gymnasium.error.ResetNeeded):
    """``step()`` before ``reset()``, or after the episode terminated or was truncated (gymnasium's
    ``ResetNeeded``, which PettingZoo environments raise too)."""
