r"""Posterior variances of the exact fits, from the factorization that produced them.

Every smoothing, imputation and quadratic deconvolution fit is the mode of a Gaussian posterior whose covariance is
``sigma^2 * A^{-1}`` for a sparse SPD matrix ``A`` (``I + lambda Q`` for smoothing, ``D + lambda Q`` with ``D`` the
observation indicator for joint imputation, ``Q_mm`` for the conditional of the unobserved spots). Marginal
variances need only ``diag(A^{-1})``:

* **exact** (``method='exact'``): supernodal selected inversion of a Cholesky factor (Takahashi recurrences on
  dense blocks, :class:`smoother._core.selinv.SupernodalFactor`); ``O(n^{3/2})`` on a 2D graph, never a dense
  inverse (10^6 spots of a 2D graph: about 20 CPU seconds);
* **probing** (``method='probing'``): colour the graph so that spots of one colour are more than ``p`` edges apart,
  solve :math:`A x_c = v_c` for the indicator ``v_c`` of each colour, and read :math:`d_i \approx (x_{c(i)})_i`.
  The error is the sum of :math:`(A^{-1})_{ij}` over other spots ``j`` of ``i``'s colour, all at graph distance
  > ``p``; since :math:`A^{-1}` decays geometrically with graph distance, ``p`` is the smallest distance whose error
  at a random sample of spots, evaluated from their exact columns :math:`A^{-1} e_s` (one solve each), is below ``tol``;
  the error of the result is then *measured* at those spots and returned, so the estimate always comes with its
  error.

``method='auto'`` is exact up to ``exact_max`` spots and probing beyond. With the supernodal factor, exact costs no
more than probing at the sizes measured (CPU seconds, square lattice, lambda = 1, probing at 1e-2: 3.8 vs 8.3 at
250k spots, 34 vs 34 at 1M; probing pays the same factorization plus about 120 solves), and selected inversion
works in place, so it needs no more memory than probing's factor.
Probing is kept for a ``factor`` that can only solve (e.g. an iterative solver where no factor fits in memory). It
needs few solves when the prior is weak relative to the noise (``lambda`` <= 1: about 50 colours for 1e-2 relative
error on a square lattice) and many when it is strong (the inverse then decays slowly); exact selected inversion
has no such dependence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit

from .linalg import SPDFactor


@dataclass
class DiagResult:
    """``diag(A^{-1})`` and how it was obtained."""

    diag: np.ndarray  # (n,)
    method: str  # 'exact' or 'probing'
    max_rel_error: float  # 0 for exact; measured on `n_checked` sampled spots for probing
    mean_rel_error: float
    n_checked: int
    distance: int  # probing distance p (0 for exact)
    n_colors: int  # solves used by probing (0 for exact)
    seconds: float


@njit(cache=True)
def _greedy_colour(n, indptr, indices, order):
    """Smallest free colour per vertex, in ``order``, on the pattern (indptr, indices); returns colours."""
    colour = np.full(n, -1, dtype=np.int64)
    mark = np.full(n + 1, -1, dtype=np.int64)
    for v in order:
        for p in range(indptr[v], indptr[v + 1]):
            c = colour[indices[p]]
            if c >= 0:
                mark[c] = v
        c = 0
        while mark[c] == v:
            c += 1
        colour[v] = c
    return colour


@njit(cache=True)
def _distance_colour(n, indptr, indices, distance):
    """Greedy distance-``distance`` colouring: each vertex (in index order) takes the smallest colour not used
    within ``distance`` edges, found by a breadth-first search cut at that depth (no matrix powers)."""
    colour = np.full(n, -1, dtype=np.int64)
    seen = np.full(n, -1, dtype=np.int64)
    lev = np.zeros(n, dtype=np.int64)
    queue = np.empty(n, dtype=np.int64)
    mark = np.full(n + 1, -1, dtype=np.int64)
    for v in range(n):
        head = 0
        tail = 1
        queue[0] = v
        seen[v] = v
        lev[v] = 0
        while head < tail:
            u = queue[head]
            head += 1
            c = colour[u]
            if c >= 0:
                mark[c] = v
            if lev[u] < distance:
                for p in range(indptr[u], indptr[u + 1]):
                    w = indices[p]
                    if seen[w] != v:
                        seen[w] = v
                        lev[w] = lev[u] + 1
                        queue[tail] = w
                        tail += 1
        c = 0
        while mark[c] == v:
            c += 1
        colour[v] = c
    return colour


def distance_colouring(A: sp.spmatrix, distance: int) -> np.ndarray:
    """Colours such that two spots of one colour are more than ``distance`` edges apart in the pattern of ``A``.

    Greedy in index order; each spot's distance-``distance`` neighbourhood is visited by a truncated breadth-first
    search (cost: the sum of the neighbourhood sizes, about ``2 distance^2`` per spot on a 2D graph).
    """
    P = sp.csr_matrix(A, dtype=bool)
    P = (P + P.T).tocsr()
    P.setdiag(False)
    P.eliminate_zeros()
    n = P.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return _distance_colour(n, P.indptr.astype(np.int64), P.indices.astype(np.int64), int(distance))


def _probe(factor: SPDFactor, colour: np.ndarray, chunk: int = 32) -> np.ndarray:
    n = colour.shape[0]
    n_col = int(colour.max()) + 1
    d = np.empty(n)
    for start in range(0, n_col, chunk):
        stop = min(n_col, start + chunk)
        V = np.zeros((n, stop - start))
        sel = (colour >= start) & (colour < stop)
        V[np.flatnonzero(sel), colour[sel] - start] = 1.0
        X = factor.solve(V)
        d[sel] = X[np.flatnonzero(sel), colour[sel] - start]
    return d


def exact_columns_diag(factor: SPDFactor, idx: np.ndarray, chunk: int = 32) -> np.ndarray:
    """``(A^{-1})_{ii}`` for the spots ``idx``, by solving for unit vectors (reference values)."""
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], chunk):
        sub = idx[start : start + chunk]
        E = np.zeros((factor.n, sub.shape[0]))
        E[sub, np.arange(sub.shape[0])] = 1.0
        out[start : start + sub.shape[0]] = factor.solve(E)[sub, np.arange(sub.shape[0])]
    return out


def _probing_error(X: np.ndarray, idx: np.ndarray, colour: np.ndarray) -> np.ndarray:
    r"""Relative error that probing with ``colour`` makes at the spots ``idx``, from their exact columns ``X``.

    Probing returns :math:`\sum_{j: c(j) = c(s)} (A^{-1})_{js}` at spot ``s``; with the whole column known this is
    evaluated without any solve.
    """
    same = colour[:, None] == colour[idx][None, :]
    est = np.einsum("ij,ij->j", X, same)
    ref = X[idx, np.arange(idx.size)]
    return np.abs(est - ref) / np.abs(ref)


def inv_diag(
    A: sp.spmatrix,
    *,
    method: str = "auto",
    tol: float = 1e-3,
    exact_max: int = 10_000_000,
    n_check: int = 64,
    distances: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16),
    factor=None,
    seed: int = 0,
) -> DiagResult:
    r"""``diag(A^{-1})`` of a sparse SPD matrix ``A`` (``(n, n)``), exact or by probing with a measured error.

    Parameters
    ----------
    A
        Sparse symmetric positive definite matrix.
    method
        ``'exact'`` (supernodal selected inversion), ``'probing'`` or ``'auto'`` (exact up to ``exact_max``
        spots).
    tol
        Probing: the smallest colouring distance whose largest relative error on the sampled spots is below it
        (predicted from their exact columns, then measured on the probing result).
    n_check
        Probing: spots whose exact value is computed (one solve each) to choose the distance and measure the error.
    factor
        A factor of ``A`` to reuse: a :class:`~smoother._core.selinv.SupernodalFactor` that has not been inverted
        yet (both methods), or any object with ``solve`` (probing).

    Returns
    -------
    :class:`DiagResult`.
    """
    from .selinv import SupernodalFactor, inv_diag_exact

    t0 = time.perf_counter()
    A = sp.csr_matrix(A, dtype=np.float64)
    n = A.shape[0]
    if method not in ("auto", "exact", "probing"):
        raise ValueError(f"Expected `method` to be 'auto', 'exact' or 'probing', found {method!r}.")
    if n == 0:
        return DiagResult(np.empty(0), "exact", 0.0, 0.0, 0, 0, 0, 0.0)
    if method == "exact" or (method == "auto" and n <= exact_max):
        d = inv_diag_exact(A, factor=factor)
        return DiagResult(d, "exact", 0.0, 0.0, 0, 0, 0, time.perf_counter() - t0)
    if factor is None or (isinstance(factor, SupernodalFactor) and factor._inverted):
        factor = SupernodalFactor(A)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n_check, n), replace=False))
    colourings: dict[int, np.ndarray] = {}
    ref = np.empty(idx.size)
    k = 0  # index into distances: raised until the predicted error on every checked spot is below tol
    chunk = 32
    for start in range(0, idx.size, chunk):
        sub = idx[start : start + chunk]
        E = np.zeros((n, sub.size))
        E[sub, np.arange(sub.size)] = 1.0
        X = factor.solve(E)
        ref[start : start + sub.size] = X[sub, np.arange(sub.size)]
        while True:
            p = distances[k]
            if p not in colourings:
                colourings[p] = distance_colouring(A, p)
            if _probing_error(X, sub, colourings[p]).max() <= tol or k == len(distances) - 1:
                break
            k += 1
        del X, E
    p = distances[k]
    colour = colourings[p]
    d = _probe(factor, colour)
    rel = np.abs(d[idx] - ref) / np.abs(ref)
    err, mean_err = float(rel.max()), float(rel.mean())
    d[idx] = ref  # the checked spots are exact
    return DiagResult(
        d, "probing", err, mean_err, int(idx.size), int(p), int(colour.max()) + 1, time.perf_counter() - t0
    )


def centred_correction(factor: SPDFactor, n: int) -> np.ndarray:
    r"""Extra variance factor of an unpenalized intercept (``center=True``), ``(n,)``.

    With the mean :math:`\mu` free (flat prior) and :math:`\eta = f + \mu 1`, the posterior covariance is
    :math:`\sigma^2 [A^{-1} + (1 - u)(1 - u)^T / s]` with :math:`u = A^{-1} 1`, :math:`s = n - 1^T u`; the
    diagonal correction is :math:`(1 - u_i)^2 / s`. When the prior leaves constants unpenalized (:math:`Q 1 = 0`,
    e.g. ICAR at ``rho = 1``) :math:`u = 1` and the intercept adds nothing: the correction is 0.
    """
    u = factor.solve(np.ones(n))
    s = float(n - u.sum())
    if s <= 1e-10 * n:
        return np.zeros(n)
    return (1.0 - u) ** 2 / s


def residual_sigma2(rss: np.ndarray, n: int, trace: float) -> np.ndarray:
    r"""Noise variance per feature from a linear smoother's residuals: :math:`\mathrm{RSS}_g / (n - \mathrm{tr} H)`."""
    dof = max(n - trace, 1e-12)
    return np.asarray(rss, dtype=np.float64) / dof


