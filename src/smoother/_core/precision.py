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


def _clip_weights(W, *, warn: bool = True) -> sp.csr_matrix:
    """``W`` as CSR float64 with negative weights set to 0 (with a warning naming how many) and zeros dropped."""
    W = check_square_graph(W, name="weights").copy()
    neg = W.data < 0
    if neg.any():
        if warn:
            warnings.warn(
                f"The weight matrix has {int(neg.sum())} negative weight(s) (smallest {W.data.min():.3g}); the spatial "
                "priors need non-negative weights (similarities, not distances or correlations), so they are set to 0. "
                "Rebuild the graph (e.g. `sm.pp.spatial_graph`) to silence this warning.",
                UserWarning,
                stacklevel=3,
            )
        W.data[neg] = 0.0
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
        Negative weights are set to 0 with a ``UserWarning`` (the AnnData functions reject them).
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


# ----------------------------------------------------------------------------------------------------------------
# the admissible range of rho on a given graph, and error messages that state it
# ----------------------------------------------------------------------------------------------------------------
def isolated_spots(W) -> np.ndarray:
    """Indices of the spots whose row of ``W`` (negative weights set to 0) holds no positive weight.

    Under 'icar' the precision :math:`D - \\rho W` is zero in those rows at every ``rho``: such a graph gives an
    improper prior (no covariance), whatever ``rho``.
    """
    W = _clip_weights(W, warn=False)
    return np.flatnonzero(np.asarray(W.sum(axis=1)).ravel() <= 0)


