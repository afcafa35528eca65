r"""Gauss quadrature of quadratic forms :math:`v^T f(A) v` by the Lanczos process, for many functions at once.

For a symmetric matrix :math:`A` and a start vector :math:`v`, :math:`k` Lanczos steps give a tridiagonal
:math:`T_k` whose eigenvalues :math:`\theta_j` and squared first eigenvector components :math:`\tau_j` are the
nodes and weights of the :math:`k`-point Gauss rule of the spectral measure of :math:`v` (Golub & Meurant,
*Matrices, Moments and Quadrature*, 2010):

.. math::

    v^T f(A) v \approx \lVert v \rVert^2 \sum_{j=1}^k \tau_j f(\theta_j).

One run serves every :math:`f`; for the smoother :math:`S_\lambda = (I + \lambda Q)^{-1}` every
:math:`\lambda` of a grid is a different :math:`f`, so one Lanczos run per start vector gives
:math:`y^T (I - S_\lambda)^2 y` (a gene's residual sum of squares) and, with Rademacher probes,
:math:`\mathrm{tr}\, S_\lambda` and :math:`\mathrm{tr}\, S_\lambda^2` (stochastic Lanczos quadrature) for all
:math:`\lambda` together, with matrix-vector products by the sparse :math:`Q` only: no factorization.

The recurrence keeps three blocks of vectors (no basis is stored, no reorthogonalization); in floating point the
Gauss rule still converges (Knizhnerman 1996; Greenbaum 1989: finite-precision Lanczos is exact Lanczos on a
slightly larger matrix). Each column stops on its own once the values of the caller's check functions change by
less than ``tol`` (relative to :math:`\lVert v\rVert^2`) between two checks, or on breakdown (an invariant
subspace: the rule is then exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["GaussRules", "lanczos_rules"]


@dataclass
class GaussRules:
    """Gauss rules of ``m`` start vectors: ``nodes`` and ``weights`` of shape ``(m, k)`` (zero-weight padding
    where a column stopped early); ``steps`` the Lanczos steps each column took. ``weights`` include
    :math:`\\lVert v\\rVert^2`, so ``(weights * f(nodes)).sum(axis=1)`` is :math:`v^T f(A) v`."""

    nodes: np.ndarray
    weights: np.ndarray
    steps: np.ndarray

    def quad(self, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """:math:`v_c^T f(A) v_c` for every column ``c`` (``(m,)``)."""
        return (self.weights * f(self.nodes)).sum(axis=1)


def _gauss(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and (unit-mass) weights of the Gauss rules of a batch of tridiagonals: ``alpha`` ``(m, k)``,
    ``beta`` ``(m, k - 1)``."""
    m, k = alpha.shape
    T = np.zeros((m, k, k))
    i = np.arange(k)
    T[:, i, i] = alpha
    if k > 1:
        T[:, i[:-1], i[1:]] = beta
        T[:, i[1:], i[:-1]] = beta
    theta, U = np.linalg.eigh(T)
    return theta, U[:, 0, :] ** 2