# ----------------------------------------------------------------------------------------------------------------
# Laplace approximation for deconvolution: per-spot blocks coupled by the spatial prior
# ----------------------------------------------------------------------------------------------------------------
def laplace_block_cov(
    H: np.ndarray,
    Q: sp.spmatrix | None = None,
    lam: float = 0.0,
    active: np.ndarray | None = None,
) -> np.ndarray:
    r"""Per-spot ``K x K`` blocks of the inverse Hessian of a deconvolution objective, restricted to the active set.

    The Hessian of :math:`\sum_n f_n(z_n) + \lambda \sum_k z_{:k}^T Q z_{:k}` over the coefficients
    :math:`Z` (``n x K``, spot-major vector ``z[n * K + k]``) is the sparse matrix
    :math:`\mathcal{H} = \mathrm{blockdiag}(H_n) + 2\lambda\, Q \otimes I_K`. At a solution on the boundary of
    :math:`Z \ge 0` the Laplace approximation conditions on the active constraints: the covariance is the inverse
    of :math:`\mathcal{H}` restricted to the free coefficients (``active``), and zero for the others. Only the
    diagonal ``K x K`` blocks of that inverse are computed (selected inversion of an :math:`LDL^T` factor), never
    the ``nK x nK`` inverse.

    Parameters
    ----------
    H
        ``(n, K, K)`` Hessian blocks of the data term per spot (symmetric positive semi-definite).
    Q, lam
        The spatial precision ``(n, n)`` and its strength (``None`` or 0: spots are independent).
    active
        ``(n, K)`` boolean, the free coefficients (default: all).

    Returns
    -------
    ``(n, K, K)`` covariance blocks (rows/columns of inactive coefficients are 0).
    """
    H = np.asarray(H, dtype=np.float64)
    n, K, _ = H.shape
    active = np.ones((n, K), dtype=bool) if active is None else np.asarray(active, dtype=bool)
    rows = np.repeat(np.arange(n * K).reshape(n, K), K, axis=1).ravel()
    cols = np.tile(np.arange(n * K).reshape(n, K), (1, K)).ravel()
    Hs = sp.csr_matrix((H.reshape(n, K * K).ravel(), (rows, cols)), shape=(n * K, n * K))
    if Q is not None and lam > 0:
        Hs = Hs + 2.0 * lam * sp.kron(sp.csr_matrix(Q), sp.identity(K), format="csr")
    free = np.flatnonzero(active.ravel())
    out = np.zeros((n, K, K))
    if free.size == 0:
        return out
    Hf = Hs[free][:, free].tocsr()
    from .selinv import LDLFactor

    fac = LDLFactor(Hf)
    pos = np.full(n * K, -1, dtype=np.int64)
    pos[free] = np.arange(free.size)
    # for every free coefficient, the entries against the free coefficients of the same spot
    spot = free // K
    tgt_global = spot[:, None] * K + np.arange(K)[None, :]  # (n_free, K)
    tgt = pos[tgt_global]
    ok = tgt >= 0
    vals = fac.inv_entries(np.arange(free.size), np.where(ok, tgt, np.arange(free.size)[:, None]))
    vals[~ok] = 0.0
    out[spot, free % K, :] = vals
    return out


