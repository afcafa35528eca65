"""Shared input checks with uniform, actionable messages.

Every check raises *before* any work is done, so a failed call leaves the user's data unchanged.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._constants import PRIORS


def as_float_array(x: Any, name: str, *, expected: str, densify_sparse: bool = False) -> np.ndarray:
    """Convert a torch tensor, pandas object or array-like to a float64 ``ndarray``.

    Parameters
    ----------
    x
        The user's input.
    name
        Argument name used in the error message.
    expected
        What the argument should be, e.g. ``"a numeric array of shape (n_spots, 2)"``.
    densify_sparse
        Turn a scipy sparse matrix into a dense array (only for inputs that are small or dense by nature,
        such as a genes x cell types reference). Without it a sparse matrix is rejected with ``TypeError``.

    Raises
    ------
    TypeError
        When ``x`` cannot be read as a numeric array; the message names ``name`` and ``expected``.
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    if densify_sparse and sp.issparse(x):
        x = x.toarray()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"Expected `{name}` to be {expected}, found {type(x).__name__}."
        raise TypeError(msg) from e


def check_coords(coords: Any, *, name: str = "coords", min_spots: int = 1) -> np.ndarray:
    """Return coordinates as a float64 ``(n, d)`` array with ``d`` in {2, 3}; raise on NaN/inf or bad shape."""
    arr = as_float_array(coords, name, expected="a numeric array of shape (n_spots, 2) or (n_spots, 3)")
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        msg = f"Expected `{name}` of shape (n_spots, 2) or (n_spots, 3), found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        msg = f"`{name}` contains NaN or inf in {bad} spot(s); drop or fix those spots first."
        raise ValueError(msg)
    if arr.shape[0] < min_spots:
        msg = f"Expected at least {min_spots} spots in `{name}`, found {arr.shape[0]}."
        raise ValueError(msg)
    return arr


def check_prior(prior: str, *, allowed: tuple[str, ...] = PRIORS) -> str:
    """Return the prior name in lower case; raise ``ValueError`` when it is unknown."""
    if not isinstance(prior, str) or prior.lower() not in allowed:
        msg = f"Unknown prior `{prior!r}`: expected one of {list(allowed)}."
        raise ValueError(msg)
    return prior.lower()


def check_rho(rho: Any, prior: str) -> float:
    """Check the spatial autocorrelation ``rho``.

    For 'car' and 'icar' (and 'sar'/'isar'/'sma') the classic range is ``[0, 1]``: values outside it make the
    implied covariance improper for typical graphs. The exact admissible range for a given graph is checked
    later, when the matrix is factorized.
    """
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not np.isfinite(rho):
        msg = f"Expected `rho` to be a finite real number, found `{rho!r}`."
        raise TypeError(msg)
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        msg = f"Expected `rho` to be in interval `[0, 1]` for prior '{prior}', found `{rho}`."
        raise ValueError(msg)
    return rho


def check_nonneg_scalar(value: Any, name: str) -> float:
    """A finite non-negative real number (e.g. a penalty strength)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        msg = f"Expected `{name}` to be a finite non-negative number, found `{value!r}`."
        raise TypeError(msg)
    if value < 0:
        msg = f"Expected `{name}` >= 0, found `{value}`."
        raise ValueError(msg)
    return float(value)


def check_square_graph(W: Any, n: int | None = None, *, name: str = "graph") -> sp.csr_matrix:
    """Return a square CSR float64 matrix; optionally check it has ``n`` rows."""
    if hasattr(W, "is_sparse") and hasattr(W, "coalesce"):  # torch tensor
        W = _torch_to_scipy(W)
    if not sp.issparse(W):
        W = np.asarray(W)
        if W.ndim != 2:
            msg = f"Expected `{name}` to be a 2D matrix, found {W.ndim} dimensions."
            raise ValueError(msg)
        W = sp.csr_matrix(W)
    W = sp.csr_matrix(W, dtype=np.float64)
    if W.shape[0] != W.shape[1]:
        msg = f"Expected a square `{name}`, found shape {W.shape}."
        raise ValueError(msg)
    if n is not None and W.shape[0] != n:
        msg = f"`{name}` has {W.shape[0]} rows but the data have {n} spots; rebuild the graph on these spots."
        raise ValueError(msg)
    if W.nnz and not np.isfinite(W.data).all():
        msg = f"`{name}` contains NaN or inf weights."
        raise ValueError(msg)
    return W


def _torch_to_scipy(t) -> sp.csr_matrix:
    """A torch tensor (dense or any sparse layout: COO, CSR, CSC, ...) as scipy CSR float64, never densified."""
    import torch

    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_sparse_coo().coalesce()
        idx = t.indices().numpy()
        return sp.csr_matrix((t.values().double().numpy(), (idx[0], idx[1])), shape=tuple(t.shape))
    return sp.csr_matrix(t.double().numpy())


def check_copy_inplace(copy: bool, inplace: bool) -> None:
    """scanpy's rule: ``copy=True`` and ``inplace=False`` cannot be combined."""
    if copy and not inplace:
        msg = "`copy=True` cannot be used with `inplace=False`."
        raise ValueError(msg)


def view_to_actual(adata) -> None:
    """Turn an AnnData view into an actual object, with a warning (scanpy's behaviour)."""
    if getattr(adata, "is_view", False):
        warnings.warn("Received a view of an AnnData. Making a copy.", UserWarning, stacklevel=3)
        adata._init_as_actual(adata.copy())
