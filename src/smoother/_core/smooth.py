r"""Exact spatial smoothing and imputation with a Gaussian random field prior: arrays in, arrays out.

The problems
------------
For a data matrix :math:`Y` (``n_spots x n_genes``), observation weights :math:`d \in \{0, 1\}^n` (or any
non-negative weights; :math:`D = \mathrm{diag}(d)`), a precision matrix :math:`Q` and a strength
:math:`\lambda \ge 0`, every gene (column) is solved at once by

.. math::

    \hat X = \arg\min_X \; \lVert D^{1/2} (Y - X) \rVert_F^2 + \lambda \, \mathrm{tr}(X^T Q X)
    \quad\Longleftrightarrow\quad (D + \lambda Q)\, \hat X = D Y .

``d = 1`` everywhere is denoising (``(I + lambda Q) X = Y``); ``d`` = observed-spot indicator is joint
denoising and imputation of unobserved spots. With the observations held fixed, imputation is the Gaussian
conditional mean :math:`Q_{mm} X_m = -Q_{mo} Y_o` (:func:`conditional_mean`).

How it is solved
----------------
One sparse Cholesky factorization (CHOLMOD through cholespy, see :mod:`smoother._core.linalg`) of
:math:`D + \lambda Q`, reused for all genes, which are solved in chunks (a sparse ``Y`` is densified one chunk
at a time). Measured on this project's 2-core machine (100k-spot grid, ICAR): factorization 0.5 s, then about
4 ms per gene (flat for chunks of 16 to 256 genes), so 2,000 genes take under 10 s; conjugate gradients would
need tens of matrix products per gene instead. The SMA prior has a dense precision :math:`Q = (B B^T)^{-1}` with sparse
:math:`B = I + \rho W`; it is never formed: substituting :math:`X = B Z` gives the sparse SPD system

.. math::

    (B^T D B + \lambda I) Z = B^T D Y, \qquad X = B Z,

which is equivalent because :math:`B` is non-singular. (Standardized SMA is :math:`B \leftarrow S^{-1/2} B` with
:math:`S = \mathrm{diag}(B B^T)`.)

Choosing :math:`\lambda`
------------------------
The smoother is linear, :math:`\hat X = S_\lambda Y` with :math:`S_\lambda = (D + \lambda Q)^{-1} D`, so
generalized cross-validation applies (Craven & Wahba, 1979):

.. math::

    \mathrm{GCV}(\lambda) = \frac{\lVert D^{1/2}(Y - \hat X)\rVert_F^2 / (n_o G)}{(1 - \mathrm{tr}(S_\lambda) / n_o)^2}

with :math:`n_o = \sum_i d_i`. By default (:func:`gcv` with ``criterion='risk'``) GCV only calibrates the
noise variance, and :math:`\lambda` minimizes the unbiased risk estimate (Mallows' :math:`C_p`), which does not
under-smooth as GCV does when the effective degrees of freedom are large. :math:`\mathrm{tr}(S_\lambda)` is exact for
small problems (unit-vector solves)
and a Hutchinson estimate :math:`\frac1p \sum_k z_k^T S_\lambda z_k` (Rademacher probes supported on observed
spots, the same probes for every :math:`\lambda`) from the same factorization otherwise.

Centring (each gene's level is not shrunk)
------------------------------------------
A prior with mean zero shrinks every gene towards 0, its level as well as its spatial variation, unless
:math:`Q \mathbf 1 = 0` (ICAR at :math:`\rho = 1`, the graph Laplacian). With ``center=True`` the prior is centred
at each gene's (weighted) mean over the observed spots, :math:`m = Y^T d / \sum_i d_i`:

.. math::

    \hat X = \arg\min_X \; \lVert D^{1/2} (Y - X) \rVert_F^2
    + \lambda \, \mathrm{tr}\big((X - \mathbf 1 m^T)^T Q (X - \mathbf 1 m^T)\big)
    = \mathbf 1 m^T + (D + \lambda Q)^{-1} D (Y - \mathbf 1 m^T),

i.e. the mean is an unpenalized intercept estimated by the observed mean (a plug-in, not the joint minimizer over
intercept and field), and the smoother of the centred data is added back. It is still linear in :math:`Y`
(:math:`S^c_\lambda = P + S_\lambda (I - P)` with :math:`P = \mathbf 1 d^T / \sum d`), so GCV and the risk
estimate below apply unchanged, with the traces of :math:`S^c_\lambda`. When :math:`Q \mathbf 1 = 0` centring
changes nothing. With fixed observations the conditional mean becomes
:math:`X_m = \mathbf 1 m^T + Q_{mm}^{-1} (-Q_{mo}) (Y_o - \mathbf 1 m^T)`, so far from every observation the
imputation tends to the mean, not to 0.

Non-negativity
--------------
``nonneg=True`` returns the exact minimizer under :math:`X \ge 0`. For CAR/ICAR priors with non-negative
weights and ``Y >= 0`` the unconstrained solution is already non-negative (:math:`D + \lambda Q` is an
M-matrix, whose inverse is entrywise non-negative), so nothing more is done; otherwise the genes whose solution
has negative entries are finished by ADMM (warm-started, one extra factorization), to a relative tolerance
``1e-7`` of the KKT residual.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._settings import logger, progress
from .linalg import NotPositiveDefiniteError, SPDFactor

__all__ = [
    "GCVResult",
    "PriorOperator",
    "SmoothSolver",
    "conditional_mean",
    "gcv",
    "objective",
    "prior_operator",
    "reached",
    "restrict",
    "smooth",
]

#: Up to this many (observed) spots the trace of the smoother is computed exactly.
EXACT_TRACE_MAX = 2000

#: Memory budget (bytes) of one float64 chunk of genes, used when ``chunk_size`` is None.
CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PriorOperator:
    """A precision matrix in a form the solvers can factor.

    Exactly one of ``Q`` (sparse precision) and ``B`` (SMA: :math:`Q = (B B^T)^{-1}`, ``B`` sparse) is set.
    """

    prior: str
    rho: float
    Q: sp.csr_matrix | None = None
    B: sp.csr_matrix | None = None
    standardize: bool = False
    M_matrix: bool = False  # D + lambda Q is an M-matrix (CAR/ICAR with W >= 0): non-negative inverse
    _Blu: object = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of spots."""
        return (self.Q if self.Q is not None else self.B).shape[0]

    def quad(self, X: np.ndarray) -> np.ndarray:
        r"""Per-column quadratic form :math:`x_g^T Q x_g` for ``X`` of shape ``(n, k)`` (returns ``(k,)``)."""
        X = np.asarray(X, dtype=np.float64)
        X2 = X if X.ndim == 2 else X[:, None]
        if self.Q is not None:
            return np.einsum("ij,ij->j", X2, self.Q @ X2)
        if self._Blu is None:
            from scipy.sparse.linalg import splu

            self._Blu = splu(sp.csc_matrix(self.B))
        V = self._Blu.solve(X2)
        return np.einsum("ij,ij->j", V, V)

    def dense(self) -> np.ndarray:
        """The dense precision (small problems and tests only)."""
        if self.Q is not None:
            return self.Q.toarray()
        Bd = self.B.toarray()
        return np.linalg.inv(Bd @ Bd.T)