def proportion_se(coef: np.ndarray, cov: np.ndarray) -> np.ndarray:
    r"""Standard errors of proportions :math:`p = z / \sum_k z_k` by the delta method, ``(n, K)``.

    :math:`J = (I - p 1^T) / s` with :math:`s = \sum_k z_k`; :math:`\mathrm{Var}(p) = J \Sigma J^T`. Spots with
    :math:`s = 0` get NaN.
    """
    coef = np.clip(np.asarray(coef, dtype=np.float64), 0.0, None)
    n, K = coef.shape
    s = coef.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = coef / s[:, None]
        J = (np.eye(K)[None] - p[:, :, None] * np.ones((1, 1, K))) / s[:, None, None]
    V = np.einsum("nij,njk,nlk->nil", J, cov, J)
    se = np.sqrt(np.clip(np.einsum("nii->ni", V), 0.0, None))
    se[s <= 0] = np.nan
    return se


def sample_gmrf(Q: sp.spmatrix, n_samples: int = 1, *, seed: int = 0) -> np.ndarray:
    r"""Exact draws from :math:`N(0, Q^{-1})` for a sparse SPD precision ``Q``, shape ``(n, n_samples)``.

    With :math:`P Q P^T = L D L^T` (:class:`~smoother._core.selinv.LDLFactor`),
    :math:`x = P^T L^{-T} D^{-1/2} z`, :math:`z \sim N(0, I)`, has covariance :math:`Q^{-1}`; one sparse
    triangular solve per draw, nothing dense of size ``n x n``.
    """
    from scipy.sparse.linalg import spsolve_triangular

    from .selinv import LDLFactor

    fac = LDLFactor(sp.csr_matrix(Q, dtype=np.float64))
    n = fac.n
    L = sp.csc_matrix((fac.Lx, fac.Li, fac.Lp), shape=(n, n)) + sp.identity(n, format="csc")
    z = np.random.default_rng(seed).standard_normal((n, n_samples)) / np.sqrt(fac.D)[:, None]
    xp = spsolve_triangular(L.T.tocsr(), z, lower=False, unit_diagonal=True)
    x = np.empty_like(xp)
    x[fac.perm] = xp
    return x


