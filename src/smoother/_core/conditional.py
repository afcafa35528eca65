r"""Posterior variances of imputation and resolution enhancement (Schur complements), and their lazy solves.

The three fits of :mod:`smoother.tl._impute` are modes of Gaussian posteriors whose covariances are
:math:`\sigma_g^2 M^{-1}` for one sparse SPD matrix :math:`M` shared by every gene:

**Fixed observations** (``impute(fixed_obs=True)``). The field is :math:`x \sim N(\mu \mathbf 1, \tau^2 Q^{-1})`
and the observed spots are exact: :math:`x_o = y_o`. The conditional of the unobserved spots is

.. math::

    x_m \mid x_o \sim N\big(\mu \mathbf 1 + Q_{mm}^{-1}(-Q_{mo})(x_o - \mu \mathbf 1),\; \tau^2 Q_{mm}^{-1}\big),

so :math:`M = Q_{mm}` (the precision of :math:`x_m` given :math:`x_o`; its inverse is the Schur complement
:math:`\Sigma_{mm} - \Sigma_{mo}\Sigma_{oo}^{-1}\Sigma_{om}` of the prior covariance) and the observed spots have
variance 0. There is no noise term: :math:`\sigma_g` is the prior's scale :math:`\tau_g`, estimated by restricted
maximum likelihood (REML) from the observed values, whose marginal precision is the Schur complement
:math:`P_o = Q_{oo} - Q_{om} Q_{mm}^{-1} Q_{mo}`:

.. math::

    \hat\tau_g^2 = \frac{\min_\mu (y_o - \mu \mathbf 1)^T P_o (y_o - \mu \mathbf 1)}{n_o - r},

with :math:`r = 1` when the mean is estimated (``center=True``) or the prior is intrinsic (one per connected
component for ICAR at ``rho = 1``), else 0. With the imputed field :math:`z = (y_o, \hat x_m) - \mu \mathbf 1`
the quadratic form is :math:`z^T Q z` (the conditional mean minimizes it), so no extra solve per gene.

**Joint denoising and filling** (``impute(fixed_obs=False)``): :math:`y_o = x_o + \varepsilon`,
:math:`\varepsilon \sim N(0, \sigma_g^2 I)`, :math:`x \sim N(\mu \mathbf 1, \frac{\sigma_g^2}{\lambda} Q^{-1})`:
:math:`M = D + \lambda Q` (:math:`D` the observed-spot indicator) and :math:`\sigma_g^2 = \mathrm{RSS}_g /
(n_o - \mathrm{tr}\, H)` from the residuals of the observed spots, as for smoothing.

**Enhancement** (``enhance``): spot values are means of sub-spot values, :math:`y = A x + \varepsilon`:
:math:`M = A^T A + \lambda Q` and :math:`\sigma_g^2 = \lVert y_g - A \hat x_g\rVert^2 / (n_{spots} - \mathrm{tr}\,H)`
with :math:`H = A M^{-1} A^T` (plus the mean's term).

**The mean** (``center=True``): as for smoothing, the intercept :math:`\mu` has a flat prior; integrating it out
adds :math:`v v^T / s` to :math:`M^{-1}`, with :math:`v` the coefficient of :math:`\mu` in the posterior mean and
:math:`s` the information on :math:`\mu` (see each function).

Diagonals of :math:`M^{-1}` come from :func:`smoother._core.uncertainty.inv_diag` (exact selected inversion up to its
``exact_max``, probing with a measured error beyond); nothing dense of size ``n x n`` is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .linalg import SPDFactor

__all__ = [
    "VarFactor",
    "enhance_var_factor",
    "fixed_var_factor",
    "joint_loglik",
    "joint_ml_lambda",
    "joint_var_factor",
    "lazy_fill",
    "reml_quadratic",
]


@dataclass
class VarFactor:
    """Spot-wise posterior variance factor :math:`d` and what estimating :math:`\\sigma_g` needs."""

    d: np.ndarray  # (n_sys,) factor of the spots of the system (unobserved / all / sub-spots)
    method: str  # 'exact' or 'probing' (inv_diag)
    max_rel_error: float  # of the diagonal (0 when exact)
    dof: float  # the denominator of sigma_g^2
    trace: float | None = None  # trace of the hat matrix (noise models), None for fixed observations
    s: float = 0.0  # information on the mean (fixed observations: 1' P_o 1)
    p1: np.ndarray | None = None  # fixed observations: P_o 1 (n_o,)


def _sym(M: sp.spmatrix) -> sp.csr_matrix:
    M = sp.csr_matrix(M, dtype=np.float64)
    return (0.5 * (M + M.T)).tocsr()


def _n_null(Q: sp.spmatrix, tol: float = 1e-12) -> int:
    """Connected components on which ``Q`` annihilates constants (ICAR/ISAR at ``rho = 1``), else 0."""
    from scipy.sparse.csgraph import connected_components

    q1 = np.asarray(Q @ np.ones(Q.shape[0])).ravel()
    scale = max(float(np.abs(Q.diagonal()).max(initial=0.0)), 1e-300)
    n_comp, label = connected_components(sp.csr_matrix(Q), directed=False)
    null = 0
    for c in range(n_comp):
        if np.abs(q1[label == c]).max() <= tol * scale * Q.shape[0]:
            null += 1
    return null


def fixed_var_factor(Q: sp.spmatrix, observed: np.ndarray, *, center: bool, method: str = "auto", seed: int = 0):
    r"""Conditional variance factor of the unobserved spots with the observed ones fixed.

    :math:`d = \mathrm{diag}(Q_{mm}^{-1})`; with ``center`` the mean's flat prior adds :math:`v_i^2 / s` with
    :math:`v = Q_{mm}^{-1} (Q \mathbf 1)_m = \mathbf 1 + Q_{mm}^{-1} Q_{mo} \mathbf 1` (the coefficient of
    :math:`\mu` in the conditional mean) and :math:`s = \mathbf 1^T P_o \mathbf 1`, the information on :math:`\mu`
    in the observed values (0 for an intrinsic prior, which leaves the mean free: nothing is added).

    Parameters
    ----------
    Q
        ``(n, n)`` prior precision over observed and unobserved spots, every spot connected to an observed one.
    observed
        ``(n,)`` boolean.
    center, method, seed
        See above and :func:`smoother._core.uncertainty.inv_diag`.

    Returns
    -------
    :class:`VarFactor` over the unobserved spots (in the order of ``np.flatnonzero(~observed)``); ``dof`` is
    :math:`n_o - r` (module docstring), ``s`` and ``p1`` (:math:`P_o \mathbf 1`) serve :func:`reml_quadratic`.
    """
    from .uncertainty import inv_diag

    Q = _sym(Q)
    observed = np.asarray(observed, dtype=bool)
    o, m = np.flatnonzero(observed), np.flatnonzero(~observed)
    n_o = o.size
    null = _n_null(Q)
    dof = float(max(n_o - max(null, int(center)), 1))
    Qmm = Q[m][:, m].tocsr()
    Qmo = Q[m][:, o].tocsr()
    Qoo = Q[o][:, o].tocsr()
    if m.size == 0:
        p1 = np.asarray(Qoo @ np.ones(n_o)).ravel()
        return VarFactor(np.zeros(0), "exact", 0.0, dof, None, float(p1.sum()), p1)
    res = inv_diag(Qmm, method=method, seed=seed)
    d = res.diag.copy()
    F = SPDFactor(Qmm)
    w = F.solve(np.asarray(Qmo @ np.ones(n_o)).ravel())  # Q_mm^{-1} Q_mo 1
    p1 = np.asarray(Qoo @ np.ones(n_o)).ravel() - np.asarray(Qmo.T @ w).ravel()  # P_o 1
    s = float(p1.sum())
    scale = max(float(np.abs(Qoo.diagonal()).sum()), 1e-300)
    if s <= 1e-10 * scale:  # intrinsic prior: constants are free, the mean has no information and adds nothing
        s, p1 = 0.0, np.zeros(n_o)
    if center and s > 0:
        v = 1.0 + w
        d = d + v * v / s
    return VarFactor(d, res.method, float(res.max_rel_error), dof, None, s, p1)


def reml_quadratic(Q: sp.spmatrix, Z: np.ndarray, observed: np.ndarray, vf: VarFactor, *, center: bool) -> np.ndarray:
    r"""Per-gene :math:`\min_\mu (y_o - \mu)^T P_o (y_o - \mu)` from the imputed field (:func:`fixed_var_factor`).

    ``Z`` is ``(n, k)``: the observed values and the conditional means at the unobserved spots, both minus the
    plug-in mean :math:`\hat\mu` used by the fit (``center``), so that :math:`z^T Q z = q(\hat\mu)`; the minimum over
    :math:`\mu` is :math:`q(\hat\mu) - ((P_o \mathbf 1)^T r)^2 / s` with :math:`r = y_o - \hat\mu`. Divide by
    ``vf.dof`` for :math:`\hat\tau_g^2`.
    """
    Z = np.asarray(Z, dtype=np.float64)
    q = np.einsum("ij,ij->j", Z, sp.csr_matrix(Q) @ Z)
    if center and vf.s > 0:
        g = vf.p1 @ Z[np.asarray(observed, dtype=bool)]
        q = q - g * g / vf.s
    return np.maximum(q, 0.0)


def joint_var_factor(Q: sp.spmatrix, weights: np.ndarray, lam: float, *, center: bool, method="auto", seed=0):
    r"""Posterior variance factor of joint denoising and filling, :math:`M = D + \lambda Q`.

    :math:`d = \mathrm{diag}(M^{-1})` at every spot; with ``center`` the flat prior on the mean adds
    :math:`(1 - u_i)^2 / s`, :math:`u = M^{-1} D \mathbf 1`, :math:`s = \mathbf 1^T D \mathbf 1 - \mathbf 1^T D u`.
    The hat matrix of the observed values has trace :math:`\sum_{i \in o} (M^{-1})_{ii}` (plus
    :math:`1 - \mathbf 1^T D u / n_o` with ``center``), so :math:`\sigma_g^2 = \mathrm{RSS}_g / (n_o - \mathrm{tr})`.
    ``weights`` are the 0/1 observation indicators :math:`D`.
    """
    from .uncertainty import inv_diag

    dvec = np.asarray(weights, dtype=np.float64)
    n_o = float(dvec.sum())
    M = _sym(sp.diags(dvec) + lam * sp.csr_matrix(Q))
    res = inv_diag(M, method=method, seed=seed)
    d = res.diag.copy()
    trace = float(d[dvec > 0].sum())
    if center:
        u = SPDFactor(M).solve(dvec)
        s = float(n_o - dvec @ u)
        if s > 1e-10 * n_o:
            d = d + (1.0 - u) ** 2 / s
        trace = trace + 1.0 - float(dvec @ u) / n_o
    return VarFactor(d, res.method, float(res.max_rel_error), float(max(n_o - trace, 1e-12)), trace)


def enhance_var_factor(A: sp.spmatrix, Q: sp.spmatrix, lam: float, *, center: bool, method="auto", seed=0):
    r"""Posterior variance factor of the sub-spots in resolution enhancement, :math:`M = A^T A + \lambda Q`.

    :math:`d = \mathrm{diag}(M^{-1})`; with ``center`` (:math:`A \mathbf 1 = \mathbf 1`) the flat prior on the
    mean adds :math:`(1 - u_i)^2 / s`, :math:`u = M^{-1} A^T \mathbf 1`, :math:`s = n_{spots} - \mathbf 1^T A u`.
    The hat matrix of the spot values is :math:`H = A M^{-1} A^T` (plus :math:`(I - H) \mathbf 1\mathbf 1^T /
    n_{spots}` with ``center``, trace :math:`1 - \mathbf 1^T A u / n_{spots}`).

    Both diagonals come from one selected inversion of the sparse SPD matrix

    .. math::

        K = \begin{pmatrix} I & -A \\ -A^T & M + A^T A \end{pmatrix}, \qquad
        K^{-1} = \begin{pmatrix} I + A M^{-1} A^T & \cdot \\ \cdot & M^{-1} \end{pmatrix}

    (the Schur complement of its first block is :math:`M`), so :math:`\mathrm{tr}\, H` is the sum of the first
    ``n_spots`` diagonal entries minus ``n_spots``: exact, or with the measured error of probing beyond
    :func:`smoother._core.uncertainty.inv_diag`'s ``exact_max``.
    """
    from .uncertainty import inv_diag

    A = sp.csr_matrix(A, dtype=np.float64)
    n_s, n_sub = A.shape
    AtA = (A.T @ A).tocsr()
    M = _sym(AtA + lam * sp.csr_matrix(Q))
    K = sp.bmat([[sp.identity(n_s, format="csr"), -A], [-A.T, M + AtA]], format="csr")
    res = inv_diag(_sym(K), method=method, seed=seed)
    d = res.diag[n_s:].copy()
    trace = float((res.diag[:n_s] - 1.0).sum())
    if center:
        ones = np.ones(n_s)
        u = SPDFactor(M).solve(np.asarray(A.T @ ones).ravel())
        Au = float((A @ u).sum())
        s = float(n_s - Au)
        if s > 1e-10 * n_s:
            d = d + (1.0 - u) ** 2 / s
        trace = trace + 1.0 - Au / n_s
    return VarFactor(d, res.method, float(res.max_rel_error), float(max(n_s - trace, 1e-12)), trace)


# ----------------------------------------------------------------------------------------------------------------
# Lazy (dask) solves: gene blocks holding every spot, one factor per worker process
# ----------------------------------------------------------------------------------------------------------------
def _fill_block(Yb, M, R, token: str, center: bool, sys_rows, copy_rows, n_out: int, dtype):
    """One gene block: ``out = m``, ``out[copy_rows] = Y``, ``out[sys_rows] = m + M^{-1} R (Y - m)``."""
    from .blockwise import _dense, cached_factor

    Y = _dense(Yb).astype(np.float64)
    m = Y.mean(axis=0) if center and Y.shape[0] else np.zeros(Y.shape[1])
    out = np.empty((n_out, Y.shape[1]))
    out[:] = m
    if copy_rows is not None:
        out[copy_rows] = Y
    if sys_rows.size:
        fac = cached_factor(token, M)
        out[sys_rows] = m + fac.solve(R @ (Y - m))
    return out.astype(dtype, copy=False)


def lazy_fill(
    Y,
    M: sp.spmatrix,
    R: sp.spmatrix,
    *,
    sys_rows: np.ndarray,
    copy_rows: np.ndarray | None,
    n_out: int,
    center: bool,
    dtype,
    genes_per_block: int = 16,
):
    r"""Lazy :math:`X` (``n_out x G``) with :math:`X_{sys} = m + M^{-1} R (Y - m)`, :math:`X_{copy} = Y`, else
    :math:`m` (``m`` the gene's mean over the rows of ``Y`` with ``center``, else 0), for a dask ``Y``.

    ``Y`` is rechunked to gene blocks holding every spot (:func:`smoother._core.blockwise.column_blocks`); ``M``
    travels once as one graph key and is factored once per worker process
    (:func:`smoother._core.blockwise.cached_factor`). All three fits of :mod:`smoother.tl._impute` are of this form:
    fixed observations (:math:`M = Q_{mm}`, :math:`R = -Q_{mo}`), joint filling (:math:`M = D + \lambda Q`,
    :math:`R` the embedding of the observed spots) and enhancement (:math:`M = A^T A + \lambda Q`, :math:`R = A^T`).
    """
    import dask
    import dask.array as da

    from .blockwise import column_blocks

    M = _sym(M)
    R = sp.csr_matrix(R, dtype=np.float64)
    token = "fill-" + dask.base.tokenize(M.data, M.indices, M.indptr)
    Yc = column_blocks(Y, genes_per_block)
    M_key = dask.delayed(M, pure=True)
    R_key = dask.delayed(R, pure=True)
    rows = np.asarray(sys_rows, dtype=np.int64)
    copy_rows = None if copy_rows is None else np.asarray(copy_rows, dtype=np.int64)
    dt = np.dtype(dtype)
    if Yc.shape[1] == 0:
        return da.zeros((n_out, 0), dtype=dt)
    # one map_blocks over the gene blocks, so every input chunk is read once for all of them
    return da.map_blocks(
        _fill_block,
        Yc,
        M_key,
        R_key,
        token,
        center,
        rows,
        copy_rows,
        n_out,
        dt,
        dtype=dt,
        chunks=((n_out,), Yc.chunks[1]),
        meta=np.empty((0, 0), dtype=dt),
    )


# ----------------------------------------------------------------------------------------------------------------
# Choosing lambda of the joint fit by marginal likelihood (empirical Bayes)
# ----------------------------------------------------------------------------------------------------------------
def joint_loglik(Yo: np.ndarray, Q: sp.spmatrix, observed: np.ndarray, lam: float, *, null_dim: int = 0) -> float:
    r"""Profile log marginal likelihood of :math:`\lambda` for joint filling (each gene's :math:`\sigma_g` maximized).

    Model: :math:`x_g \sim N(0, \frac{\sigma_g^2}{\lambda} Q^{-1})`, :math:`y_{o,g} = x_{o,g} + \varepsilon`,
    :math:`\varepsilon \sim N(0, \sigma_g^2 I)`. With :math:`S_o` the selection of the observed rows and
    :math:`D = S_o^T S_o`, :math:`\det(I + S_o (\lambda Q)^{-1} S_o^T) = \det(D + \lambda Q) / \det(\lambda Q)`
    (determinant lemma) and :math:`(I + S_o (\lambda Q)^{-1} S_o^T)^{-1} = I - S_o (D + \lambda Q)^{-1} S_o^T`
    (Woodbury), so up to constants

    .. math::

        \ell(\lambda) = -\frac{n_o}{2}\sum_g \log \hat\sigma_g^2
        - \frac{G}{2}\left[\log\det(D + \lambda Q) - r \log\lambda\right],
        \qquad \hat\sigma_g^2 = y_{o,g}^T (y_{o,g} - \hat y_{o,g}) / n_o,

    :math:`\hat y = (D + \lambda Q)^{-1} D y` and :math:`r` the rank of :math:`Q`. ``Yo`` is ``(n_o, G)``, rows in
    the order of ``np.flatnonzero(observed)`` (centred when the mean is estimated).
    """
    from .linalg import superlu_symmetric

    observed = np.asarray(observed, dtype=bool)
    n = observed.size
    o = np.flatnonzero(observed)
    M = _sym(sp.diags(observed.astype(float)) + lam * sp.csr_matrix(Q)).tocsc()
    lu = superlu_symmetric(M)
    diag_u = lu.U.diagonal()
    if not (diag_u > 0).all():
        return -np.inf
    rhs = np.zeros((n, Yo.shape[1]))
    rhs[o] = Yo
    fit = lu.solve(rhs)[o]
    q = np.maximum(np.einsum("ij,ij->j", Yo, Yo - fit), 1e-300)
    r = n - null_dim
    logdet = float(np.log(diag_u).sum())
    return float(-0.5 * o.size * np.log(q / o.size).sum() - 0.5 * Yo.shape[1] * (logdet - r * np.log(lam)))


def joint_ml_lambda(
    Y,
    Q: sp.spmatrix,
    observed: np.ndarray,
    *,
    center: bool = True,
    lo: float = 1e-3,
    hi: float = 1e3,
    n_grid: int = 9,
    n_refine: int = 10,
    max_genes: int = 500,
    seed: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""The :math:`\lambda` maximizing :func:`joint_loglik` (log grid, then golden section in :math:`\log\lambda`).

    ``Y`` is ``(n_o, G)`` (dense or sparse), the observed rows; up to ``max_genes`` random genes enter (constant
    ones carry no information and are dropped). Returns ``(lam, lambdas, loglik)``.
    """
    rng = np.random.default_rng(seed)
    g = Y.shape[1]
    cols = np.sort(rng.choice(g, size=min(g, max_genes), replace=False))
    Ys = Y[:, cols]
    Ys = np.asarray(Ys.toarray() if sp.issparse(Ys) else Ys, dtype=np.float64)
    if center:
        Ys = Ys - Ys.mean(axis=0, keepdims=True)
    Ys = Ys[:, np.einsum("ij,ij->j", Ys, Ys) > 0]
    if Ys.shape[1] == 0:
        return 1.0, np.array([1.0]), np.array([0.0])
    Q = _sym(Q)
    null = _n_null(Q)
    from .uncertainty import maximize_log_lambda

    return maximize_log_lambda(lambda lam: joint_loglik(Ys, Q, observed, lam, null_dim=null), lo, hi, n_grid, n_refine)
