"""Diagonal (and selected entries) of the inverse of a sparse SPD matrix, without a dense inverse."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .linalg import SPDFactor, inv_diag


def inv_diag_exact(Q: sp.spmatrix, *, factor: SPDFactor | None = None) -> np.ndarray:
    """Exact ``diag(Q^{-1})`` of a sparse SPD ``Q``; raises :class:`NotPositiveDefiniteError` otherwise."""
    Q = sp.csr_matrix(Q, dtype=np.float64)
    factor = factor if factor is not None else SPDFactor(Q)
    return inv_diag(Q, factor=factor)