def smooth_var_factor(op, lam: float, *, center: bool = False, method: str = "auto", seed: int = 0):
    r"""Posterior variance factor of exact smoothing and the trace of its hat matrix.

    For :math:`\hat X = S Y`, :math:`S = (I + \lambda Q)^{-1}`, the posterior of gene ``g`` is
    :math:`N(\hat x_g, \sigma_g^2 S)`: the factor is :math:`d = \mathrm{diag}(S)`. With ``center=True`` the
    gene's mean is estimated too (an unpenalized intercept); its uncertainty adds :func:`centred_correction`, and the
    hat matrix :math:`S + (I - S) 1 1^T / n` has trace :math:`\mathrm{tr}(S) + 1 - 1^T S 1 / n`. For ``'sma'``
    (:math:`Q = (B B^T)^{-1}`), :math:`S = I - \lambda (B B^T + \lambda I)^{-1}`, a sparse system as well.

    Parameters
    ----------
    op
        :class:`~smoother._core.smooth.PriorOperator`.
    lam
        The strength used by the fit.
    center, method, seed
        See above and :func:`inv_diag`.

    Returns
    -------
    ``(d, trace, info)``: ``(n,)`` factors, the hat matrix trace, and the :class:`DiagResult` of the diagonal.
    """
    from .selinv import SupernodalFactor

    n = op.n
    eye = sp.identity(n, format="csr")
    # one factorization serves the intercept's solve (done first: selected inversion overwrites the factor) and
    # the diagonal
    if op.Q is not None:
        A = (eye + lam * op.Q).tocsr()
        fac = SupernodalFactor(A) if n > 0 else None
        u = fac.solve(np.ones(n)) if center and n > 0 else np.ones(n)
        res = inv_diag(A, method=method, seed=seed, factor=fac)
        d = res.diag.copy()
    else:
        M = (op.B @ op.B.T + lam * eye).tocsr()
        fac = SupernodalFactor(M) if n > 0 else None
        u = (np.ones(n) - lam * fac.solve(np.ones(n))) if center and n > 0 else np.ones(n)
        res = inv_diag(M, method=method, seed=seed, factor=fac)
        d = 1.0 - lam * res.diag
    trace = float(d.sum())
    if center:
        s = float(n - u.sum())
        if s > 1e-10 * n:
            d = d + (1.0 - u) ** 2 / s
        trace = trace + 1.0 - float(u.sum()) / n
    return d, trace, res


