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


def _dense_precision(W, prior, rho, standardize=False):
    """Precision of each prior written from the formulas of spec/classic_api.md, in dense numpy (tiny graphs only).

    ``W`` may be sparse or dense; negative weights are clipped to 0. Independent of ``smoother`` on purpose.
    """
    import scipy.sparse as sp

    W = np.clip(W.toarray() if sp.issparse(W) else np.asarray(W, dtype=np.float64), 0, None)
    n = W.shape[0]
    eye = np.eye(n)
    if prior == "sma":
        A = eye + rho * W
        Q = np.linalg.inv(A @ A.T)
    elif prior in ("sar", "isar"):
        Wp = W / W.sum(1, keepdims=True) if prior == "isar" else W
        Q = (eye - rho * Wp).T @ (eye - rho * Wp)
    elif prior == "car":
        Q = eye - rho * W
    else:
        Q = np.diag(W.sum(1)) - rho * W
    if standardize:
        s = np.sqrt(np.diag(np.linalg.inv(Q)))
        Q = Q * np.outer(s, s)
    return Q


@pytest.fixture(scope="session")
def dense_precision():
    """The dense reference precision ``f(W, prior, rho, standardize=False)`` shared by the loss and smooth tests."""
    return _dense_precision
