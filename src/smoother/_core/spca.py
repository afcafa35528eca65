r"""Exact spatially aware PCA: the top eigenvectors of a feature x feature matrix.

With the expression matrix :math:`X` (``n_spots x n_features``, AnnData orientation), a spatial precision
matrix :math:`Q` (``n_spots x n_spots``) and a penalty :math:`\lambda \ge 0`, spatial PCA looks for orthonormal
loadings :math:`U` (``n_features x k``) that maximise the projected variance minus :math:`\lambda` times the
spatial loss of the projection :math:`H = X U`:

.. math::

    \max_{U^T U = I_k} \; \mathrm{tr}(U^T X^T X U) - \lambda\, \mathrm{tr}(U^T X^T Q X U)
    = \mathrm{tr}\big(U^T C U\big), \qquad C = X^T (I - \lambda Q) X .

This is the classic SpatialPCA objective (in the classic feature x spot orientation, the matrix is
:math:`X (I - \lambda Q) X^T`). By the Ky Fan theorem its maximum over orthonormal ``U`` is the sum of the
``k`` largest eigenvalues of the symmetric ``C``, reached by the corresponding eigenvectors — so the problem
is solved exactly, without gradient descent.

``zero_center=True`` replaces :math:`X` by :math:`X - \mathbf{1}\mu^T` (column means :math:`\mu`) as
``sc.pp.pca`` does; for sparse ``X`` the centring is applied implicitly (``X`` is never densified whole).

Two solvers:

* ``'dense'``: form ``C`` (``n_features x n_features``) and take its top eigenpairs (LAPACK ``eigh`` with
  ``subset_by_index`` up to :data:`LAPACK_MAX_FEATURES` features, else Lanczos on the dense ``C`` when ``k`` is
  much smaller than ``n_features``). ``C`` is built exactly either from dense row chunks of ``X`` (one BLAS
  product per chunk) or, for sparse ``X``, by scatter-adding :math:`M_{ij} x_i x_j^T` over the non-zeros of
  :math:`M = I - \lambda Q` and of the rows of ``X`` (numba kernel, float64); see :func:`spatial_gram`.
  Never an ``n_spots x n_spots`` matrix, never ``X`` densified whole.
* ``'arpack'`` / ``'lobpcg'``: never form ``C``; apply it implicitly,
  :math:`v \mapsto X^T (u - \lambda Q u)` with :math:`u = X v`, in a Lanczos (ARPACK ``eigsh``) or LOBPCG
  eigensolver. Use it when ``n_features`` is so large that a dense ``C`` does not fit.

``Q`` may also be a :class:`~scipy.sparse.linalg.LinearOperator` (the SMA prior's dense precision
:math:`(B B^T)^{-1}` applied through the sparse factor ``B``, :func:`sma_precision`); ``C`` is then built from
column chunks of ``X``.

Nothing is refused: the top ``k`` eigenvectors are the exact maximiser for every :math:`\lambda`, also when some of
the ``k`` largest eigenvalues (the per-component objectives) are negative; the result lists those components.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, eigsh, lobpcg

#: Above this many features the 'auto' solver does not form the dense feature x feature matrix.
DENSE_MAX_FEATURES = 6000
#: Up to this many features the top eigenpairs of the dense matrix come from LAPACK (``eigh`` with a subset).
LAPACK_MAX_FEATURES = 3000
#: Target memory (bytes) of the dense float64 row chunks used to build ``C``.
CHUNK_BYTES = 256 * 2**20

SOLVERS = ("auto", "dense", "arpack", "lobpcg")


@dataclass
class SpatialPCAResult:
    """Result of :func:`spatial_pca`.

    Attributes
    ----------
    loadings
        ``(n_features, n_comps)`` orthonormal loadings :math:`U`, columns ordered by decreasing objective.
    scores
        ``(n_spots, n_comps)`` projections :math:`H = (X - \\mathbf{1}\\mu^T) U` (or :math:`X U`).
    objective
        ``(n_comps,)`` per-component objective :math:`u_k^T C u_k = v_k - \\lambda s_k` (the eigenvalues).
    variance
        ``(n_comps,)`` :math:`v_k = \\lVert h_k \\rVert^2`, the projected sum of squares.
    spatial_loss
        ``(n_comps,)`` :math:`s_k = h_k^T Q h_k`.
    mean
        ``(n_features,)`` column means that were subtracted, or ``None`` when not centred.
    solver
        The eigensolver that was used.
    """

    loadings: np.ndarray
    scores: np.ndarray
    objective: np.ndarray
    variance: np.ndarray
    spatial_loss: np.ndarray
    mean: np.ndarray | None
    solver: str
    info: dict = field(default_factory=dict)


def _as_matrix(X):
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        msg = f"Expected a 2D data matrix (n_spots, n_features), found {X.ndim} dimensions."
        raise ValueError(msg)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    return X


def _chunk_rows(n_rows: int, n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, int(chunk_size))
    return max(1, min(n_rows, CHUNK_BYTES // (8 * max(n_cols, 1) * 2)))


def _dense_rows(M) -> np.ndarray:
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float64)


def _apply_Q(Q, U):
    """``Q @ U`` for sparse or dense ``Q`` and dense ``U`` (returns a dense float64 array)."""
    out = Q @ U
    return np.asarray(out, dtype=np.float64)


def column_means(X) -> np.ndarray:
    """Column means of a dense or sparse matrix as a float64 vector."""
    n = max(X.shape[0], 1)
    if sp.issparse(X):  # X^T 1 upcasts to float64 (scipy's own sum accumulates float32 data in float32)
        return np.asarray(X.T @ np.ones(X.shape[0]), dtype=np.float64).ravel() / n
    return np.asarray(X.sum(axis=0, dtype=np.float64), dtype=np.float64).ravel() / n


#: The sparse path is used when its estimated scatter-add count times this factor is below the dense flop count
#: (one scattered multiply-add costs about as much as this many BLAS multiply-adds; measured ~11).
SPARSE_COST_FACTOR = 10.0
#: Bytes of the rows of ``C`` that one tile of the sparse kernel updates (sized for a 1-2 MiB L2 cache).
SPARSE_BLOCK_BYTES = 2**20

GRAM_PATHS = ("auto", "dense", "sparse")


def _xtmx_upper(m_indptr, m_indices, m_data, x_indptr, x_indices, x_data, block, out):  # pragma: no cover
    """Numba kernel: ``out += sum_{i<=j} w_ij x_i x_j^T`` with ``w_ii = M_ii / 2``, ``w_ij = M_ij`` (``i < j``).

    ``M`` (CSR, symmetric) and ``X`` (CSR, sorted column indices) are given by their arrays, so that
    ``out + out^T`` equals ``X^T M X``. The rows of ``out`` are tiled in blocks of ``block`` features (one
    block's rows stay in the L2 cache while every pair ``(i, j)`` scatters into them); blocks run in parallel
    and write disjoint rows. Accumulates in float64.
    """
    n = x_indptr.shape[0] - 1
    g = out.shape[0]
    n_blocks = (g + block - 1) // block
    for blk in _prange(n_blocks):
        a0 = blk * block
        a1 = min(g, a0 + block)
        for i in range(n):
            # the entries of x_i with column in [a0, a1): binary searches in the sorted row
            lo = x_indptr[i]
            hi = x_indptr[i + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if x_indices[mid] < a0:
                    lo = mid + 1
                else:
                    hi = mid
            s0 = lo
            hi = x_indptr[i + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if x_indices[mid] < a1:
                    lo = mid + 1
                else:
                    hi = mid
            s1 = lo
            if s0 == s1:
                continue
            for p in range(m_indptr[i], m_indptr[i + 1]):
                j = m_indices[p]
                if j < i:
                    continue
                w = np.float64(m_data[p])
                if j == i:
                    w *= 0.5
                xj0 = x_indptr[j]
                xj1 = x_indptr[j + 1]
                for a in range(s0, s1):
                    va = w * np.float64(x_data[a])
                    row = out[x_indices[a]]
                    for b in range(xj0, xj1):
                        row[x_indices[b]] += va * np.float64(x_data[b])


_prange = range
_XTMX: object = None


def _xtmx_kernel():
    """Compile :func:`_xtmx_upper` with numba on first use (``None`` when numba is unavailable)."""
    global _XTMX, _prange
    if _XTMX is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _XTMX = False
            return None
        _prange = numba.prange
        kern = None
        for cache in (True, False):  # an unwritable cache location must not break the computation
            try:
                kern = numba.njit(cache=cache, nogil=True, parallel=True)(_xtmx_upper)
                ip = np.array([0, 1], dtype=np.int64)
                kern(ip, ip[:1], np.ones(1), ip, ip[:1], np.ones(1), 1, np.zeros((1, 1)))
                break
            except Exception:  # noqa: BLE001  (numba raises various errors when it cannot cache)
                kern = None
        _XTMX = kern if kern is not None else False
    return _XTMX or None


def _sym_operator(Q, lambda_spatial: float, n: int) -> sp.csr_matrix:
    """``M = sym(I - lambda Q)`` as CSR float64 (exactly symmetric)."""
    Qs = sp.csr_matrix(Q, dtype=np.float64)
    M = sp.identity(n, dtype=np.float64, format="csr") - lambda_spatial * Qs
    M = (0.5 * (M + M.T)).tocsr()
    M.sum_duplicates()
    return M


def _sparse_cost(X: sp.csr_matrix, M: sp.csr_matrix) -> float:
    """Scatter-add count of the sparse path: ``sum_{ij in M, i<=j} nnz(x_i) nnz(x_j)``."""
    k = np.diff(X.indptr).astype(np.float64)
    P = sp.triu(M, format="csr")
    P.data = np.ones_like(P.data)
    return float(k @ (P @ k))


def _choose_gram_path(X, Q, lambda_spatial: float, path: str):
    if path not in GRAM_PATHS:
        msg = f"Unknown gram path `{path!r}`: expected one of {list(GRAM_PATHS)}."
        raise ValueError(msg)
    if path == "dense" or not sp.issparse(X) or _xtmx_kernel() is None:
        if path == "sparse" and not sp.issparse(X):
            msg = "`path='sparse'` needs a scipy sparse X; pass path='dense' or 'auto'."
            raise ValueError(msg)
        return "dense", None
    if path == "auto" and not sp.issparse(Q) and lambda_spatial != 0.0:
        return "dense", None
    n, g = X.shape
    M = _sym_operator(Q if lambda_spatial != 0.0 else sp.csr_matrix((n, n)), lambda_spatial, n)
    if path == "auto" and SPARSE_COST_FACTOR * _sparse_cost(X, M) >= float(n) * g * g:
        return "dense", None
    return "sparse", M


def _sparse_gram(X: sp.csr_matrix, M: sp.csr_matrix) -> np.ndarray:
    """``X^T M X`` for sparse ``X`` and sparse symmetric ``M`` by the numba scatter kernel (float64)."""
    kern = _xtmx_kernel()
    g = X.shape[1]
    X = sp.csr_matrix(X)  # duplicates are fine (the kernel only adds); the binary searches need sorted rows
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    block = int(max(8, min(g, SPARSE_BLOCK_BYTES // (8 * max(g, 1)))))
    T = np.zeros((g, g), dtype=np.float64)
    kern(
        M.indptr.astype(np.int64),
        M.indices.astype(np.int64),
        M.data,
        X.indptr.astype(np.int64),
        X.indices.astype(np.int64),
        X.data,
        block,
        T,
    )
    T += T.T
    return T


def spatial_gram(
    X,
    Q,
    lambda_spatial: float,
    *,
    zero_center: bool = True,
    chunk_size: int | None = None,
    path: str = "auto",
):
    r"""The dense ``n_features x n_features`` matrix :math:`C = X_c^T (I - \lambda Q) X_c`.

    Exact ways to build it (``path``):

    * ``'dense'``: row chunks; for the rows ``r`` of a chunk, ``C += X[r]^T (X[r] - lambda (Q X)[r])``, so only
      ``chunk x n_features`` blocks are dense at any time (BLAS products).
    * ``'sparse'`` (scipy sparse ``X`` and ``Q``): with :math:`M = I - \lambda Q` (symmetrised),
      :math:`C = \sum_{ij} M_{ij}\, x_i x_j^T` over the non-zeros of :math:`M` and of the rows
      :math:`x_i, x_j`, scatter-added into a dense float64 ``C`` by a parallel numba kernel (tiled over blocks of
      rows of ``C``; ``X`` is never densified, nothing of size ``n_spots x n_features`` is dense). It costs
      :math:`\sum_{i \le j,\, M_{ij} \ne 0} \mathrm{nnz}(x_i)\,\mathrm{nnz}(x_j)` instead of
      :math:`n\,G^2`.
    * ``'auto'``: ``'sparse'`` when ``X`` is sparse and that count (times :data:`SPARSE_COST_FACTOR`) is below
      :math:`n G^2`, else ``'dense'``.

    With ``zero_center`` the exact centring correction for :math:`X_c = X - \mathbf{1}\mu^T` is added,

    .. math::

        X_c^T M X_c = X^T M X - b\mu^T - \mu b^T + c\,\mu\mu^T, \qquad
        b = X^T M \mathbf{1},\; c = \mathbf{1}^T M \mathbf{1},

    so sparse ``X`` stays sparse.

    Returns
    -------
    C
        ``(n_features, n_features)`` symmetric float64 array.
    mean
        ``(n_features,)`` column means, or ``None`` when ``zero_center=False``.
    """
    X = _as_matrix(X)
    n, g = X.shape
    used, M = _choose_gram_path(X, Q, lambda_spatial, path)
    if used == "sparse":
        C = _sparse_gram(X, M)
        r = np.asarray(M.sum(axis=1), dtype=np.float64).ravel()
    else:
        C = _dense_gram(X, Q, lambda_spatial, chunk_size)
        ones = np.ones(n)
        if lambda_spatial != 0.0 and isinstance(Q, LinearOperator):  # symmetric by construction
            r = ones - lambda_spatial * np.asarray(Q @ ones, dtype=np.float64).ravel()
        elif lambda_spatial != 0.0:
            Qs = Q if sp.issparse(Q) else np.asarray(Q)
            r = ones - 0.5 * lambda_spatial * (_apply_Q(Qs, ones) + np.asarray(Qs.T @ ones, dtype=np.float64))
        else:
            r = ones
    mean = None
    if zero_center:
        mean = column_means(X)
        b = np.asarray(X.T @ r, dtype=np.float64).ravel()
        c = float(r.sum())
        C -= np.outer(b, mean) + np.outer(mean, b)
        C += c * np.outer(mean, mean)
    return C, mean


def _dense_gram(X, Q, lambda_spatial: float, chunk_size: int | None) -> np.ndarray:
    """``sym(X^T (I - lambda Q) X)`` from dense row chunks (float64 BLAS products).

    When ``Q`` is a :class:`~scipy.sparse.linalg.LinearOperator` (e.g. :func:`sma_precision`), its rows are not
    available: ``C`` is built from column chunks instead, ``C[:, c] = X^T (X[:, c] - lambda Q X[:, c])``.
    """
    n, g = X.shape
    if lambda_spatial != 0.0 and isinstance(Q, LinearOperator):
        return _operator_gram(X, Q, lambda_spatial, chunk_size)
    step = _chunk_rows(n, g, chunk_size)
    C = np.zeros((g, g), dtype=np.float64)
    Qcsr = sp.csr_matrix(Q) if sp.issparse(Q) else np.asarray(Q)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        Xr = _dense_rows(X[rows])
        if lambda_spatial != 0.0:
            Mr = Xr - lambda_spatial * _dense_rows(Qcsr[rows] @ X)
            C += Xr.T @ Mr
        else:
            C += Xr.T @ Xr
    return 0.5 * (C + C.T)


def _operator_gram(X, Q: LinearOperator, lambda_spatial: float, chunk_size: int | None) -> np.ndarray:
    n, g = X.shape
    step = _chunk_rows(g, n, chunk_size)  # n x step dense blocks
    C = np.zeros((g, g), dtype=np.float64)
    for start in range(0, g, step):
        cols = slice(start, min(g, start + step))
        Xc = _dense_rows(X[:, cols])
        C[:, cols] = np.asarray(X.T @ (Xc - lambda_spatial * _apply_Q(Q, Xc)), dtype=np.float64)
    return 0.5 * (C + C.T)


def sma_precision(B) -> LinearOperator:
    r"""The SMA precision :math:`Q = (B B^T)^{-1}` as a symmetric ``LinearOperator`` (``B`` sparse, never inverted).

    One sparse LU factorization of ``B``; each product is two triangular solves, :math:`Q u = B^{-T} (B^{-1} u)`.
    """
    from scipy.sparse.linalg import splu

    n = B.shape[0]
    lu = splu(sp.csc_matrix(B, dtype=np.float64))

    def matmat(U):
        U = np.asarray(U, dtype=np.float64)
        return lu.solve(lu.solve(U), trans="T")

    return LinearOperator((n, n), matvec=matmat, matmat=matmat, rmatvec=matmat, rmatmat=matmat, dtype=np.float64)


def spatial_operator(X, Q, lambda_spatial: float, *, mean: np.ndarray | None = None) -> LinearOperator:
    r"""The matrix :math:`C = X_c^T (I - \lambda Q) X_c` as an implicit ``LinearOperator``.

    Each product costs two passes over ``X`` and one over ``Q``; ``X`` is never densified and no
    ``n_features x n_features`` or ``n_spots x n_spots`` matrix is formed. ``mean`` (when given) centres the
    columns implicitly: :math:`X_c v = X v - \mathbf{1}(\mu^T v)`, :math:`X_c^T w = X^T w - \mu (\mathbf{1}^T w)`.
    """
    X = _as_matrix(X)
    g = X.shape[1]

    def matmat(V):
        V = np.asarray(V, dtype=np.float64)
        one_d = V.ndim == 1
        if one_d:
            V = V[:, None]
        U = np.asarray(X @ V, dtype=np.float64)
        if mean is not None:
            U -= mean @ V
        W = U - lambda_spatial * _apply_Q(Q, U) if lambda_spatial != 0.0 else U
        out = np.asarray(X.T @ W, dtype=np.float64)
        if mean is not None:
            out -= np.outer(mean, W.sum(axis=0))
        return out[:, 0] if one_d else out

    return LinearOperator((g, g), matvec=matmat, matmat=matmat, rmatvec=matmat, dtype=np.float64)


def _flip_signs(U: np.ndarray) -> np.ndarray:
    """Deterministic signs: the entry of largest magnitude in each column is positive."""
    idx = np.argmax(np.abs(U), axis=0)
    s = np.sign(U[idx, np.arange(U.shape[1])])
    s[s == 0] = 1.0
    return U * s


def _pick_solver(solver: str, g: int) -> str:
    if solver not in SOLVERS:
        msg = f"Unknown solver `{solver!r}`: expected one of {list(SOLVERS)}."
        raise ValueError(msg)
    if solver == "auto":
        return "dense" if g <= DENSE_MAX_FEATURES else "arpack"
    return solver


def _top_eigs_dense(C: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    g = C.shape[0]
    if k <= g // 20 and g > LAPACK_MAX_FEATURES:
        # Lanczos on the dense matrix: cheaper than a full tridiagonalisation when k << g and g is large
        # (below that, LAPACK's blocked tridiagonalisation wins: Lanczos needs hundreds of memory-bound
        # matrix-vector products when the spectrum is flat)
        v0 = np.ones(g) / np.sqrt(g)
        w, V = eigsh(C, k=k, which="LA", v0=v0, tol=0)
    else:
        w, V = sla.eigh(C, subset_by_index=[g - k, g - 1], driver="evr")
    order = np.argsort(w)[::-1]
    return w[order], V[:, order]


def _top_eigs_implicit(
    op: LinearOperator, k: int, solver: str, tol: float, random_state
) -> tuple[np.ndarray, np.ndarray]:
    g = op.shape[0]
    rng = np.random.default_rng(random_state)
    if solver == "arpack":
        v0 = rng.standard_normal(g)
        w, V = eigsh(op, k=k, which="LA", v0=v0, tol=tol)
    else:
        X0 = rng.standard_normal((g, k))
        w, V = lobpcg(op, X0, largest=True, tol=tol if tol > 0 else None, maxiter=max(200, 20 * k))
    order = np.argsort(w)[::-1]
    return w[order], V[:, order]


def _scores(X, U: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    H = np.asarray(X @ U, dtype=np.float64)
    if mean is not None:
        H -= mean @ U
    return H


def lambda_upper_bound(X, Q, n_comps: int, *, zero_center: bool = True, chunk_size: int | None = None) -> float:
    r"""Largest ``lambda`` for which :math:`X_c^T (I - \lambda Q) X_c` still has ``n_comps`` positive eigenvalues.

    With :math:`A = X_c^T X_c` and :math:`B = X_c^T Q X_c` (``Q`` positive semi-definite) the number of positive
    eigenvalues of :math:`A - \lambda B` is the number of generalized eigenvalues :math:`\mu` of
    :math:`B v = \mu A v` below :math:`1/\lambda` (Sylvester's law of inertia), so the bound is
    :math:`1/\mu_{(k)}` with the ``k``-th smallest :math:`\mu`. Needs dense ``n_features x n_features`` matrices.
    Returns ``inf`` when every ``lambda`` works.
    """
    A, _ = spatial_gram(X, Q, 0.0, zero_center=zero_center, chunk_size=chunk_size)
    AmB, _ = spatial_gram(X, Q, 1.0, zero_center=zero_center, chunk_size=chunk_size)
    B = A - AmB
    B = 0.5 * (B + B.T)
    g = A.shape[0]
    jitter = 1e-12 * max(np.trace(A) / g, 1e-300)
    try:
        mu = sla.eigh(B, A + jitter * np.eye(g), eigvals_only=True)
    except np.linalg.LinAlgError:
        return float("nan")
    mu = np.sort(mu)
    if n_comps > g:
        return 0.0
    mk = mu[n_comps - 1]
    return float("inf") if mk <= 0 else float(1.0 / mk)


def spatial_pca(
    X,
    Q,
    n_comps: int = 20,
    lambda_spatial: float = 1.0,
    *,
    zero_center: bool = True,
    solver: str = "auto",
    chunk_size: int | None = None,
    tol: float = 0.0,
    random_state: int | None = 0,
) -> SpatialPCAResult:
    r"""Exact spatial PCA: top eigenvectors of :math:`C = X_c^T (I - \lambda Q) X_c`.

    Parameters
    ----------
    X
        ``(n_spots, n_features)`` dense array or scipy sparse matrix (never densified whole).
    Q
        ``(n_spots, n_spots)`` symmetric positive semi-definite spatial precision (scipy sparse or dense).
    n_comps
        Number of components ``k`` (``1 <= k < n_features``).
    lambda_spatial
        Strength :math:`\lambda \ge 0` of the spatial penalty; ``0`` gives ordinary PCA.
    zero_center
        Subtract column means first (implicitly for sparse ``X``), as ``sc.pp.pca`` does.
    solver
        ``'auto'`` (``'dense'`` up to :data:`DENSE_MAX_FEATURES` features, else ``'arpack'``), ``'dense'``,
        ``'arpack'`` or ``'lobpcg'`` (see the module docstring).
    chunk_size
        Rows per chunk when building ``C`` (default: about 256 MiB per dense chunk).
    tol
        Eigensolver tolerance of the implicit solvers (``0``: machine precision for ARPACK).
    random_state
        Seed of the starting vectors of the implicit solvers.

    Returns
    -------
    SpatialPCAResult
        Loadings ``(n_features, k)``, scores ``(n_spots, k)`` and the per-component objective, projected
        sum of squares and spatial loss, with :math:`\text{objective}_k = \text{variance}_k - \lambda\,
        \text{spatial\_loss}_k`.

    Notes
    -----
    The top ``k`` eigenvectors maximise :math:`\mathrm{tr}(U^T C U)` over orthonormal ``U`` for every
    :math:`\lambda`, also when :math:`C` is indefinite and some of the ``k`` largest eigenvalues are negative
    (a large :math:`\lambda` or a rough component): nothing is refused. ``info['negative']`` lists the
    (0-based) components whose objective is negative; callers report them.
    """
    X = _as_matrix(X)
    n, g = X.shape
    if not isinstance(n_comps, (int, np.integer)) or isinstance(n_comps, bool) or n_comps < 1:
        msg = f"Expected `n_comps` to be a positive integer, found `{n_comps!r}`."
        raise ValueError(msg)
    if n_comps >= g:
        msg = f"`n_comps` ({n_comps}) must be smaller than the number of features ({g}); use n_comps <= {g - 1}."
        raise ValueError(msg)
    if Q.shape != (n, n):
        msg = f"The precision has shape {Q.shape} but the data have {n} spots."
        raise ValueError(msg)
    lam = float(lambda_spatial)
    if not np.isfinite(lam) or lam < 0:
        msg = f"Expected `lambda_spatial` to be a finite number >= 0, found `{lambda_spatial!r}`."
        raise ValueError(msg)
    used = _pick_solver(solver, g)
    if used == "dense":
        C, mean = spatial_gram(X, Q, lam, zero_center=zero_center, chunk_size=chunk_size)
        w, U = _top_eigs_dense(C, int(n_comps))
    else:
        mean = column_means(X) if zero_center else None
        op = spatial_operator(X, Q, lam, mean=mean)
        w, U = _top_eigs_implicit(op, int(n_comps), used, tol, random_state)
        U, _ = np.linalg.qr(U)  # LOBPCG returns B-orthonormal up to round-off; make it exact
    U = _flip_signs(U)
    H = _scores(X, U, mean)
    variance = np.einsum("ij,ij->j", H, H)
    spatial = np.einsum("ij,ij->j", H, _apply_Q(Q, H))
    objective = variance - lam * spatial
    scale = max(float(np.abs(w).max()), 1e-300)
    negative = np.flatnonzero(w < -1e-10 * scale)
    return SpatialPCAResult(
        loadings=U,
        scores=H,
        objective=objective,
        variance=variance,
        spatial_loss=spatial,
        mean=mean,
        solver=used,
        info={"eigenvalues": w, "negative": negative},
    )


#: Target bytes of one dense row chunk of a dask ``X`` (float64) in :func:`spatial_pca_dask`; larger dense chunks are
#: split into smaller row blocks (sparse chunks are kept: their memory follows their non-zeros).
DASK_DENSE_CHUNK_BYTES = 64 * 2**20


def prepare_dask_rows(X, *, dense_chunk_bytes: int = DASK_DENSE_CHUNK_BYTES):
    """``X`` (a dask array) with all columns in one chunk and dense row chunks of at most ``dense_chunk_bytes``.

    Returns the (possibly rechunked) array and a list of what was changed (for the log); nothing is computed.
    """
    notes = []
    n, g = X.shape
    if len(X.chunks[1]) != 1:
        notes.append(f"{len(X.chunks[1])} column chunks -> 1 (every gene of a spot block in one task)")
        X = X.rechunk({1: g})
    if not sp.issparse(X._meta):
        rows = max(1, int(dense_chunk_bytes // (8 * max(g, 1))))
        if max(X.chunks[0], default=0) > rows:
            notes.append(f"dense row chunks of up to {max(X.chunks[0])} spots -> {rows} (memory per task)")
            X = X.rechunk({0: rows})
    return X, notes


def _project_block(Xb, U, shift, dtype):
    H = np.asarray(Xb @ U, dtype=np.float64)
    if shift is not None:
        H -= shift[None, :]
    return H.astype(dtype, copy=False)


def spatial_pca_dask(
    X,
    Q,
    n_comps: int = 20,
    lambda_spatial: float = 1.0,
    *,
    zero_center: bool = True,
    dtype=np.float64,
) -> SpatialPCAResult:
    r"""Exact spatial PCA of a dask ``X`` (``n_spots x n_features``, dense or scipy-sparse chunks), out of core.

    The same maximiser as :func:`spatial_pca` (top eigenvectors of :math:`C = X_c^T (I - \lambda Q) X_c`), from
    one map-reduce pass over the spot blocks (:func:`smoother._core.blockwise.spatial_stats`: :math:`X^T X`,
    :math:`X^T Q X`, :math:`X^T 1`, :math:`X^T Q 1`; ``Q`` symmetrised, centring applied exactly afterwards); the
    ``n_features x n_features`` eigenproblem is solved in memory. The variance and spatial loss of each component
    come from the same statistics (:math:`u^T X_c^T X_c u`, :math:`u^T X_c^T Q X_c u`), so the scores are not
    computed: ``scores`` is a lazy dask array ``(n_spots, n_comps)`` of ``dtype`` chunked like ``X``'s rows.
    ``Q`` must be a scipy sparse matrix (an operator such as the SMA precision has no row blocks).
    ``info['total_ss']`` is the centred total sum of squares.
    """
    from .blockwise import spatial_stats

    if not sp.issparse(Q):
        msg = "On dask input the precision must be a scipy sparse matrix (the SMA prior is an operator)."
        raise TypeError(msg)
    n, g = X.shape
    Qs = sp.csr_matrix(Q, dtype=np.float64)
    Qs = (0.5 * (Qs + Qs.T)).tocsr()  # the in-memory path's symmetrisation
    st = spatial_stats(X, Qs)
    A, B = st["xtx"], st["xtqx"]
    A = 0.5 * (A + A.T)
    B = 0.5 * (B + B.T)
    mean = None
    if zero_center:
        mean = st["colsum"] / max(n, 1)
        b = st["xtq1"]
        A = A - n * np.outer(mean, mean)
        B = B - np.outer(b, mean) - np.outer(mean, b) + st["q1sum"] * np.outer(mean, mean)
    lam = float(lambda_spatial)
    C = A - lam * B if lam != 0.0 else A
    if not (np.isfinite(C).all() and np.isfinite(st["colsum"]).all()):
        msg = "The data contain NaN or inf values"
        raise FloatingPointError(msg)
    w, U = _top_eigs_dense(C, int(n_comps))
    U = _flip_signs(U)
    variance = np.einsum("ij,ij->j", U, A @ U)
    spatial = np.einsum("ij,ij->j", U, B @ U)
    objective = variance - lam * spatial
    shift = None if mean is None else mean @ U
    H = X.map_blocks(
        _project_block,
        U,
        shift,
        np.dtype(dtype),
        dtype=np.dtype(dtype),
        chunks=(X.chunks[0], (int(n_comps),)),
        meta=np.empty((0, 0), dtype=np.dtype(dtype)),
    )
    scale = max(float(np.abs(w).max()), 1e-300)
    return SpatialPCAResult(
        loadings=U,
        scores=H,
        objective=objective,
        variance=variance,
        spatial_loss=spatial,
        mean=mean,
        solver="dense",
        info={"eigenvalues": w, "negative": np.flatnonzero(w < -1e-10 * scale), "total_ss": float(np.trace(A))},
    )