def _null_dim(op, W: sp.spmatrix | None) -> int:
    """Dimension of the null space of ``Q`` (intrinsic priors at ``rho = 1``: one per connected component)."""
    if op.Q is None or op.rho < 1.0 or op.prior not in ("icar", "isar") or W is None:
        return 0
    from scipy.sparse.csgraph import connected_components

    return int(connected_components(sp.csr_matrix(W), directed=False)[0])


def marginal_loglik(Yc: np.ndarray, op, lam: float, *, null_dim: int = 0) -> float:
    r"""Profile log marginal likelihood of :math:`\lambda` (each gene's :math:`\sigma_g` maximized out).

    Model: :math:`y_g = x_g + \varepsilon_g`, :math:`x_g \sim N(0, \frac{\sigma_g^2}{\lambda} Q^{-1})`,
    :math:`\varepsilon_g \sim N(0, \sigma_g^2 I)`, so :math:`\mathrm{Cov}(y_g) = \sigma_g^2 (I + (\lambda Q)^{-1})`,
    whose inverse is :math:`\sigma_g^{-2}(I - S)` with :math:`S = (I + \lambda Q)^{-1}`. Up to constants,

    .. math::

        \ell(\lambda) = -\frac{n}{2}\sum_g \log \hat\sigma_g^2(\lambda)
        - \frac{G}{2}\left[\log\det(I + \lambda Q) - r \log \lambda\right],
        \qquad \hat\sigma_g^2 = y_g^T (y_g - S y_g) / n,

    with :math:`r` the rank of :math:`Q` (intrinsic priors: ``n`` minus the null dimension). ``Yc`` is ``(n, G)``
    (centred when the mean is estimated). For ``'sma'``, :math:`\log\det(I + \lambda Q) = \log\det(B B^T +
    \lambda I) - \log\det(B B^T)` (the last term does not depend on :math:`\lambda`).
    """
    from .linalg import superlu_symmetric

    n, g = Yc.shape
    eye = sp.identity(n, format="csc")
    if op.Q is not None:
        lu = superlu_symmetric((eye + lam * op.Q).tocsc())
        X = lu.solve(Yc)
    else:
        lu = superlu_symmetric((op.B @ op.B.T + lam * eye).tocsc())
        X = Yc - lam * lu.solve(Yc)
    diag_u = lu.U.diagonal()
    if not (diag_u > 0).all():
        return -np.inf
    logdet = float(np.log(diag_u).sum())
    q = np.einsum("ij,ij->j", Yc, Yc - X)
    q = np.maximum(q, 1e-300)
    r = n - null_dim
    return float(-0.5 * n * np.log(q / n).sum() - 0.5 * g * (logdet - r * np.log(lam)))