def _lambda_max(M: sp.csr_matrix) -> tuple[float, bool]:
    """Largest eigenvalue of the symmetric ``M`` and whether it is exact (else a Gershgorin upper bound)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    n = M.shape[0]
    if n == 0 or M.nnz == 0:
        return 0.0, True
    if n <= 200:
        return float(np.linalg.eigvalsh(M.toarray()).max()), True
    try:
        return float(eigsh(M, k=1, which="LA", return_eigenvectors=False, tol=1e-10, maxiter=20 * n)[0]), True
    except ArpackNoConvergence:
        return float(np.asarray(abs(M).sum(axis=1)).max()), False


def _rho_range(W: sp.csr_matrix, prior: str) -> tuple[float, bool]:
    """``(b, exact)``: the precision of ``prior`` on the clipped ``W`` is positive definite for ``0 <= rho < b``.

    ``exact``: ``b`` is the end of the interval [0, b) of positive definiteness (car/icar); otherwise ``b`` is a
    guaranteed bound (Q may be positive definite above it too).
    """
    if prior in ("car", "icar"):
        S = (0.5 * (W + W.T)).tocsr()  # the quadratic form of an asymmetric Q uses its symmetric part
        if prior == "icar":
            d = np.asarray(W.sum(axis=1)).ravel()
            if (d <= 0).any():
                return 0.0, True  # a zero diagonal: no rho works
            if _is_symmetric(W):
                return 1.0, True  # D^-1/2 W D^-1/2 has the Perron eigenvalue 1 (eigenvector D^1/2 1)
            s = 1.0 / np.sqrt(d)
            S = (sp.diags(s) @ S @ sp.diags(s)).tocsr()
        lmax, exact = _lambda_max(S)
        return (float("inf") if lmax <= 0 else 1.0 / lmax), exact
    if prior == "isar":
        W = row_normalize(W)
    # I -/+ rho W is non-singular when rho * min(||W||_inf, ||W||_1) < 1 (a bound on the spectral radius of W)
    rmax = float(np.asarray(W.sum(axis=1)).max()) if W.nnz else 0.0
    cmax = float(np.asarray(W.sum(axis=0)).max()) if W.nnz else 0.0
    r = min(rmax, cmax)
    return (float("inf") if r <= 0 else 1.0 / r), False


def rho_upper_bound(W, prior: str) -> float:
    """End ``b`` of the range ``0 <= rho < b`` on which the prior's precision is positive definite on this graph.

    For 'car' it is ``1 / lambda_max(W_s)`` and for 'icar' ``1 / lambda_max(D^-1/2 W_s D^-1/2)`` (``W_s`` the
    symmetric part of ``W``; 1 for any symmetric graph) — exact, and ``0`` when a spot has no neighbour under
    'icar' (no ``rho`` works). For 'sar', 'isar' and 'sma' it is a guaranteed bound from the row and column sums
    of ``W`` (``I -/+ rho W`` is non-singular below it; ``Q`` is positive definite for almost every larger
    ``rho`` too); 'isar' gives at least 1.
    """
    prior = check_prior(prior)
    return _rho_range(_clip_weights(W, warn=False), prior)[0]


def _floor_sig(x: float, digits: int) -> float:
    """``x > 0`` rounded down to ``digits`` significant digits (so a displayed bound never overstates)."""
    if not np.isfinite(x) or x <= 0:
        return x
    scale = 10.0 ** (digits - 1 - int(np.floor(np.log10(x))))
    return float(np.floor(x * scale) / scale)


def _spot_list(idx: np.ndarray, names=None, *, limit: int = 5) -> str:
    shown = [str(names[i]) if names is not None else str(int(i)) for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    what = "obs names" if names is not None else "indices"
    return f"{what} {', '.join(shown)}{more}"


def not_pd_message(prior: str, rho: float, W=None, *, names=None, graph: str = "this graph") -> str:
    """Why the precision of ``prior`` at ``rho`` on ``W`` is not positive definite, and a ``rho`` that works.

    Every hint is computed for the precision this ``W`` gives (:func:`precision`): the range of admissible
    ``rho`` (:func:`rho_upper_bound`), the spots without a neighbour that make 'icar' improper at every ``rho``
    (``names``: the obs names to quote, else indices), and — for an asymmetric ``W`` — what symmetrizing changes.
    ``graph`` names the graph in the message (e.g. ``"adata.obsp['spatial_connectivities']"``).
    """
    if prior == "icar" and rho >= 1.0:
        return (
            "The 'icar' precision at rho = 1 is the graph Laplacian, which is singular (an intrinsic prior with "
            "no proper covariance). Use rho < 1, e.g. rho=0.99."
        )
    if prior == "isar" and rho >= 1.0:
        return "The 'isar' precision at rho = 1 is singular. Use rho < 1, e.g. rho=0.99."
    head = f"The '{prior}' precision with rho = {rho:g} is not positive definite on {graph}."
    if W is None:
        return head
    W = _clip_weights(W, warn=False)
    Wsym = W if _is_symmetric(W) else W.maximum(W.T).tocsr()
    iso_sym = isolated_spots(Wsym)
    if prior == "icar":
        iso = isolated_spots(W)
        if iso.size and iso_sym.size == 0:
            return (
                f"{head} {iso.size} spot(s) have no outgoing edge in {graph} ({_spot_list(iso, names)}), so the "
                "'icar' precision D - rho W is zero in their rows at every rho. The graph is not symmetric (a "
                "directed kNN graph?): symmetrized with max(W, W.T), as the sm.tl functions do, every spot has a "
                "neighbour and 'icar' is proper for every rho < 1."
            )
        if iso.size:
            iso = iso_sym
            return (
                f"{head} {iso.size} spot(s) have no neighbour in {graph} ({_spot_list(iso, names)}): the 'icar' "
                "precision D - rho W is zero in their rows, so this prior has no covariance at any rho. Drop them "
                "(`G = adata.obsp[key]; adata = adata[np.asarray((G + G.T).sum(axis=1)).ravel() > 0].copy()`), "
                "give every spot a neighbour (a kNN graph, e.g. `sq.gr.spatial_neighbors(adata, n_neighs=6)`, or a "
                "larger radius; `sm.pp.spatial_graph` links an isolated spot to itself), or use prior='isar', which "
                "is proper for every rho < 1 with isolated spots."
            )
    b, exact = _rho_range(W, prior)
    example = _floor_sig(0.95 * min(b, 1.0, rho), 3) if rho > 0 else 0.0
    if rho >= b:
        where = (
            f" On {graph} it is positive definite exactly for 0 <= rho < {_floor_sig(b, 4):g}"
            if exact
            else f" On {graph} it is positive definite at least for 0 <= rho < {_floor_sig(b, 4):g}"
        )
    else:
        where = (
            f" In exact arithmetic it is positive definite for 0 <= rho < {_floor_sig(b, 4):g}, but at "
            f"rho = {rho:g} it is numerically singular"
        )
    hint = head + where + (f"; e.g. rho={example:g}." if example > 0 else ".")
    if prior in ("car", "icar") and not _is_symmetric(W):
        if iso_sym.size == 0:
            hint += (
                " The graph is not symmetric: symmetrized with max(W, W.T) (as the sm.tl functions do), 'icar' "
                "is proper for every rho < 1."
            )
    elif prior == "car" and iso_sym.size == 0:
        hint += " Or use 'icar', which is proper for every rho < 1 on this graph, or row-scaled weights with 'isar'."
    elif prior == "car":
        hint += " Or use row-scaled weights with 'isar', which is proper for every rho < 1."
    return hint
