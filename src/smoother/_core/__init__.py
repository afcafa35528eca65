"""Core math of smoother: arrays in, arrays out (numpy, scipy.sparse, torch). No AnnData here.

The torch-based names load on first use, so code that needs only graphs, precisions and factorizations does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._constants import PRIORS

# numpy/scipy only: loaded eagerly (a lazy name equal to its submodule's, `precision`, would be shadowed by the
# submodule once that is imported)
from .graph import fill_isolated, knn_graph, radius_graph, row_normalize
from .linalg import NotPositiveDefiniteError, SPDFactor, inv_diag, is_positive_definite
from .precision import precision, rho_upper_bound, standardize_precision

# torch: on first use
_LAZY = {
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


__all__ = [
    "PRIORS",
    "NotPositiveDefiniteError",
    "SPDFactor",
    "fill_isolated",
    "inv_diag",
    "is_positive_definite",
    "knn_graph",
    "precision",
    "radius_graph",
    "rho_upper_bound",
    "row_normalize",
    "standardize_precision",
    *sorted(_LAZY),
]