def ml_lambda(
    Y,
    op,
    *,
    center: bool = True,
    graph: sp.spmatrix | None = None,
    lo: float = 1e-3,
    hi: float = 1e3,
    n_grid: int = 9,
    n_refine: int = 10,
    max_genes: int = 500,
    seed: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""The :math:`\lambda` maximizing :func:`marginal_loglik` (empirical Bayes), and the evaluated grid.

    A log-spaced grid, then golden-section refinement in :math:`\log\lambda` around the best grid point. Up to
    ``max_genes`` random genes enter (their sum of log-likelihoods). Returns ``(lam, lambdas, loglik)``.
    """
    rng = np.random.default_rng(seed)
    n, g = Y.shape
    cols = np.sort(rng.choice(g, size=min(g, max_genes), replace=False))
    Ys = Y[:, cols]
    Ys = np.asarray(Ys.toarray() if sp.issparse(Ys) else Ys, dtype=np.float64)
    if center:
        Ys = Ys - Ys.mean(axis=0, keepdims=True)
    keep = np.einsum("ij,ij->j", Ys, Ys) > 0  # constant genes carry no information on lambda
    Ys = Ys[:, keep]
    null = _null_dim(op, graph)
    if Ys.shape[1] == 0:
        return 1.0, np.array([1.0]), np.array([0.0])
    return maximize_log_lambda(lambda lam: marginal_loglik(Ys, op, lam, null_dim=null), lo, hi, n_grid, n_refine)


def maximize_log_lambda(
    loglik, lo: float, hi: float, n_grid: int, n_refine: int
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""Maximize ``loglik(lam)`` over :math:`\lambda \in [lo, hi]`: a log-spaced grid of ``n_grid`` points, then
    ``n_refine`` golden-section steps in :math:`\log\lambda` around the best grid point (each value evaluated once).
    Returns ``(lam, lambdas, loglik)`` over every evaluated point, sorted."""
    evals: dict[float, float] = {}

    def f(log_lam: float) -> float:
        lam = float(np.exp(log_lam))
        if lam not in evals:
            evals[lam] = float(loglik(lam))
        return evals[lam]

    grid = np.linspace(np.log(lo), np.log(hi), n_grid)
    vals = np.array([f(x) for x in grid])
    i = int(np.argmax(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
    gr = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - gr * (b - a), a + gr * (b - a)
    for _ in range(n_refine):
        if f(c) >= f(d):
            b, d = d, c
            c = b - gr * (b - a)
        else:
            a, c = c, d
            d = a + gr * (b - a)
    lams = np.array(sorted(evals))
    ll = np.array([evals[x] for x in lams])
    return float(lams[int(np.argmax(ll))]), lams, ll


def count_fisher_blocks(
    S: np.ndarray,
    s: np.ndarray,
    r: np.ndarray,
    phi: np.ndarray | None,
    z: np.ndarray,
    *,
    chunk: int = 4096,
) -> np.ndarray:
    r"""Per-spot Fisher information of the count model's shares, ``(n, K, K)``.

    For :math:`\mu_{ng} = s_n r_g \sum_k S_{gk} z_{nk}` with variance :math:`v = \mu + \phi_g \mu^2` (Poisson:
    :math:`\phi = 0`), the expected information of :math:`z_n` is
    :math:`\sum_g (s_n r_g)^2 S_{g\cdot} S_{g\cdot}^T / v_{ng}` (``S`` restricted to the genes used).
    """
    S = np.asarray(S, dtype=np.float64)
    B = S * np.asarray(r, dtype=np.float64)[:, None]
    n, K = z.shape
    out = np.empty((n, K, K))
    ph = None if phi is None else np.asarray(phi, dtype=np.float64)[None, :]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sc = np.asarray(s[start:stop], dtype=np.float64)[:, None]
        mu = sc * (np.asarray(z[start:stop], dtype=np.float64) @ B.T)
        v = mu if ph is None else mu + ph * mu**2
        w = np.where(v > 0, sc**2 / np.maximum(v, 1e-300), 0.0)
        out[start:stop] = np.einsum("cg,gk,gl->ckl", w, B, B, optimize=True)
    return out
