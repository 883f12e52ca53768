"""Shared fixtures: real data from ../shared/data (skipped with the missing path named), small simulated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(1)  # the suite runs on 2 cores; one thread per process is fastest there


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test, naming the path, when it is absent (e.g. on a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repo in CI)")
    return SHARED_DATA


def shared_file(relative: str) -> Path:
    """A file under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (it sits beside the repo in CI)")
    return path
