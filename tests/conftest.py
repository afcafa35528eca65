"""Shared fixtures. Expensive objects are session-scoped; function fixtures hand out copies."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionstart(session):
    import matplotlib

    matplotlib.use("agg")
    import smoother as sm

    sm.settings.progress_bar = False


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def grid_coords():
    """A 12 x 10 square grid, spacing 1, shape (120, 2)."""
    xx, yy = np.meshgrid(np.arange(12.0), np.arange(10.0))
    return np.column_stack([xx.ravel(), yy.ravel()])


@pytest.fixture(scope="session")
def shared_data_dir():
    """``../shared/data`` beside the repository (DLPFC 151673); tests using it skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
