"""Core math of smoother: arrays in, arrays out (numpy, scipy.sparse, torch). No AnnData here."""

from .._constants import PRIORS
from .graph import fill_isolated, knn_graph, radius_graph, row_normalize
from .linalg import NotPositiveDefiniteError, SPDFactor, inv_diag, is_positive_definite
from .precision import precision, rho_upper_bound, standardize_precision
from .quadratic import block_diag_sparse, quadratic_form, to_torch_sparse

__all__ = [
    "PRIORS",
    "NotPositiveDefiniteError",
    "SPDFactor",
    "block_diag_sparse",
    "fill_isolated",
    "inv_diag",
    "is_positive_definite",
    "knn_graph",
    "precision",
    "quadratic_form",
    "radius_graph",
    "rho_upper_bound",
    "row_normalize",
    "standardize_precision",
    "to_torch_sparse",
]
