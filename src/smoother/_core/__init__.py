"""Core math of smoother: arrays in, arrays out (numpy, scipy.sparse, torch). No AnnData here.

The names below load on first use, so code that needs only the graph builders does not import torch or numba.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._constants import PRIORS

_LAZY = {
    "fill_isolated": "graph",
    "knn_graph": "graph",
    "radius_graph": "graph",
    "row_normalize": "graph",
    "NotPositiveDefiniteError": "linalg",
    "SPDFactor": "linalg",
    "inv_diag": "linalg",
    "is_positive_definite": "linalg",
    "precision": "precision",
    "rho_upper_bound": "precision",
    "standardize_precision": "precision",
    "block_diag_sparse": "quadratic",
    "quadratic_form": "quadratic",
    "to_torch_sparse": "quadratic",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'smoother._core' has no attribute {name!r}")
    obj = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = obj
    return obj


__all__ = ["PRIORS", *sorted(_LAZY)]