def lanczos_rules(
    A: sp.spmatrix,
    V0: np.ndarray,
    check: Callable[[np.ndarray], np.ndarray],
    *,
    tol: float = 1e-7,
    max_steps: int = 300,
    every: int = 8,
    batch: int | None = None,
) -> GaussRules:
    r"""Gauss rules of :math:`v^T f(A) v` for every column ``v`` of ``V0`` (one Lanczos run per column).

    Parameters
    ----------
    A
        Symmetric ``(n, n)`` sparse matrix (or anything with ``@``).
    V0
        ``(n, m)`` start vectors (float64; a zero column gives a zero rule).
    check
        ``check(nodes)`` maps an array of nodes ``(..., k)`` to values ``(..., k, c)`` of ``c`` test functions;
        a column has converged when every :math:`\sum_j \tau_j f_c(\theta_j)` moved by at most ``tol`` (unit
        mass) over the last ``every`` steps.
    tol, max_steps, every
        Stopping rule; ``max_steps`` is also capped at ``n``.
    batch
        Columns run together (memory: three ``(n, batch)`` float64 blocks); ``None``: all.

    Returns
    -------
    GaussRules
    """
    V0 = np.asarray(V0, dtype=np.float64)
    n, m = V0.shape
    max_steps = int(max(1, min(max_steps, n)))
    batch = m if batch is None else max(1, int(batch))
    rules: list[tuple[np.ndarray, np.ndarray, int]] = [None] * m  # type: ignore[list-item]
    for b0 in range(0, m, batch):
        cols = np.arange(b0, min(m, b0 + batch))
        for c, rule in zip(cols, _run(A, V0[:, cols], check, tol, max_steps, every), strict=True):
            rules[c] = rule
    k = max(1, max(r[0].size for r in rules))
    nodes, weights, steps = np.zeros((m, k)), np.zeros((m, k)), np.zeros(m, dtype=int)
    for c, (th, w, s) in enumerate(rules):
        nodes[c, : th.size], weights[c, : w.size], steps[c] = th, w, s
    return GaussRules(nodes, weights, steps)


def _orthogonalize(w: np.ndarray, v: np.ndarray, vp: np.ndarray, bp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One three-term step in place: ``a = diag(v^T w)``, ``w -= v a + vp bp``; returns ``a`` and the column norms of
    the new ``w``. Row blocks small enough for the cache: two passes over memory instead of seven."""
    n, m = w.shape
    rows = max(256, 2**16 // max(m, 1))
    a = np.zeros(m)
    for r0 in range(0, n, rows):
        a += np.einsum("ij,ij->j", v[r0 : r0 + rows], w[r0 : r0 + rows])
    b2 = np.zeros(m)
    for r0 in range(0, n, rows):
        ws = w[r0 : r0 + rows]
        ws -= v[r0 : r0 + rows] * a
        ws -= vp[r0 : r0 + rows] * bp
        b2 += np.einsum("ij,ij->j", ws, ws)
    return a, np.sqrt(b2)


def _run(A, V0: np.ndarray, check, tol: float, max_steps: int, every: int):
    """Lanczos on the columns of ``V0`` together; yields ``(nodes, weights, steps)`` per column, in order."""
    n, m = V0.shape
    nrm2 = np.einsum("ij,ij->j", V0, V0)
    out: list = [None] * m
    active = np.flatnonzero(nrm2 > 0)
    for c in np.flatnonzero(nrm2 <= 0):
        out[c] = (np.zeros(1), np.zeros(1), 0)
    if active.size == 0:
        return out
    v = V0[:, active] / np.sqrt(nrm2[active])
    vp = np.zeros_like(v)
    bp = np.zeros(active.size)
    alpha = np.zeros((active.size, max_steps))
    beta = np.zeros((active.size, max_steps))
    last = None  # check values at the previous check, per active column
    for j in range(max_steps):
        w = A @ v
        a, b = _orthogonalize(w, v, vp, bp)
        alpha[:, j], beta[:, j] = a, b
        k = j + 1
        scale = np.abs(alpha[:, :k]).max(axis=1) + beta[:, :k].max(axis=1)
        broke = b <= 1e-12 * np.maximum(scale, 1e-300)
        done = broke | (k == max_steps)
        if (k % every == 0 or done.any()) and not done.all():
            theta, tau = _gauss(alpha[:, :k], beta[:, : k - 1])
            vals = np.einsum("mk,mkc->mc", tau, check(theta))
            if last is not None and k % every == 0:
                done |= np.abs(vals - last).max(axis=1) <= tol
            last = vals
        if done.any():
            theta, tau = _gauss(alpha[done, :k], beta[done, : k - 1])
            for i, c in enumerate(active[done]):
                out[c] = (theta[i], tau[i] * nrm2[c], k)
            keep = ~done
            if not keep.any():
                break
            active, alpha, beta = active[keep], alpha[keep], beta[keep]
            last = None if last is None else last[keep]
            w, v, b = w[:, keep], v[:, keep], b[keep]
        np.divide(w, b, out=w)
        vp, v, bp = v, w, b
    return out
