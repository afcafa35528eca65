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

import warnings

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


def knn_indices(coords: np.ndarray, max_k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``max_k + 1`` nearest spots of each spot (column 0: the spot itself).

    Uses scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors` (Euclidean), as the classic package does, so
    that ties are broken the same way. ``rows``: query only these spots (all when ``None``).

    Returns
    -------
    ``(n_rows, max_k + 1)`` int64 array.
    """
    from sklearn.neighbors import NearestNeighbors

    coords = np.asarray(coords, dtype=np.float64)
    nn = NearestNeighbors(n_neighbors=max_k + 1).fit(coords)
    return nn.kneighbors(coords if rows is None else coords[rows], return_distance=False)


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
    Q, targets: np.ndarray, spots: np.ndarray | None = None, *, factor: LDLFactor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Entries :math:`(Q^{-1})_{s_r, t_{rc}}` (``s = spots``, ``t = targets``) and the diagonal of :math:`Q^{-1}`.

    ``Q`` is factored once (:class:`~smoother._core.selinv.LDLFactor`); the diagonal comes from selected
    inversion and each spot's entries from a sparse solve restricted to the elimination-tree paths involved.

    Returns
    -------
    cov
        Shape ``targets.shape``; row ``r`` belongs to spot ``spots[r]`` (spot ``r`` when ``spots`` is ``None``).
    var
        ``diag(Q^{-1})``, shape ``(n,)``.
    """
    Q = _as_sparse_spd(Q)
    n = Q.shape[0]
    factor = factor if factor is not None else LDLFactor(Q)
    var = factor.inv_diag()
    spots = np.arange(n) if spots is None else np.asarray(spots, dtype=np.int64)
    cov = factor.inv_entries(spots, targets)
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
    nbrs: np.ndarray | None = None,
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
    nbrs
        Precomputed :func:`knn_indices` ``(n, >= max_k + 1)`` to reuse across calls.

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
    spots = choose_spots(n, n_sample, seed)
    rows = np.arange(n) if spots is None else spots
    tg = knn_indices(coords, max_k, spots) if nbrs is None else nbrs[rows]
    tg = np.ascontiguousarray(tg[:, min_k : max_k + 1])
    cov, var = neighbor_covariances(Q, tg, rows)
    if not (var > 0).all():
        msg = "The precision matrix is not positive definite (non-positive implied variance)."
        raise NotPositiveDefiniteError(msg)
    corr = cov / np.sqrt(var[rows][:, None] * var[tg])
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
    nbrs: np.ndarray | None = None,
):
    """As :func:`corr_decay_quantiles` but from a known sparse covariance (the SMA prior): no solve needed."""
    cov = sp.csr_matrix(cov, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    check_decay_args(n, min_k, max_k, n_sample)
    spots = choose_spots(n, n_sample, seed)
    rows = np.arange(n) if spots is None else spots
    tg = (knn_indices(coords, max_k, spots) if nbrs is None else nbrs[rows])[:, min_k : max_k + 1]
    var = cov.diagonal()
    vals = np.asarray(cov[np.repeat(rows, tg.shape[1]), tg.ravel()]).reshape(len(rows), -1)
    corr = vals / np.sqrt(var[rows][:, None] * var[tg])
    df = quantile_table(corr, np.arange(min_k, max_k + 1))
    if return_var:
        return df, var_table(var)
    return df


# ----------------------------------------------------------------------------------------------------------------
# data similarity between neighbours, and decay-rate fits
# ----------------------------------------------------------------------------------------------------------------


def unit_rows(X):
    """Rows scaled to unit Euclidean norm (zero rows stay zero, so their cosine similarity is 0).

    A scipy sparse ``X`` stays sparse (CSR float64): nothing of size ``n_spots x n_features`` is densified.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        norm = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ X)
    X = np.asarray(X, dtype=np.float64)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def pair_cosine(Xn, a: np.ndarray, b: np.ndarray, *, chunk: int = 1_000_000) -> np.ndarray:
    """Cosine similarity of rows ``a[p]`` and ``b[p]`` of the unit-row matrix ``Xn`` (any matching shapes).

    ``Xn`` dense or scipy CSR (then the pairs are processed in chunks of ``chunk // 10`` sparse rows).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    af, bf = a.ravel(), b.ravel()
    out = np.empty(af.shape[0])
    sparse = sp.issparse(Xn)
    step = max(1, chunk // 10) if sparse else chunk
    for start in range(0, af.shape[0], step):
        sl = slice(start, start + step)
        if sparse:
            out[sl] = np.asarray(Xn[af[sl]].multiply(Xn[bf[sl]]).sum(axis=1)).ravel()
        else:
            out[sl] = np.einsum("ij,ij->i", Xn[af[sl]], Xn[bf[sl]])
    return out.reshape(a.shape)


def similarity_decay_quantiles(
    X, nbrs: np.ndarray, *, min_k: int = 0, max_k: int = 50, topk: bool = False
) -> pd.DataFrame:
    """Quantiles of the cosine similarity of ``X`` rows between each spot and its ``k``-th nearest neighbour.

    ``nbrs`` from :func:`knn_indices`. With ``topk=True`` the ``k`` row pools all neighbours ``0..k`` (the classic
    option); otherwise only the ``k``-th. Returns the classic table (``Q10 .. Q90, k``).
    """
    Xn = unit_rows(X)
    n = Xn.shape[0]
    sims = pair_cosine(Xn, np.repeat(np.arange(n)[:, None], max_k + 1, axis=1), nbrs[:, : max_k + 1])
    ks = np.arange(min_k, max_k + 1)
    if not topk:
        return quantile_table(sims[:, min_k : max_k + 1], ks)
    q = np.empty((len(ks), len(QUANTILES)))
    for r, k in enumerate(ks):  # a loop over degrees (<= max_k + 1), not over spots
        q[r] = np.quantile(sims[:, : k + 1], QUANTILES)
    df = pd.DataFrame(q, columns=list(QUANTILE_COLUMNS))
    df["k"] = ks
    return df


def similarity_cdf_table(
    X,
    nbrs: np.ndarray,
    *,
    k: int = 6,
    n_null: int = 100,
    seed: int = 0,
    max_null_pairs: int = 2_000_000,
) -> pd.DataFrame:
    r"""Quantile functions of neighbour similarity and of a shuffled-pairs null.

    Observed: cosine similarity of every spot with each of its ``k`` nearest neighbours (``k * n`` pairs).
    Null: the sources and the targets of those pairs shuffled independently, ``n_null`` times (when
    ``n_null * k * n`` exceeds ``max_null_pairs``, ``max_null_pairs`` null pairs are drawn instead, each end
    uniformly from the sources / targets — the same null distribution).

    Returns
    -------
    ``pandas.DataFrame`` with columns ``quantile`` (0, 0.01, ..., 1), ``observed`` and ``shuffled`` (the
    similarity at that quantile), 101 rows.
    """
    Xn = unit_rows(X)
    n = Xn.shape[0]
    src = np.repeat(np.arange(n), k)
    tgt = nbrs[:, 1 : k + 1].ravel()
    obs = pair_cosine(Xn, src, tgt)
    rng = np.random.default_rng(seed)
    m = src.shape[0]
    if n_null * m <= max_null_pairs:  # n_null full independent shuffles of both ends
        a = np.concatenate([rng.permutation(src) for _ in range(n_null)])
        b = np.concatenate([rng.permutation(tgt) for _ in range(n_null)])
    else:  # the same null distribution, sampled: ends drawn independently and uniformly from the pairs
        a = src[rng.integers(0, m, max_null_pairs)]
        b = tgt[rng.integers(0, m, max_null_pairs)]
    null = pair_cosine(Xn, a, b)
    q = np.linspace(0.0, 1.0, 101)
    return pd.DataFrame({"quantile": q, "observed": np.quantile(obs, q), "shuffled": np.quantile(null, q)})


def _mono_exp(x, alpha, beta, theta):
    return alpha * np.exp(-beta * x) + theta


def fit_mono_exp(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    r"""Least-squares fit of :math:`y = \alpha e^{-\beta x} + \theta`; returns ``(alpha, beta, theta)``.

    ``beta`` is the decay rate. Starts from ``alpha = max(y) - min(y)``, ``theta = min(y)`` and ``beta`` from the
    x at which ``y`` has fallen half-way; NaN values are dropped. Returns NaNs when fewer than 3 points remain or
    the fit fails.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return (np.nan, np.nan, np.nan)
    lo, hi = float(y.min()), float(y.max())
    if hi - lo <= 1e-12:
        return (0.0, 0.0, lo)
    mid = 0.5 * (lo + hi)
    xh = float(x[np.argmax(y <= mid)]) - float(x.min())
    beta0 = np.log(2.0) / max(xh, 1e-3)
    alpha0 = (hi - lo) * np.exp(beta0 * float(x.min()))
    starts = [(alpha0, beta0, lo), (hi - lo, 0.05, 0.0), (1.0, 1.0, 0.0)]
    best, best_sse = None, np.inf
    for p0 in starts:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(_mono_exp, x, y, p0=p0, maxfev=10_000)
        except (RuntimeError, ValueError, FloatingPointError):
            continue
        sse = float(np.sum((_mono_exp(x, *params) - y) ** 2))
        if np.isfinite(sse) and sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        return (np.nan, np.nan, np.nan)
    return (float(best[0]), float(best[1]), float(best[2]))


def decay_fit_problem(x: np.ndarray, y: np.ndarray, params: tuple[float, float, float]) -> str:
    r"""Why a mono-exponential fit ``params = (alpha, beta, theta)`` of ``y(x)`` gives no usable decay rate.

    Returns ``''`` for a usable fit. A fit is *degenerate* when the curve has fewer than 3 finite points, the
    least-squares fit failed, the curve does not decay (flat or rising: ``alpha <= 0`` or ``beta <= 0``), the
    rate is not identified over the observed range (``beta * (max x - min x) < 0.05``, or an exponential term more
    than 10 times the range of ``y`` at the first point, cancelled by ``theta``: a straight line fitted as a huge
    slow exponential), or the fitted curve explains less than half of the variance of ``y``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return f"only {x.size} finite point(s) on the curve; a decay rate needs at least 3 (use a larger max_k)"
    alpha, beta, theta = (float(v) for v in params)
    if not np.isfinite([alpha, beta, theta]).all():
        return "the least-squares fit did not converge (the curve has no mono-exponential shape, e.g. a straight line)"
    span, yrange = float(x.max() - x.min()), float(y.max() - y.min())
    if yrange <= 1e-12:
        return f"the curve is flat (constant {y[0]:.3g}): no decay"
    if alpha <= 0 or beta <= 0:
        return f"the curve does not decay (fit alpha = {alpha:.3g}, beta = {beta:.3g}: flat or rising)"
    amp = alpha * np.exp(-beta * float(x.min()))
    if beta * span < 0.05 or amp > 10.0 * yrange:
        return (
            f"the decay is too slow to identify over k in [{x.min():g}, {x.max():g}] (fit alpha = {alpha:.3g}, "
            f"beta = {beta:.3g}, theta = {theta:.3g}: a near-straight line fitted as a huge slow exponential); "
            "use a larger max_k"
        )
    resid = y - _mono_exp(x, alpha, beta, theta)
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    if r2 < 0.5:
        return f"a mono-exponential decay fits the curve poorly (R^2 = {r2:.2f})"
    return ""


def fit_decay_rate(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, str]:
    """:func:`fit_mono_exp` plus :func:`decay_fit_problem`: ``(alpha, beta, theta, problem)``."""
    params = fit_mono_exp(x, y)
    return (*params, decay_fit_problem(x, y, params))
