"""Fixtures over the simulated screen of ``tests/simulated_screens.py``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from simulated_screens import counts_variant, simulate_screen


@pytest.fixture(scope="session")
def _screen() -> tuple[ad.AnnData, dict[tuple[str, str], np.ndarray]]:
    return simulate_screen(0)


@pytest.fixture
def screen(_screen) -> ad.AnnData:
    """The log1p simulated screen (a fresh copy per test)."""
    return _screen[0].copy()


@pytest.fixture
def true_effects(_screen) -> dict[tuple[str, str], np.ndarray]:
    """The true mean delta (G,) of each (context, label)."""
    return _screen[1]


@pytest.fixture
def screen_counts(_screen) -> ad.AnnData:
    """The simulated screen as raw counts in ``X`` (plus ``layers['counts']`` variant built in tests)."""
    return counts_variant(_screen[0])


@pytest.fixture
def spec():
    """DataSpec of the simulated screen (contexts in ``cell_type``)."""
    from cellgym.predictors import DataSpec

    return DataSpec(context_key="cell_type", batch_key="batch")