def prior_operator(W, prior: str = "icar", rho: float = 0.99, *, standardize: bool = False) -> PriorOperator:
    """Build the :class:`PriorOperator` of ``prior`` on the weight matrix ``W``.

    For ``'sma'`` the sparse factor :math:`B = I + \\rho W` is kept instead of the dense precision; all other
    priors use :func:`smoother._core.precision.precision`. ``W`` is validated and clipped at 0 as there.
    """
    from .._validation import check_prior, check_rho, check_square_graph
    from .precision import precision

    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    if prior == "sma":
        W = check_square_graph(W, name="weights").copy()
        np.maximum(W.data, 0.0, out=W.data)
        W.eliminate_zeros()
        B = (sp.identity(W.shape[0], format="csr") + rho * W).tocsr()
        if standardize:
            s = np.sqrt(np.asarray(B.multiply(B).sum(axis=1)).ravel())  # sqrt(diag(B B^T))
            B = sp.diags(1.0 / s) @ B
        B = sp.csr_matrix(B)
        B.sort_indices()
        return PriorOperator(prior, rho, B=B, standardize=standardize)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rho = 1 is singular.*", category=UserWarning)
        Q = precision(W, prior, rho, standardize=standardize)
    Q = sp.csr_matrix(Q)
    m_matrix = False
    if prior in ("car", "icar"):
        off = Q - sp.diags(Q.diagonal())
        m_matrix = off.nnz == 0 or off.data.max() <= 0
    return PriorOperator(prior, rho, Q=Q, standardize=standardize, M_matrix=m_matrix)


# --------------------------------------------------------------------------------------------------------------
# One factorization, many right-hand sides
# --------------------------------------------------------------------------------------------------------------
class SmoothSolver:
    r"""Factor :math:`D + \lambda Q` once and apply :math:`\hat X = (D + \lambda Q)^{-1} D Y` to many genes.

    Parameters
    ----------
    op
        The prior (:func:`prior_operator`).
    lam
        :math:`\lambda \ge 0`. ``0`` is allowed only when every weight is positive (then :math:`\hat X = Y`).
    weights
        ``(n,)`` non-negative observation weights :math:`d`; ``None`` means all ones.
    center
        Centre the prior at each column's weighted mean (see the module docstring): :meth:`apply` returns
        :math:`\mathbf 1 m^T + (D + \lambda Q)^{-1} D (Y - \mathbf 1 m^T)`.

    Raises
    ------
    NotPositiveDefiniteError
        When :math:`D + \lambda Q` is not positive definite (an indefinite ``Q``, e.g. CAR with a too large
        ``rho``, or unobserved spots that no observed spot reaches through the graph).
    """

    def __init__(
        self, op: PriorOperator, lam: float, *, weights: np.ndarray | None = None, center: bool = False
    ) -> None:
        self.op = op
        self.lam = float(lam)
        self.center = bool(center)
        self._q1 = None
        n = op.n
        self.d = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
        if self.d.shape != (n,) or (self.d < 0).any():
            msg = f"Expected `weights` of shape ({n},) with non-negative entries."
            raise ValueError(msg)
        self.identity = self.lam == 0.0
        if self.identity:
            if (self.d <= 0).any():
                msg = "lambda = 0 leaves spots with zero weight undetermined; use lambda > 0."
                raise NotPositiveDefiniteError(msg)
            return
        if op.Q is not None:
            M = (sp.diags(self.d) + self.lam * op.Q).tocsr()
        else:
            B = op.B
            M = (B.T @ sp.diags(self.d) @ B + self.lam * sp.identity(n)).tocsr()
        M = 0.5 * (M + M.T)
        self.factor = SPDFactor(M)

    def means(self, Y: np.ndarray) -> np.ndarray:
        """Weighted column means :math:`m = Y^T d / \\sum_i d_i` (over the observed spots)."""
        return (self.d @ Y) / max(float(self.d.sum()), 1e-300)

    def q1(self) -> np.ndarray:
        """:math:`Q \\mathbf 1` (cached)."""
        if self._q1 is None:
            ones = np.ones(self.op.n)
            self._q1 = self.op.Q @ ones if self.op.Q is not None else _sma_Qx(self.op, ones[:, None])[:, 0]
        return self._q1

    def apply(self, Y: np.ndarray) -> np.ndarray:
        """:math:`(D + \\lambda Q)^{-1} D Y` for dense ``Y`` of shape ``(n, k)`` (float64); with ``center``,
        :math:`\\mathbf 1 m^T + (D + \\lambda Q)^{-1} D (Y - \\mathbf 1 m^T)`."""
        if self.identity:
            return np.array(Y, dtype=np.float64)
        if self.center:
            m = self.means(Y)
            Yc = Y - m
            return m + self.solve_rhs(self.d[:, None] * Yc if Y.ndim == 2 else self.d * Yc)
        R = self.d[:, None] * Y if Y.ndim == 2 else self.d * Y
        return self.solve_rhs(R)

    def rhs(self, Y: np.ndarray) -> np.ndarray:
        """The right-hand side :math:`b` with :math:`(D + \\lambda Q) \\hat X = b`: :math:`D Y`, plus
        :math:`\\lambda Q \\mathbf 1 m^T` with ``center``."""
        b = self.d[:, None] * Y
        if self.center and not self.identity:
            b = b + self.lam * np.outer(self.q1(), self.means(Y))
        return b

    def solve_rhs(self, R: np.ndarray) -> np.ndarray:
        """:math:`(D + \\lambda Q)^{-1} R` for a right-hand side ``R`` (already multiplied by ``D``)."""
        if self.identity:
            return np.array(R, dtype=np.float64) / (self.d[:, None] if R.ndim == 2 else self.d)
        if self.op.Q is not None:
            return self.factor.solve(R)
        B = self.op.B
        return B @ self.factor.solve(B.T @ R)

    def trace(self, *, method: str = "auto", n_probes: int = 32, seed: int = 0) -> float:
        r"""Trace of the influence matrix :math:`S = (D + \lambda Q)^{-1} D` (effective degrees of freedom).

        ``method='exact'`` uses ``n_obs`` unit-vector solves; ``'hutchinson'`` uses ``n_probes`` Rademacher
        probes (on spots with positive weight); ``'auto'`` is exact up to :data:`EXACT_TRACE_MAX` spots.
        """
        obs = np.flatnonzero(self.d > 0)
        if self.identity:
            return float(obs.size)
        if method == "auto":
            method = "exact" if obs.size <= EXACT_TRACE_MAX else "hutchinson"
        n = self.op.n
        if method == "exact":
            total = 0.0
            for start in range(0, obs.size, 256):
                idx = obs[start : start + 256]
                E = np.zeros((n, idx.size))
                E[idx, np.arange(idx.size)] = 1.0
                SE = self.apply(E)
                total += float(SE[idx, np.arange(idx.size)].sum())
            return total
        rng = np.random.default_rng(seed)
        Z = np.zeros((n, n_probes))
        Z[obs] = rng.choice(np.array([-1.0, 1.0]), size=(obs.size, n_probes))
        SZ = self.apply(Z)
        return float(np.einsum("ij,ij->", Z, SZ) / n_probes)


