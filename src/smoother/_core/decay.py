r"""Correlation decay of a Gaussian random field prior over neighbourhood degree, without a dense inverse.

For a prior with precision ``Q`` (covariance :math:`\Sigma = Q^{-1}`), the implied correlation between spot
``i`` and its ``k``-th nearest spatial neighbour ``j = nn_k(i)`` is

.. math::

    r_{ik} = \frac{\Sigma_{ij}}{\sqrt{\Sigma_{ii}\,\Sigma_{jj}}}.

:func:`corr_decay_quantiles` returns, for every ``k`` in ``[min_k, max_k]``, the quantiles
(Q10, Q25, Q50, Q75, Q90) of :math:`r_{ik}` over spots ``i`` — the table of the classic
``SpatialLoss.calc_corr_decay_stats`` — and optionally the quantiles of the variances :math:`\Sigma_{ii}`.

It never forms :math:`\Sigma`: ``Q`` is factored once and only the covariance columns of the spots used are
solved for (``Sigma[:, i] = Q^{-1} e_i``), reading out the entries at each spot's ``max_k`` nearest
neighbours; the variances come from the exact diagonal of :math:`Q^{-1}` (selected inversion).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .linalg import NotPositiveDefiniteError
from .selinv import LDLFactor

#: Quantile levels and the column names of the classic decay tables.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
QUANTILE_COLUMNS = ("Q10", "Q25", "Q50", "Q75", "Q90")

#: Above this many spots, ``n_sample=None`` uses a seeded sample of :data:`DEFAULT_N_SAMPLE` spots.
EXACT_MAX_SPOTS = 20_000
DEFAULT_N_SAMPLE = 5_000


def knn_indices(coords: np.ndarray, max_k: int) -> np.ndarray:
    """Indices of the ``max_k + 1`` nearest spots of every spot (column 0: the spot itself), shape ``(n, max_k + 1)``.

    Uses scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors` (Euclidean), as the classic package does, so
    that ties are broken the same way.
    """
    from sklearn.neighbors import NearestNeighbors

    coords = np.asarray(coords, dtype=np.float64)
    nn = NearestNeighbors(n_neighbors=max_k + 1).fit(coords)
    return nn.kneighbors(coords, return_distance=False)


def check_decay_args(n: int, min_k: int, max_k: int, n_sample: int | None) -> None:
    """Validate ``min_k``, ``max_k`` and ``n_sample`` against ``n`` spots (raises ``ValueError``/``TypeError``)."""
    for name, v in (("min_k", min_k), ("max_k", max_k)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            msg = f"Expected `{name}` to be an integer, found `{v!r}`."
            raise TypeError(msg)
    if min_k < 0 or max_k < min_k:
        msg = f"Expected 0 <= min_k <= max_k, found min_k={min_k}, max_k={max_k}."
        raise ValueError(msg)
    if max_k >= n:
        msg = f"`max_k` ({max_k}) must be smaller than the number of spots ({n}); use e.g. max_k={max(0, n - 1)}."
        raise ValueError(msg)
    if n_sample is not None:
        if isinstance(n_sample, bool) or not isinstance(n_sample, int | np.integer) or n_sample < 1:
            msg = f"Expected `n_sample` to be a positive integer or None, found `{n_sample!r}`."
            raise ValueError(msg)


def choose_spots(n: int, n_sample: int | None, seed: int) -> np.ndarray | None:
    """The spots whose correlations are used: ``None`` for all, else a sorted seeded sample without replacement."""
    if n_sample is None:
        n_sample = n if n <= EXACT_MAX_SPOTS else DEFAULT_N_SAMPLE
    if n_sample >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(n_sample), replace=False))


def quantile_table(values: np.ndarray, ks: np.ndarray) -> pd.DataFrame:
    """Classic decay table: one row per ``k``, columns ``Q10 Q25 Q50 Q75 Q90 k``.

    ``values`` has shape ``(n_used, len(ks))``; quantiles use linear interpolation (as ``torch.quantile``),
    ignoring NaN.
    """
    q = np.nanquantile(values, QUANTILES, axis=0).T if values.shape[0] else np.full((len(ks), 5), np.nan)
    df = pd.DataFrame(q, columns=list(QUANTILE_COLUMNS))
    df["k"] = np.asarray(ks, dtype=np.int64)
    return df


def var_table(var: np.ndarray) -> pd.DataFrame:
    """Classic variance table: one row, columns ``Q10 Q25 Q50 Q75 Q90``."""
    q = np.nanquantile(np.asarray(var, dtype=np.float64), QUANTILES).reshape(1, -1)
    return pd.DataFrame(q, columns=list(QUANTILE_COLUMNS))


def _as_sparse_spd(Q) -> sp.csr_matrix:
    if sp.issparse(Q):
        Q = sp.csr_matrix(Q, dtype=np.float64)
    else:
        Q = np.asarray(Q, dtype=np.float64)
        if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
            msg = f"Expected a square precision matrix, found shape {Q.shape}."
            raise ValueError(msg)
        Q = sp.csr_matrix(Q)
    if Q.shape[0] != Q.shape[1]:
        msg = f"Expected a square precision matrix, found shape {Q.shape}."
        raise ValueError(msg)
    return (0.5 * (Q + Q.T)).tocsr()


def neighbor_covariances(
    Q, nbrs: np.ndarray, spots: np.ndarray | None = None, *, factor: LDLFactor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Entries :math:`(Q^{-1})_{i, nbrs[i, c]}` for the spots used, and the exact diagonal of :math:`Q^{-1}`.

    ``Q`` is factored once (:class:`~smoother._core.selinv.LDLFactor`); the diagonal comes from selected
    inversion and each spot's entries from a sparse solve restricted to the elimination-tree paths involved.

    Returns
    -------
    cov
        Shape ``(n_used, nbrs.shape[1])``; row ``r`` belongs to spot ``spots[r]`` (all spots when ``None``).
    var
        ``diag(Q^{-1})``, shape ``(n,)``.
    """
    Q = _as_sparse_spd(Q)
    n = Q.shape[0]
    factor = factor if factor is not None else LDLFactor(Q)
    var = factor.inv_diag()
    spots = np.arange(n) if spots is None else np.asarray(spots, dtype=np.int64)
    cov = factor.inv_entries(spots, nbrs[spots])
    return cov, var


def corr_decay_quantiles(
    Q,
    coords: np.ndarray,
    *,
    min_k: int = 0,
    max_k: int = 50,
    return_var: bool = False,
    n_sample: int | None = None,
    seed: int = 0,
):
    r"""Quantiles of the prior's implied correlation between each spot and its ``k``-th nearest neighbour.

    Parameters
    ----------
    Q
        Precision matrix, sparse (or dense) symmetric positive definite, shape ``(n, n)``.
    coords
        Spot coordinates, shape ``(n, d)``; neighbours are Euclidean nearest neighbours (``k = 0``: the spot).
    min_k, max_k
        Range of neighbourhood degrees ``k`` (inclusive); ``max_k < n``.
    return_var
        Also return the quantiles of the implied variances :math:`(Q^{-1})_{ii}` over all spots.
    n_sample
        Number of spots ``i`` whose correlations are used. ``None``: all spots when ``n <= 20,000``, else a
        sample of 5,000. With all spots the table is exact; with a sample it is the empirical quantile of the
        exact correlations of a uniform random sample of spots (without replacement, drawn with ``seed``), an
        unbiased-in-distribution estimate whose error shrinks as ``1 / sqrt(n_sample)``.
    seed
        Seed of the spot sample.

    Returns
    -------
    corr_df
        ``pandas.DataFrame`` with one row per ``k`` and columns ``Q10, Q25, Q50, Q75, Q90, k``.
    var_df
        (only with ``return_var``) one row, columns ``Q10, Q25, Q50, Q75, Q90`` — quantiles of the exact
        variances of all spots.

    Raises
    ------
    NotPositiveDefiniteError
        When ``Q`` is singular or not positive definite (no proper covariance).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2:
        msg = f"Expected `coords` of shape (n_spots, n_dims), found shape {coords.shape}."
        raise ValueError(msg)
    n = coords.shape[0]
    if Q.shape[0] != n:
        msg = f"The precision matrix has {Q.shape[0]} rows but `coords` has {n} spots."
        raise ValueError(msg)
    check_decay_args(n, min_k, max_k, n_sample)
    nbrs = knn_indices(coords, max_k)[:, min_k : max_k + 1]
    spots = choose_spots(n, n_sample, seed)
    cov, var = neighbor_covariances(Q, nbrs, spots)
    rows = np.arange(n) if spots is None else spots
    if not (var > 0).all():
        msg = "The precision matrix is not positive definite (non-positive implied variance)."
        raise NotPositiveDefiniteError(msg)
    corr = cov / np.sqrt(var[rows][:, None] * var[nbrs[rows]])
    df = quantile_table(corr, np.arange(min_k, max_k + 1))
    if return_var:
        return df, var_table(var)
    return df


def sma_covariance(W, rho: float) -> sp.csr_matrix:
    r"""The SMA prior's covariance :math:`(I + \rho W)(I + \rho W)^T`, which is sparse (its precision is dense)."""
    W = sp.csr_matrix(W, dtype=np.float64)
    A = (sp.identity(W.shape[0], format="csr") + rho * W).tocsr()
    return (A @ A.T).tocsr()


def corr_decay_quantiles_from_cov(
    cov: sp.spmatrix,
    coords: np.ndarray,
    *,
    min_k: int = 0,
    max_k: int = 50,
    return_var: bool = False,
    n_sample: int | None = None,
    seed: int = 0,
):
    """As :func:`corr_decay_quantiles` but from a known sparse covariance (the SMA prior): no solve needed."""
    cov = sp.csr_matrix(cov, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    check_decay_args(n, min_k, max_k, n_sample)
    nbrs = knn_indices(coords, max_k)[:, min_k : max_k + 1]
    spots = choose_spots(n, n_sample, seed)
    rows = np.arange(n) if spots is None else spots
    var = cov.diagonal()
    vals = np.asarray(cov[np.repeat(rows, nbrs.shape[1]), nbrs[rows].ravel()]).reshape(len(rows), -1)
    corr = vals / np.sqrt(var[rows][:, None] * var[nbrs[rows]])
    df = quantile_table(corr, np.arange(min_k, max_k + 1))
    if return_var:
        return df, var_table(var)
    return df
