r"""Precision matrices ``Q`` of Gaussian random field priors built from a spatial weight matrix ``W``.

With ``W`` clipped at 0 and ``D = diag(row sums of W)``:

========  ==========================================================  ======================
prior     precision ``Q``                                             sparse
========  ==========================================================  ======================
``sma``   :math:`[(I + \rho W)(I + \rho W)^T]^{-1}`                   no (dense inverse)
``sar``   :math:`(I - \rho W)^T (I - \rho W)`                         yes
``isar``  as ``sar`` with ``W`` row-scaled first                      yes
``car``   :math:`I - \rho W`                                          yes
``icar``  :math:`D - \rho W` (``rho = 1``: graph Laplacian, singular) yes
========  ==========================================================  ======================

``standardize=True`` rescales ``Q`` to :math:`S^{1/2} Q S^{1/2}` with :math:`S = \mathrm{diag}(Q^{-1})`, so the
implied covariance has unit variance at every spot; a singular ``Q`` is scaled to unit diagonal instead (with a
warning), as the classic API does. The diagonal of :math:`Q^{-1}` comes from a sparse factorization, never
from a dense inverse (dense only for ``sma``, whose precision is dense by definition).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .._validation import check_prior, check_rho, check_square_graph
from .graph import row_normalize
from .linalg import NotPositiveDefiniteError, SPDFactor

#: Above this many spots every dense n x n matrix the package builds on request (the SMA precision, the classic
#: ``*_dense`` weights, ``use_sparse=False`` losses) triggers a warning.
DENSE_WARN = 10_000
#: The same threshold under its older name (the dense SMA precision needs an n x n dense inverse).
SMA_DENSE_WARN = DENSE_WARN


def _clip_weights(W) -> sp.csr_matrix:
    W = check_square_graph(W, name="weights").copy()
    np.maximum(W.data, 0.0, out=W.data)
    W.eliminate_zeros()
    return W


def _is_symmetric(W: sp.csr_matrix, tol: float = 1e-10) -> bool:
    diff = W - W.T
    return diff.nnz == 0 or np.abs(diff.data).max() <= tol * max(1.0, np.abs(W.data).max())


def precision(
    W,
    prior: str = "icar",
    rho: float = 0.99,
    *,
    standardize: bool = False,
) -> sp.csr_matrix | np.ndarray:
    """Precision matrix of a spatial prior.

    Parameters
    ----------
    W
        Spatial weight matrix, shape ``(n_spots, n_spots)`` (scipy sparse, dense array or torch tensor).
        Negative weights are clipped at 0.
    prior
        One of ``'sma'``, ``'sar'``, ``'isar'``, ``'car'``, ``'icar'`` (see the module docstring).
    rho
        Spatial autocorrelation in ``[0, 1]``.
    standardize
        Rescale to unit implied variance at every spot.

    Returns
    -------
    Q
        CSR float64 ``(n_spots, n_spots)``; a dense ``ndarray`` for ``'sma'``.
    """
    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    W = _clip_weights(W)
    n = W.shape[0]
    eye = sp.identity(n, format="csr")
    if prior == "sma":
        if n > SMA_DENSE_WARN:
            warnings.warn(
                f"The SMA prior of {n} spots needs a dense {n} x {n} inverse; "
                "consider 'car', 'icar' or 'sar', whose precision is sparse.",
                UserWarning,
                stacklevel=2,
            )
        A = (eye + rho * W).toarray()
        Q = np.linalg.inv(A @ A.T)
        Q = 0.5 * (Q + Q.T)
        return standardize_precision(Q) if standardize else Q
    if prior in ("sar", "isar"):
        Wp = row_normalize(W) if prior == "isar" else W
        A = (eye - rho * Wp).tocsr()
        Q = (A.T @ A).tocsr()
    elif prior == "car":
        Q = (eye - rho * W).tocsr()
    else:  # icar
        Q = (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - rho * W).tocsr()
    if prior in ("car", "icar") and not _is_symmetric(W):
        warnings.warn(
            f"The weight matrix is not symmetric (row-scaled?), so the '{prior}' precision is not symmetric; "
            "its quadratic form uses the symmetric part. Use 'sar'/'isar' for row-scaled weights.",
            UserWarning,
            stacklevel=2,
        )
    Q.sum_duplicates()
    Q.sort_indices()
    singular = prior in ("icar", "isar") and rho == 1.0
    if singular and not standardize:
        warnings.warn(
            f"The '{prior}' precision at rho = 1 is singular (an intrinsic prior): fine as a loss, but it has no "
            "proper covariance. Use rho < 1 (e.g. 0.99) where a covariance is needed.",
            UserWarning,
            stacklevel=2,
        )
    return standardize_precision(Q, singular=singular) if standardize else Q


def standardize_precision(Q, *, factor: SPDFactor | None = None, singular: bool = False):
    """Rescale ``Q`` to unit implied variance (or unit diagonal when ``Q`` is singular, with a warning).

    ``singular=True`` states that ``Q`` is known to be singular (e.g. ICAR at rho = 1), where a factorization
    in floating point may not notice.
    """
    if not sp.issparse(Q):
        Q = np.asarray(Q, dtype=np.float64)
        try:
            if singular:
                raise np.linalg.LinAlgError("known singular")
            np.linalg.cholesky(Q)
            s = np.sqrt(np.diag(np.linalg.inv(Q)))
        except np.linalg.LinAlgError:
            warnings.warn(_SINGULAR_STD_MSG, UserWarning, stacklevel=3)
            s = 1.0 / (np.sqrt(np.clip(np.diag(Q), 0, None)) + 1e-8)
        return Q * np.outer(s, s)
    Q = sp.csr_matrix(Q, dtype=np.float64)
    Qs = 0.5 * (Q + Q.T)
    try:
        if singular:
            raise NotPositiveDefiniteError("known singular")
        from .selinv import inv_diag_exact

        d = inv_diag_exact(Qs, factor=factor)
        s = np.sqrt(d)
    except NotPositiveDefiniteError:
        warnings.warn(_SINGULAR_STD_MSG, UserWarning, stacklevel=3)
        s = 1.0 / (np.sqrt(np.clip(Q.diagonal(), 0, None)) + 1e-8)
    S = sp.diags(s)
    out = (S @ Q @ S).tocsr()
    out.sort_indices()
    return out


_SINGULAR_STD_MSG = (
    "The precision matrix is singular or not positive definite, so the implied covariance cannot be "
    "standardized; scaling the precision to unit diagonal instead (for 'icar' at rho = 1: the normalized "
    "graph Laplacian). Use rho < 1 for a proper prior."
)


def rho_upper_bound(W, prior: str) -> float:
    """Largest ``rho`` for which the prior's precision is positive definite on this graph (exclusive bound).

    'sma', 'sar' and 'isar' give a positive semi-definite ``Q`` for any ``rho``; it is definite as long as
    ``I + rho W`` / ``I - rho W`` is non-singular, so this returns ``inf`` / ``1`` (isar) for them.
    For 'car' the bound is ``1 / lambda_max(W)``; for 'icar' it is ``1 / lambda_max(D^-1/2 W D^-1/2)`` (= 1 for
    any graph with an edge).
    """
    from scipy.sparse.linalg import eigsh

    prior = check_prior(prior)
    W = _clip_weights(W)
    if prior in ("sma", "sar"):
        return float("inf")
    if prior == "isar":
        return 1.0
    Ws = 0.5 * (W + W.T)
    if prior == "icar":
        d = np.asarray(Ws.sum(axis=1)).ravel()
        dinv = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
        Ws = sp.diags(dinv) @ Ws @ sp.diags(dinv)
    n = Ws.shape[0]
    if n <= 200:
        lmax = float(np.linalg.eigvalsh(Ws.toarray()).max())
    else:
        lmax = float(eigsh(Ws, k=1, which="LA", return_eigenvectors=False, tol=1e-6)[0])
    return float("inf") if lmax <= 0 else 1.0 / lmax


def not_pd_message(prior: str, rho: float, W=None) -> str:
    """An error message for a prior whose precision is not positive definite, naming a valid ``rho``."""
    if prior == "icar" and rho >= 1.0:
        return (
            "The 'icar' precision at rho = 1 is the graph Laplacian, which is singular (an intrinsic prior with "
            "no proper covariance). Use rho < 1, e.g. rho=0.99."
        )
    if prior == "isar" and rho >= 1.0:
        return "The 'isar' precision at rho = 1 is singular. Use rho < 1, e.g. rho=0.99."
    hint = ""
    if W is not None and prior in ("car", "icar"):
        ub = rho_upper_bound(W, prior)
        hint = f" On this graph it is positive definite for 0 <= rho < {ub:.4g}; e.g. rho={0.95 * min(ub, 1):.3g}."
        if prior == "car":
            hint += " Or use 'icar', which is proper for any rho < 1, or row-scaled weights with 'isar'."
    return f"The '{prior}' precision with rho = {rho} is not positive definite on this graph.{hint}"