# --------------------------------------------------------------------------------------------------------------
# Chunked solve of all genes
# --------------------------------------------------------------------------------------------------------------
def _chunk_size(n: int, n_genes: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (8 * max(n, 1)))
    return int(max(1, min(chunk_size, max(n_genes, 1))))


def _dense_cols(Y, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of ``Y`` (dense or CSC sparse) as a float64 dense array."""
    block = Y[:, start:stop]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float64)


def _as_column_source(Y):
    """Sparse inputs become CSC once (cheap column slices); dense ones are used as they are."""
    if sp.issparse(Y):
        return sp.csc_matrix(Y)
    return np.asarray(Y)


def smooth(
    Y,
    op: PriorOperator,
    lam: float,
    *,
    weights: np.ndarray | None = None,
    nonneg: bool = False,
    dtype=np.float32,
    chunk_size: int | None = None,
    solver: SmoothSolver | None = None,
    show_progress: bool | None = None,
    center: bool = False,
) -> np.ndarray:
    r"""Solve :math:`(D + \lambda Q) X = D Y` for every column of ``Y`` (see the module docstring).

    Parameters
    ----------
    Y
        ``(n, n_genes)`` dense array or scipy sparse matrix (never densified as a whole); rows with weight 0
        are ignored.
    op
        The prior (:func:`prior_operator`).
    lam
        Strength :math:`\lambda \ge 0`.
    weights
        ``(n,)`` observation weights (``None``: all ones).
    nonneg
        Return the exact minimizer under :math:`X \ge 0`.
    dtype
        dtype of the returned array (the solve is float64).
    chunk_size
        Genes per solve; ``None`` picks chunks of about 256 MiB of float64.
    solver
        A :class:`SmoothSolver` for the same ``op``, ``lam`` and ``weights`` to reuse.
    show_progress
        Progress bar over chunks (``None``: follow ``sm.settings.progress_bar``).
    center
        Centre the prior at each gene's weighted mean (module docstring); ignored when ``solver`` is given (the
        solver's own setting is used).

    Returns
    -------
    X
        ``(n, n_genes)`` dense array of ``dtype``.
    """
    n, g = Y.shape
    solver = solver if solver is not None else SmoothSolver(op, lam, weights=weights, center=center)
    src = _as_column_source(Y)
    out = np.empty((n, g), dtype=dtype)
    cs = _chunk_size(n, g, chunk_size)
    starts = range(0, g, cs)
    nn_solver = None
    show = (None if len(starts) > 1 else False) if show_progress is None else show_progress
    for start in progress(starts, total=len(starts), desc="smoothing", disable=None if show is None else not show):
        stop = min(g, start + cs)
        Yc = _dense_cols(src, start, stop)
        Xc = solver.apply(Yc)
        if nonneg:
            Xc, nn_solver = _nonneg_finish(Xc, Yc, solver, nn_solver)
        out[:, start:stop] = Xc
    return out


def _nonneg_finish(X: np.ndarray, Y: np.ndarray, solver: SmoothSolver, nn_solver):
    """Replace the columns of ``X`` with negative entries by the exact non-negative minimizer (ADMM)."""
    bad = np.flatnonzero((X < 0).any(axis=0))
    if bad.size == 0:
        return X, nn_solver
    X = X.copy()
    if solver.identity:
        X[:, bad] = np.maximum(X[:, bad], 0.0)
        return X, nn_solver
    b = solver.rhs(Y[:, bad])
    sigma = 1.0
    if nn_solver is None:
        nn_solver = SmoothSolver(solver.op, solver.lam, weights=solver.d + sigma)
    X[:, bad] = admm_nonneg(b, solver, nn_solver, sigma, x0=np.maximum(X[:, bad], 0.0))
    return X, nn_solver


def admm_nonneg(
    b: np.ndarray,
    solver: SmoothSolver,
    shifted: SmoothSolver,
    sigma: float,
    *,
    x0: np.ndarray,
    tol: float = 1e-7,
    max_iter: int = 2000,
) -> np.ndarray:
    r"""ADMM for :math:`\min_{X \ge 0} \tfrac12 \mathrm{tr}(X^T M X) - \mathrm{tr}(b^T X)`, :math:`M = D + \lambda Q`.

    ``shifted`` factors :math:`M + \sigma I`. Stops when the projected-gradient (KKT) residual is below ``tol``
    relative to ``|b|``; returns the feasible iterate.
    """
    Z = x0.copy()
    U = np.zeros_like(Z)
    scale = max(np.abs(b).max(), 1e-300)
    res = np.inf

    def matvec(X):
        if solver.op.Q is not None:
            return solver.d[:, None] * X + solver.lam * (solver.op.Q @ X)
        return solver.d[:, None] * X + solver.lam * _sma_Qx(solver.op, X)

    for it in range(max_iter):
        X = shifted.solve_rhs(b + sigma * (Z - U))
        Z = np.maximum(X + U, 0.0)
        U += X - Z
        if it % 10 == 9:
            grad = matvec(Z) - b
            # KKT: grad >= 0 where Z == 0, grad == 0 where Z > 0
            res = np.where(Z > 0, np.abs(grad), np.maximum(-grad, 0.0)).max()
            if res <= tol * scale:
                return Z
    logger.warning("Non-negative smoothing stopped after %d ADMM iterations (KKT residual %.2e).", max_iter, res)
    return Z


def _sma_Qx(op: PriorOperator, X: np.ndarray) -> np.ndarray:
    r""":math:`Q X = B^{-T} B^{-1} X` for the SMA prior."""
    if op._Blu is None:
        from scipy.sparse.linalg import splu

        op._Blu = splu(sp.csc_matrix(op.B))
    V = op._Blu.solve(X)
    return op._Blu.solve(V, trans="T")


# --------------------------------------------------------------------------------------------------------------
# Objective (shared by tests and benchmarks)
# --------------------------------------------------------------------------------------------------------------
def objective(X, Y, op: PriorOperator, lam: float, *, weights: np.ndarray | None = None, center: bool = False) -> float:
    r""":math:`\lVert D^{1/2}(Y - X)\rVert_F^2 + \lambda\,\mathrm{tr}(X^T Q X)` (unnormalized, float64); with
    ``center``, the prior term is taken at :math:`X - \mathbf 1 m^T` (``m`` the weighted means of ``Y``)."""
    X = np.asarray(X, dtype=np.float64)
    Y = Y.toarray() if sp.issparse(Y) else np.asarray(Y, dtype=np.float64)
    d = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    fit = float((d[:, None] * (Y - X) ** 2).sum())
    Xp = X - (d @ Y) / d.sum() if center else X
    return fit + float(lam) * float(op.quad(Xp).sum())


# --------------------------------------------------------------------------------------------------------------
# Spots the data reach through the graph
# --------------------------------------------------------------------------------------------------------------
def _pattern(op: PriorOperator) -> sp.csr_matrix:
    M = op.Q if op.Q is not None else op.B
    return sp.csr_matrix((np.ones(M.nnz), M.indices, M.indptr), shape=M.shape)


def reached(op: PriorOperator, observed: np.ndarray) -> np.ndarray:
    """Boolean ``(n,)``: the spots with a graph path (through the sparsity pattern of ``Q``, or of ``B`` for SMA) to
    at least one observed spot. The others are not determined by the data (their precision block is decoupled)."""
    from scipy.sparse.csgraph import connected_components

    observed = np.asarray(observed, dtype=bool)
    if observed.all():
        return np.ones(observed.size, dtype=bool)
    _, label = connected_components(_pattern(op), directed=True, connection="weak")
    return np.isin(label, np.unique(label[observed]))


def restrict(op: PriorOperator, keep: np.ndarray) -> PriorOperator:
    """The prior on the spots ``keep``, exact when ``keep`` is a union of connected components (:func:`reached`):
    ``Q`` (or SMA's ``B``) is block diagonal over the components, so its block on ``keep`` is the prior there."""
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return op
    if op.Q is not None:
        Q = sp.csr_matrix(op.Q[keep][:, keep])
        return PriorOperator(op.prior, op.rho, Q=Q, standardize=op.standardize, M_matrix=op.M_matrix)
    return PriorOperator(op.prior, op.rho, B=sp.csr_matrix(op.B[keep][:, keep]), standardize=op.standardize)


# --------------------------------------------------------------------------------------------------------------
# Gaussian conditional (fixed observations)
# --------------------------------------------------------------------------------------------------------------
def conditional_mean(
    op: PriorOperator, Y_obs: np.ndarray, observed: np.ndarray, *, nonneg: bool = False, center: bool = False
) -> np.ndarray:
    r"""Imputed values at unobserved spots with the observed ones held fixed.

    Minimizes :math:`x^T Q x` over :math:`x_m` with :math:`x_o = y_o` fixed: :math:`Q_{mm} X_m = -Q_{mo} Y_o`,
    the mean of the Gaussian random field conditional on the observations. For SMA
    (:math:`Q = (BB^T)^{-1}`), :math:`X_m = B_m B_o^T (B_o B_o^T)^{-1} Y_o`, all sparse. With ``center``, the
    prior is centred at the observed means :math:`m`: :math:`Q_{mm} X_m = -Q_{mo} Y_o + (Q \mathbf 1)_m m^T`, i.e.
    :math:`X_m = \mathbf 1 m^T + Q_{mm}^{-1}(-Q_{mo})(Y_o - \mathbf 1 m^T)`.

    Parameters
    ----------
    op
        Prior on all ``n`` spots.
    Y_obs
        ``(n_obs, k)`` observed values, rows in the order of ``np.flatnonzero(observed)``.
    observed
        ``(n,)`` boolean mask.
    nonneg
        Exact minimizer under :math:`X_m \ge 0` (ADMM; not available for SMA, where the solution is clipped
        with a warning).
    center
        Centre the prior at each column's mean over the observed spots.

    Returns
    -------
    X_missing
        ``(n_missing, k)`` float64, rows in the order of ``np.flatnonzero(~observed)``.

    Raises
    ------
    NotPositiveDefiniteError
        :math:`Q_{mm}` is singular: some unobserved spots are not connected to any observed spot.
    """
    observed = np.asarray(observed, dtype=bool)
    o, m = np.flatnonzero(observed), np.flatnonzero(~observed)
    Y_obs = np.asarray(Y_obs, dtype=np.float64)
    if m.size == 0:
        return np.zeros((0, Y_obs.shape[1]))
    mu = Y_obs.mean(axis=0) if center and o.size else np.zeros(Y_obs.shape[1])
    if op.Q is not None:
        Q = op.Q
        Qmm = Q[m][:, m].tocsr()
        R = -(Q[m][:, o] @ Y_obs)
        if center:
            R = R + np.outer((Q @ np.ones(Q.shape[0]))[m], mu)
        F = SPDFactor(0.5 * (Qmm + Qmm.T))
        Xm = F.solve(R)
        if nonneg and (Xm < 0).any():
            Xm = _admm_generic(
                Qmm, R, F_shift=SPDFactor(0.5 * (Qmm + Qmm.T) + sp.identity(m.size)), x0=np.maximum(Xm, 0)
            )
        return Xm
    B = op.B
    Bo, Bm = B[o], B[m]
    G = (Bo @ Bo.T).tocsr()
    F = SPDFactor(0.5 * (G + G.T))
    Xm = mu + Bm @ (Bo.T @ F.solve(Y_obs - mu))
    if nonneg and (Xm < 0).any():
        warnings.warn(
            "nonneg=True with fixed observations is not solved exactly for the 'sma' prior; negative values "
            "were set to 0. Use fixed_obs=False or another prior for the exact constrained solution.",
            UserWarning,
            stacklevel=3,
        )
        Xm = np.maximum(Xm, 0.0)
    return Xm


def _admm_generic(A: sp.csr_matrix, R: np.ndarray, *, F_shift: SPDFactor, x0: np.ndarray, tol=1e-7, max_iter=2000):
    r"""ADMM for :math:`\min_{X\ge0} \tfrac12 \mathrm{tr}(X^TAX) - \mathrm{tr}(R^TX)`; ``F_shift`` factors ``A + I``."""
    Z, U = x0.copy(), np.zeros_like(x0)
    scale = max(np.abs(R).max(), 1e-300)
    res = np.inf
    for it in range(max_iter):
        X = F_shift.solve(R + Z - U)
        Z = np.maximum(X + U, 0.0)
        U += X - Z
        if it % 10 == 9:
            grad = A @ Z - R
            res = np.where(Z > 0, np.abs(grad), np.maximum(-grad, 0.0)).max()
            if res <= tol * scale:
                return Z
    logger.warning("Non-negative imputation stopped after %d ADMM iterations (KKT residual %.2e).", max_iter, res)
    return Z


# --------------------------------------------------------------------------------------------------------------
# Generalized cross-validation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GCVResult:
    """Outcome of :func:`gcv`.

    Attributes
    ----------
    lam
        The chosen strength (a float), or ``(n_genes,)`` per-gene strengths.
    grid
        Every evaluated :math:`\\lambda` (sorted).
    score
        The criterion at each grid value (dataset-wide: ``(n_grid,)``; per gene: ``(n_grid, n_genes)``).
    gcv
        The GCV score at each grid value (same shape as ``score``).
    trace
        :math:`\\mathrm{tr}(S_\\lambda)` at each grid value.
    sigma2
        Noise variance per gene estimated at the GCV optimum (criterion ``'risk'``).
    X
        Per-gene mode only: the solution at each gene's chosen :math:`\\lambda`, ``(n, n_genes)``.
    edge
        ``'upper'`` when the dataset-wide choice is the largest value of the grid (the criterion still decreased
        there; widen the grid or change the prior), ``'zero'`` when :math:`\\lambda = 0` scored strictly better
        than every positive value (the prior does not describe the data at the scale of the grid), else ``None``.
    """

    lam: float | np.ndarray
    grid: np.ndarray
    score: np.ndarray
    gcv: np.ndarray
    trace: np.ndarray
    criterion: str = "risk"
    sigma2: np.ndarray | None = None
    X: np.ndarray | None = None
    n_genes_used: int = 0
    trace_method: str = "exact"
    edge: str | None = None
    gene_weights: np.ndarray | None = None


def default_grid(n_points: int = 17, lo: float = 1e-3, hi: float = 1e3) -> np.ndarray:
    """Log-spaced grid of strengths (0.375 decades apart by default)."""
    return np.logspace(math.log10(lo), math.log10(hi), n_points)


#: Up to this many spots the spectral search diagonalizes ``Q`` (dense, exact); beyond, Lanczos quadrature.
DENSE_SPECTRUM_MAX = 500


def auto_genes(n_spots: int, n_genes: int, *, spectral: bool = True) -> int:
    """How many genes (a random subsample) the ``'auto'`` search of :func:`gcv` uses with ``max_genes='auto'``.

    The factorization search and the dense spectral one (``n_spots <=`` :data:`DENSE_SPECTRUM_MAX`) use up to 500.
    The Lanczos search costs about as much per gene as 15 solves with a Cholesky factor, so it takes one gene in
    20 (at least 16, at most 500): its cost stays below the fit of all genes at a fixed lambda (one factorization
    plus one solve per gene). ``benchmarks/auto_cost.py`` measures the cost and the error of the choice.
    """
    if not spectral or n_spots <= DENSE_SPECTRUM_MAX:
        return min(n_genes, 500)
    return int(min(n_genes, 500, max(16, math.ceil(n_genes / 20))))


def sample_genes(energy: np.ndarray, m: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``m`` genes with replacement, with probability ``0.9 * energy / energy.sum() + 0.1 / g`` (``energy``:
    each gene's (centred) sum of squares, :func:`_column_energy`); returns the distinct genes (sorted) and their
    normalized inverse-probability (Hajek) weights, which make a weighted mean over the sample an estimate of the
    mean over all genes (pass them to :func:`gcv` as ``gene_weights`` when the sample is taken by the caller)."""
    energy = np.asarray(energy, dtype=np.float64)
    g = energy.size
    rng = np.random.default_rng(rng)
    total = float(energy.sum())
    prob = np.full(g, 1.0 / g) if not total > 0 or not np.isfinite(total) else 0.9 * energy / total + 0.1 / g
    cols, counts = np.unique(rng.choice(g, size=m, replace=True, p=prob), return_counts=True)
    omega = counts / prob[cols]
    return cols, omega / omega.sum()


def _spectral_ok(op: PriorOperator, d: np.ndarray, per_gene: bool, trace_method: str) -> bool:
    """Whether :class:`_Spectral` applies: :math:`S_\\lambda = (I + \\lambda Q)^{-1}` (unit weights, sparse
    ``Q``), one dataset-wide lambda and traces left to the method."""
    return op.Q is not None and not per_gene and trace_method == "auto" and bool(np.all(d == 1.0))


class _Spectral:
    r"""Every quantity of the criterion at every :math:`\lambda`, from the spectral measures of the genes and probes.

    With unit weights :math:`S_\lambda = f_\lambda(Q)`, :math:`f_\lambda(x) = 1/(1 + \lambda x)`; with centring
    the smoother is :math:`S^c = P + S P_\perp` (:math:`P = \mathbf 1 \mathbf 1^T / n`,
    :math:`P_\perp = I - P`), so for a gene :math:`y` with centred values :math:`\tilde y = P_\perp y`

    .. math::

        \mathrm{RSS} = \tilde y^T (I - S)^2 \tilde y, \quad
        \mathrm{tr}\, S^c = 1 + \mathrm{tr}(P_\perp S P_\perp), \quad
        \lVert S^c \rVert_F^2 = 1 + \mathrm{tr}(P_\perp S^2 P_\perp),

    all quadratic forms in :math:`Q` (without centring drop the 1 and :math:`P_\perp`). Up to
    :data:`DENSE_SPECTRUM_MAX` spots :math:`Q` is diagonalized (exact); beyond, each gene and each of ``p``
    Rademacher probes :math:`z` (centred with ``center``; :math:`E[z^T P_\perp S P_\perp z]` is the trace)
    gets one Lanczos run (:func:`smoother._core.krylov.lanczos_rules`), which serves every :math:`\lambda`.
    ``p = n_probes`` up to 10,000 spots and :math:`n_{probes} \sqrt{10^4 / n}` beyond (at least 4): the relative
    error of the Hutchinson trace falls as :math:`1/\sqrt{p\,\mathrm{tr}\,S}`.
    """

    def __init__(self, Ysub, op: PriorOperator, *, center: bool, grid, n_probes: int, seed: int, tol: float):
        n, m = Ysub.shape
        self.n, self.center = n, bool(center)
        Q = sp.csr_matrix(op.Q, dtype=np.float64)

        def block(start: int, stop: int) -> np.ndarray:
            B = _dense_cols(Ysub, start, stop)
            return B - B.mean(axis=0) if center else B

        if n <= DENSE_SPECTRUM_MAX:
            Yd = block(0, m)
            q, U = np.linalg.eigh(Q.toarray())
            ones = U.T @ np.ones(n)
            C = U.T @ Yd
            self.gene_nodes = np.broadcast_to(q, (m, n))
            self.gene_weights = (C * C).T
            w = 1.0 - ones**2 / n if center else np.ones(n)
            self.probe_nodes, self.probe_weights = q[None, :], w[None, :]
            self.trace_method = "exact"
            self.steps = 0
            return
        from .krylov import lanczos_rules

        p = int(max(4, min(n_probes, math.ceil(n_probes * math.sqrt(1e4 / n)))))
        Z = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(n, p))
        if center:
            Z -= Z.mean(axis=0)
        lams = np.asarray(grid, dtype=np.float64)
        lams = lams[lams > 0][None, None, :]

        def check(theta):
            f = 1.0 / (1.0 + lams * np.maximum(theta, 0.0)[..., None])
            return np.concatenate([f, (1.0 - f) ** 2], axis=-1)

        # genes densified one batch at a time (memory: the batch and three Lanczos blocks of it)
        batch = max(4, CHUNK_BYTES // (8 * n))
        runs = [lanczos_rules(Q, block(b0, min(m, b0 + batch)), check, tol=tol) for b0 in range(0, m, batch)]
        runs.append(lanczos_rules(Q, Z, check, tol=tol, batch=batch))
        k = max(r.nodes.shape[1] for r in runs)
        nodes = np.vstack([np.pad(r.nodes, ((0, 0), (0, k - r.nodes.shape[1]))) for r in runs])
        weights = np.vstack([np.pad(r.weights, ((0, 0), (0, k - r.weights.shape[1]))) for r in runs])
        self.gene_nodes, self.gene_weights = nodes[:m], weights[:m]
        self.probe_nodes, self.probe_weights = nodes[m:], weights[m:] / p
        self.trace_method = "lanczos"
        self.steps = int(max(r.steps.max(initial=0) for r in runs))

    def evaluate(self, lam: float) -> tuple[float, float, np.ndarray]:
        """``(tr S, ||S||_F^2, RSS per gene)`` at ``lam > 0``."""
        fq = 1.0 / (1.0 + lam * np.maximum(self.probe_nodes, 0.0))
        t = float((self.probe_weights * fq).sum()) + self.center
        t2 = float((self.probe_weights * fq * fq).sum()) + self.center
        fg = lam * np.maximum(self.gene_nodes, 0.0)
        rss = (self.gene_weights * (fg / (1.0 + fg)) ** 2).sum(axis=1)
        return t, t2, rss


def gcv(
    Y,
    op: PriorOperator,
    *,
    weights: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    criterion: str = "risk",
    per_gene: bool = False,
    refine: bool = True,
    max_genes: int | str | None = "auto",
    n_probes: int = 32,
    trace_method: str = "auto",
    seed: int = 0,
    chunk_size: int | None = None,
    dtype=np.float32,
    show_progress: bool | None = None,
    center: bool = False,
    include_zero: bool = True,
    graph: sp.spmatrix | None = None,
    method: str = "auto",
    tol: float = 1e-5,
    gene_weights: np.ndarray | None = None,
) -> GCVResult:
    r"""Choose :math:`\lambda` from the data by GCV or by a GCV-calibrated unbiased risk estimate.

    For every :math:`\lambda` on ``grid`` (log-spaced, 1e-3 to 1e3 by default) the genes are smoothed and the
    residuals :math:`\mathrm{RSS}_g`, :math:`t = \mathrm{tr}(S_\lambda)` and :math:`t_2 = \mathrm{tr}(S_\lambda^2)`
    recorded (exact traces up to :data:`EXACT_TRACE_MAX` observed spots, Hutchinson beyond).

    - ``criterion='gcv'``: minimize
      :math:`\mathrm{GCV}(\lambda) = \frac{\sum_g \mathrm{RSS}_g / (n_o G)}{(1 - t/n_o)^2}`.
    - ``criterion='risk'`` (default): GCV first picks :math:`\lambda_0`; the noise variance of every gene is then
      estimated there, :math:`\hat\sigma_g^2 = \mathrm{RSS}_g(\lambda_0) / (n_o - 2t + t_2)` (unbiased when the
      smoothing bias is negligible, which holds at the slightly under-smoothing GCV optimum), and the unbiased
      risk estimate (Mallows' :math:`C_p` / SURE)
      :math:`\hat R(\lambda) = \frac{1}{n_o G}\sum_g \left[\mathrm{RSS}_g(\lambda)
      + 2\hat\sigma_g^2 t(\lambda)\right] - \overline{\hat\sigma^2}`
      is minimized. GCV inflates the bias term by :math:`(1 - t/n)^{-2}` and so under-smooths when the
      effective degrees of freedom are a sizeable fraction of the spots; in simulations the calibrated risk
      lands within a few percent of the error of the best :math:`\lambda` where GCV is 5-50 % off.

    Dataset-wide (default): one :math:`\lambda`, refined by a bounded Brent search in :math:`\log\lambda`
    between the neighbours of the best grid value; at most ``max_genes`` random genes enter the criterion.
    Per gene (``per_gene=True``): each gene takes the grid value minimizing its own criterion, and its solution
    there is returned in ``X``.

    **How the criterion is evaluated** (``method``). ``'spectral'`` (the default wherever it applies: unit weights,
    a sparse precision, one dataset-wide :math:`\lambda`, ``trace_method='auto'``) factorizes nothing:
    :math:`S_\lambda = (I + \lambda Q)^{-1}` is a function of :math:`Q`, so the residuals and traces at every
    :math:`\lambda` are quadratic forms :math:`v^T f_\lambda(Q) v` read off one spectral measure per vector ---
    exact from an eigendecomposition of :math:`Q` up to :data:`DENSE_SPECTRUM_MAX` spots, else a Gauss rule from
    one Lanczos run per gene and per Rademacher probe (stochastic Lanczos quadrature, converged to ``tol``;
    see :class:`_Spectral`). The Brent refinement is then free. Its cost is a few dozen sparse products per
    gene, below the fit of all genes at a fixed :math:`\lambda` (``benchmarks/auto_cost.py``), so
    ``max_genes='auto'`` (:func:`auto_genes`) draws one gene in 20 (16 to 500), with probability proportional to
    0.9 times its share of the total sum of squares plus 0.1 times uniform (with replacement), and averages the
    criterion with the normalized inverse-probability (Hajek) weights ``gene_weights``: the criterion is a sum of
    per-gene terms that scale with the gene's sum of squares, so this estimates the mean over all genes with a much
    smaller variance than uniform draws (``gene_weights``: the weights of the columns of ``Y`` when the caller drew
    them, e.g. by :func:`sample_genes` on dask input; no further sampling then). ``tol``: a Lanczos run stops when
    none of its Gauss rules at the grid values moved by more than ``tol`` (per unit mass) over 8 steps; on the
    DLPFC generators of ``benchmarks/smooth_defaults.py`` the choice is the same to 4 digits for ``tol`` from
    1e-7 to 1e-4. ``'factor'`` is the search of earlier versions: a Cholesky factorization
    of :math:`D + \lambda Q` and solves for every grid value (any weights, SMA, per gene), up to 500 uniformly
    drawn genes.

    **No smoothing is always a candidate.** :math:`\lambda = 0` is added to the grid (with ``include_zero``): there
    :math:`\hat X_o = Y_o`, :math:`t = t_2 = n_o` and :math:`\mathrm{RSS} = 0`, so the risk estimate is
    :math:`\hat\sigma^2`, the risk of the raw data (with unobserved spots, the :math:`\lambda \to 0` limit, i.e.
    imputation with the observations fixed). The choice is never worse than :math:`\lambda = 0` by the criterion
    minimized. GCV itself is 0/0 at :math:`\lambda = 0` and cannot select it (its score there is recorded as inf).
    A dataset-wide choice at the largest grid value, or of :math:`\lambda = 0` strictly best, is flagged in ``edge``.

    **A second noise estimate.** When the prior fits the data badly (e.g. SAR on a graph whose rows do not sum to
    1), the GCV optimum is far from the truth and :math:`\hat\sigma_g^2` above absorbs signal, which makes every
    :math:`\lambda` look better than :math:`\lambda = 0`. With ``graph`` (the spatial weights :math:`W`) the
    estimate is capped by the neighbour-difference estimate
    :math:`\tilde\sigma_g^2 = \sum_{ij} w_{ij} (y_{ig} - y_{jg})^2 / (2 \sum_{ij} w_{ij})` over observed pairs
    (:math:`E[(y_i - y_j)^2] = 2\sigma^2 + (x_i - x_j)^2`): both overestimate :math:`\sigma_g^2` (by the
    smoothing bias, by the signal's roughness), so the smaller one is used.
    """
    if criterion not in ("risk", "gcv"):
        msg = f"Expected `criterion` to be 'risk' or 'gcv', found {criterion!r}."
        raise ValueError(msg)
    if method not in ("auto", "spectral", "factor"):
        msg = f"Expected `method` to be 'auto', 'spectral' or 'factor', found {method!r}."
        raise ValueError(msg)
    n, g = Y.shape
    grid = np.asarray(default_grid() if grid is None else grid, dtype=np.float64)
    if grid.size == 0 or (grid < 0).any() or not np.isfinite(grid).all():
        msg = "Expected a non-empty grid of finite lambda >= 0."
        raise ValueError(msg)
    grid = np.unique(np.r_[0.0, grid] if include_zero else grid)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    d = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    n_obs = float((d > 0).sum())
    spectral = _spectral_ok(op, d, per_gene, trace_method) if method == "auto" else method == "spectral"
    if spectral and not _spectral_ok(op, d, per_gene, "auto"):
        msg = (
            "method='spectral' needs unit weights, a sparse precision (not 'sma'), per_gene=False and "
            "trace_method='auto'; use method='factor'."
        )
        raise ValueError(msg)
    src = _as_column_source(Y)
    rng = np.random.default_rng(seed)
    m = auto_genes(n, g, spectral=spectral) if isinstance(max_genes, str) else max_genes
    if gene_weights is not None:
        omega = np.asarray(gene_weights, dtype=np.float64).ravel()
        if per_gene or omega.shape != (g,) or not np.isfinite(omega).all() or (omega < 0).any() or omega.sum() <= 0:
            msg = f"Expected `gene_weights` of shape ({g},), finite, >= 0, not all 0 (and per_gene=False)."
            raise ValueError(msg)
        cols, omega = np.arange(g), omega / omega.sum()
    elif per_gene or m is None or g <= m:
        cols = np.arange(g)
        omega = np.full(g, 1.0 / max(g, 1))
    elif spectral:  # genes drawn with probability ~ their sum of squares; Hajek weights (see the docstring)
        cols, omega = sample_genes(_column_energy(src, center, chunk_size), m, rng)
    else:
        cols = np.sort(rng.choice(g, size=m, replace=False))
        omega = np.full(m, 1.0 / m)
    Ysub = src if cols.size == g else _as_column_source(src[:, cols])
    tmethod = trace_method if trace_method != "auto" else ("exact" if n_obs <= EXACT_TRACE_MAX else "hutchinson")
    if spectral:
        spec = _Spectral(Ysub, op, center=center, grid=grid, n_probes=n_probes, seed=seed, tol=tol)
        tmethod = spec.trace_method

    def evaluate(lam: float, keep: bool):
        if lam == 0.0:  # no smoothing (the fixed-observation limit when some spots are unobserved)
            return n_obs, n_obs, np.zeros(cols.size), None
        if spectral:
            return (*spec.evaluate(lam), None)
        solver = SmoothSolver(op, lam, weights=d, center=center)
        tr, tr2 = _traces(solver, tmethod, n_probes, seed)
        X = smooth(
            Ysub,
            op,
            lam,
            weights=d,
            dtype=dtype if keep else np.float64,
            chunk_size=chunk_size,
            solver=solver,
            show_progress=False,
        )
        rss = _weighted_rss(Ysub, X, d, chunk_size)
        return tr, tr2, rss, (X if keep else None)

    recs: dict[float, tuple] = {}
    disable = True if spectral else (None if show_progress is None else not show_progress)
    for lam in progress(grid, total=grid.size, desc="choosing lambda", disable=disable):
        tr, tr2, rss, _ = evaluate(float(lam), False)
        recs[float(lam)] = (tr, tr2, rss)

    def scores(lams, sigma2):
        tr = np.array([recs[lm][0] for lm in lams])
        rss = np.vstack([recs[lm][2] for lm in lams])  # (n_lam, n_genes)
        with np.errstate(divide="ignore", invalid="ignore"):
            gc = rss / n_obs / ((1.0 - tr / n_obs) ** 2)[:, None]
        gc[np.asarray(lams) == 0.0] = np.inf  # 0/0: GCV cannot judge lambda = 0
        gc = np.where(np.isnan(gc), np.inf, gc)
        if criterion == "gcv" or sigma2 is None:
            return gc, gc
        risk = (rss + 2.0 * sigma2[None, :] * tr[:, None]) / n_obs - sigma2[None, :] / 1.0
        return risk, gc

    lams = np.array(sorted(recs))
    _, gc = scores(lams, None)
    sigma2 = None
    if criterion == "risk":
        i0 = gc.argmin(axis=0) if per_gene else np.full(cols.size, int((gc @ omega).argmin()))
        tr0 = np.array([recs[lams[i]][0] for i in i0])
        tr20 = np.array([recs[lams[i]][1] for i in i0])
        rss0 = np.array([recs[lams[i]][2][k] for k, i in enumerate(i0)])
        sigma2 = rss0 / np.maximum(n_obs - 2.0 * tr0 + tr20, 1.0)
        sigma2 = np.where(np.isfinite(sigma2), sigma2, 0.0)
        if graph is not None:  # a second, lambda-free upper bound: neighbour differences
            sigma2 = np.minimum(sigma2, _difference_variance(Ysub, graph, d, chunk_size))
    sc, gc = scores(lams, sigma2)
    tr_all = np.array([recs[lm][0] for lm in lams])
    if per_gene:
        ib = sc.argmin(axis=0)
        lam_g = lams[ib]
        X = np.empty((n, g), dtype=dtype)
        for i in np.unique(ib):
            sel = np.flatnonzero(ib == i)
            X[:, sel] = smooth(
                _as_column_source(src[:, sel]),
                op,
                float(lams[i]),
                weights=d,
                dtype=dtype,
                chunk_size=chunk_size,
                show_progress=False,
                center=center,
            )
        return GCVResult(lam_g, lams, sc, gc, tr_all, criterion, sigma2, X, g, tmethod)
    total = sc @ omega
    i = int(np.argmin(total))
    lam_best = float(lams[i])
    edge = "upper" if lam_best > 0 and i == lams.size - 1 and lams.size >= 3 else None
    if lam_best == 0.0 and lams.size >= 2 and total[0] < total[1:].min():
        edge = "zero"  # every positive lambda scored worse than no smoothing
    if refine and lams.size >= 3 and 0 < i < lams.size - 1:
        from scipy.optimize import minimize_scalar

        def f(loglam):
            lam = float(10.0**loglam)
            if lam not in recs:
                tr, tr2, rss, _ = evaluate(lam, False)
                recs[lam] = (tr, tr2, rss)
            return float((scores([lam], sigma2)[0] @ omega)[0])

        lo = math.log10(lams[i - 1]) if lams[i - 1] > 0 else math.log10(lams[i]) - 1.0
        res = minimize_scalar(f, bounds=(lo, math.log10(lams[i + 1])), method="bounded", options={"xatol": 0.01})
        if res.fun < total[i]:
            lam_best = float(10.0**res.x)
        lams = np.array(sorted(recs))
        sc, gc = scores(lams, sigma2)
        tr_all = np.array([recs[lm][0] for lm in lams])
    return GCVResult(
        lam_best, lams, sc @ omega, gc @ omega, tr_all, criterion, sigma2, None, cols.size, tmethod, edge, omega
    )


def _traces(solver: SmoothSolver, method: str, n_probes: int, seed: int) -> tuple[float, float]:
    r""":math:`\mathrm{tr}(S)` and :math:`\mathrm{tr}(S^2)` of the (observed-block) influence matrix."""
    obs = np.flatnonzero(solver.d > 0)
    if solver.identity:
        return float(obs.size), float(obs.size)
    n = solver.op.n
    if method == "exact":
        t = t2 = 0.0
        for start in range(0, obs.size, 256):
            idx = obs[start : start + 256]
            E = np.zeros((n, idx.size))
            E[idx, np.arange(idx.size)] = 1.0
            SE = solver.apply(E)[obs]
            t += float(SE[np.searchsorted(obs, idx), np.arange(idx.size)].sum())
            t2 += float((SE * SE).sum())
        return t, t2
    rng = np.random.default_rng(seed)
    Z = np.zeros((n, n_probes))
    Z[obs] = rng.choice(np.array([-1.0, 1.0]), size=(obs.size, n_probes))
    SZ = solver.apply(Z)[obs]
    return float(np.einsum("ij,ij->", Z[obs], SZ) / n_probes), float((SZ * SZ).sum() / n_probes)


def _difference_variance(src, W: sp.spmatrix, d: np.ndarray, chunk_size: int | None) -> np.ndarray:
    r"""Per-column :math:`\sum_{ij} w_{ij} (y_i - y_j)^2 / (2 \sum_{ij} w_{ij})` over pairs of observed spots
    (``inf`` when there is no such pair), with :math:`w` the symmetrized, non-negative off-diagonal weights."""
    W = sp.csr_matrix(W, dtype=np.float64)
    W = 0.5 * (W + W.T)
    W = W - sp.diags(W.diagonal())
    obs = (d > 0).astype(np.float64)
    W = (sp.diags(obs) @ W @ sp.diags(obs)).tocsr()
    W.data = np.maximum(W.data, 0.0)
    total = float(W.sum())
    n, g = src.shape
    if total <= 0:
        return np.full(g, np.inf)
    L = (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W).tocsr()
    out = np.empty(g)
    cs = _chunk_size(n, g, chunk_size)
    for start in range(0, g, cs):
        stop = min(g, start + cs)
        Yc = _dense_cols(src, start, stop)
        out[start:stop] = np.einsum("ij,ij->j", Yc, L @ Yc) / total  # y'Ly = sum_ij w_ij (y_i - y_j)^2 / 2
    return out


def _column_energy(src, center: bool, chunk_size: int | None) -> np.ndarray:
    """Per column :math:`\\sum_i y_i^2` (centred: :math:`\\sum_i (y_i - \\bar y)^2`), float64, in chunks."""
    n, g = src.shape
    if sp.issparse(src):
        sq = np.asarray(src.multiply(src).sum(axis=0), dtype=np.float64).ravel()
        mean = np.asarray(src.sum(axis=0), dtype=np.float64).ravel() / max(n, 1)
    else:
        sq, mean = np.empty(g), np.empty(g)
        cs = _chunk_size(n, g, chunk_size)
        for start in range(0, g, cs):
            Yc = _dense_cols(src, start, min(g, start + cs))
            sq[start : start + cs] = np.einsum("ij,ij->j", Yc, Yc)
            mean[start : start + cs] = Yc.mean(axis=0)
    return np.maximum(sq - n * mean**2, 0.0) if center else sq


def _weighted_rss(src, X: np.ndarray, d: np.ndarray, chunk_size: int | None) -> np.ndarray:
    n, g = X.shape
    out = np.empty(g)
    cs = _chunk_size(n, g, chunk_size)
    for start in range(0, g, cs):
        stop = min(g, start + cs)
        R = _dense_cols(src, start, stop) - X[:, start:stop]
        out[start:stop] = (d[:, None] * R * R).sum(axis=0)
    return out


# --------------------------------------------------------------------------------------------------------------
# Resolution enhancement: spots observe the average of their sub-spots
# --------------------------------------------------------------------------------------------------------------
def aggregate_solve(
    A: sp.csr_matrix,
    Y: np.ndarray,
    Q: sp.csr_matrix,
    lam: float,
    *,
    dtype=np.float32,
    chunk_size: int | None = None,
    center: bool = False,
) -> np.ndarray:
    r"""Sub-spot values :math:`X` whose spot averages match :math:`Y`, regularized by the prior :math:`Q`.

    Solves :math:`\min_X \lVert Y - A X \rVert_F^2 + \lambda\,\mathrm{tr}(X^T Q X)`, i.e.
    :math:`(A^T A + \lambda Q) X = A^T Y`, with ``A`` the ``(n_spots, n_sub)`` averaging matrix (row ``s`` has
    ``1 / n_children(s)`` at the children of spot ``s``) and ``Q`` the precision on the sub-spot graph. With
    ``center`` the prior is centred at each gene's spot mean :math:`m` (``A 1 = 1``):
    :math:`X = \mathbf 1 m^T + (A^T A + \lambda Q)^{-1} A^T (Y - \mathbf 1 m^T)`.
    """
    if lam <= 0:
        msg = "Expected `lambda` > 0 for resolution enhancement (the sub-spot values are otherwise undetermined)."
        raise ValueError(msg)
    M = (A.T @ A + lam * Q).tocsr()
    F = SPDFactor(0.5 * (M + M.T))
    src = _as_column_source(Y)
    n_sub, g = A.shape[1], Y.shape[1]
    out = np.empty((n_sub, g), dtype=dtype)
    cs = _chunk_size(n_sub, g, chunk_size)
    for start in range(0, g, cs):
        stop = min(g, start + cs)
        Yc = _dense_cols(src, start, stop)
        if center:
            mu = Yc.mean(axis=0)
            out[:, start:stop] = mu + F.solve(A.T @ (Yc - mu))
        else:
            out[:, start:stop] = F.solve(A.T @ Yc)
    return out
