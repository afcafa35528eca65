r"""Count-aware deconvolution: a Poisson / negative-binomial likelihood with an identity link, a per-spot
library size, a per-gene platform effect and the spatial quadratic penalty. Arrays in, arrays out.

Model
-----
``Y`` is ``(n_spots, n_genes)`` raw counts :math:`y_{ng}`, ``S`` the ``(n_genes, n_types)`` reference
signatures (mean expression profile of each type; each column is rescaled to sum to 1 over all given genes).
On the informative genes :math:`g \in \mathcal G` (:func:`select_genes`) the mean count is

.. math::

    \mu_{ng} = s_n\, r_g \sum_k S_{gk}\, z_{nk}, \qquad z_{nk} \ge 0,

with :math:`s_n` the library size of spot :math:`n` (its total count over all given genes unless given),
:math:`r_g > 0` the platform effect of gene :math:`g` between the reference and the spatial assay (estimated,
normalized by :math:`\sum_g \bar S_g r_g = \sum_g \bar S_g` over :math:`\mathcal G`, :math:`\bar S_g` the mean
of gene :math:`g` over the types, so that ``r = 1`` is "no platform effect") and :math:`z_{nk}` the *share* of
spot :math:`n`'s counts that comes from type :math:`k` (:math:`\sum_k z_{nk} \approx 1` when the model fits).
Reported are the ``proportions`` :math:`z_{nk} / \sum_j z_{nj}` (rows sum to 1) and the ``abundance``
:math:`s_n z_{nk}`: the expected counts of spot :math:`n` from type :math:`k`, which keeps the spot's scale
(doubling a spot's counts doubles its abundances).

Objective (minimized over :math:`Z \ge 0` and, with ``platform_effect=True``, :math:`r`):

.. math::

    F(Z, r) = \frac{1}{N \bar s} \sum_{n} \sum_{g \in \mathcal G} \ell(y_{ng}, \mu_{ng})
      + \frac{\lambda}{N} \sum_k z_{:k}^T Q\, z_{:k},

with :math:`\bar s` the mean library size (so :math:`\lambda` does not depend on the sequencing depth) and
:math:`\ell` the negative log-likelihood without terms free of :math:`\mu`:

- ``'poisson'``: :math:`\ell = \mu - y \log \mu`. Convex in :math:`Z` (identity link): for a fixed :math:`r`
  the solution is a global optimum, certified by the KKT residual.
- ``'nb'`` (the default): :math:`\ell = (y + \theta_g) \log(\theta_g + \mu) - y \log \mu` (variance
  :math:`\mu + \mu^2/\theta_g`, :math:`\phi_g = 1/\theta_g` reported as ``dispersion``). **Not** convex in
  :math:`\mu` (its second derivative :math:`y/\mu^2 - (y+\theta)/(\theta+\mu)^2` is negative at
  :math:`y = 0`), so the result is a KKT (stationary) point, not certified globally optimal. It is found by
  projected Newton steps with the exact Hessian where that is positive definite on the free variables and
  the Fisher information :math:`\sum_g s^2 b_g b_g^T / (\mu + \mu^2/\theta)` elsewhere, with an Armijo
  search on the NB objective itself (every step decreases it). Its score equations are those of
  quasi-likelihood with the NB variance, so high, overdispersed genes are down-weighted. (The platform-effect
  step under NB is a majorization-minimization step: the concave part :math:`(y+\theta)\log(\theta+\mu)`
  is replaced by its tangent, which leaves a closed form in :math:`r` and still decreases the objective.)

The penalty acts on the shares :math:`z` (depth-free, ≈ proportions), not on the abundances, so spatial
differences in sequencing depth are not smoothed away. :math:`Q` is any sparse PSD precision (e.g. the ICAR
precision of a spatial graph); it is applied by matrix-vector products only.

Solvers
-------
- :math:`\lambda = 0`: spots are independent. Each is solved by a batched projected Newton method
  (Bertsekas' :math:`\varepsilon`-active set, exact Poisson Hessian :math:`\sum_g y\, b_g b_g^T / v_g^2`,
  Armijo search along the projection arc), chunk by chunk, stopping each spot when its projected gradient is
  below ``tol`` relative to the gradient of its :math:`\sum_g \mu` term. Cost per iteration
  :math:`O(n\,|\mathcal G|\,K^2)` on dense row chunks; no ``n x G`` copy of sparse data. Per chunk, the
  per-gene terms (value, gradient weights, Fisher and exact curvature weights) are one compiled pass
  (numba, :func:`_k_nb`) on numpy's vectorized logarithms, and the ``K x K`` blocks one float32 BLAS
  product with the pairwise products of the signature columns (:meth:`_Counts.gram`).
- :math:`\lambda > 0`: sequential quadratic programming. The likelihood is replaced by its second-order
  expansion (per-spot ``K x K`` blocks), the resulting quadratic with the exact spatial term and
  :math:`Z \ge 0` is solved by FISTA (Jacobi scaling, Gershgorin step, KKT stopping: :func:`_solve_block_qp`;
  each iteration one compiled pass over the spots, the blocks kept in float32), and a backtracking search on
  :math:`F` accepts the step. Stops on the KKT residual of :math:`F` itself (float64).
- Platform effect: block-coordinate descent, alternating the :math:`Z` problem above with the exact
  minimization over :math:`r` for fixed :math:`Z` (closed form up to the Lagrange multiplier of the
  normalization, found by a 1-D Newton search). Each block step decreases :math:`F`; with more than
  ``platform_spots`` spots, :math:`r` (and the NB dispersion) are estimated on a random subsample of that many
  spots and then held fixed for the final fit over all spots.
- Dispersion ``'auto'``: per-gene method of moments on the Poisson fit,
  :math:`\hat\phi_g = \sum_n [(y - \mu)^2 - \mu] / \sum_n \mu^2` clipped to ``[1e-4, 100]``,
  :math:`\theta_g = 1/\hat\phi_g`.
- ``lambda_spatial='auto'``: held-out genes. The genes are split at random into ``auto_folds`` folds; for
  every :math:`\lambda` of the grid the shares are fitted on the other folds (same library sizes and
  normalization) and scored by the model's negative log-likelihood of the left-out fold. Only the first
  fold is scored by default (:data:`AUTO_SCORED_FOLDS`): on all five DLPFC generators and the 10^4-spot
  lattice of ``benchmarks/deconv_suite.py`` it chose the same :math:`\lambda` as the sum over both folds of
  a 2-fold split (flash_model: 1.6e-4 instead of 0, same RMSE to 4 digits) at half the cost. Gene-level
  noise is independent between genes, so unlike count thinning (whose halves share a spot's
  overdispersion, which always favoured :math:`\lambda = 0` in our measurements) the criterion sees the
  benefit of smoothing. The grid always contains 0, so the chosen :math:`\lambda` is never worse than
  :math:`\lambda = 0` by this criterion. The fit on all genes uses the grid's minimizer times the fraction
  of genes each training fit saw (``1 - 1/auto_folds``): with more data less smoothing is needed (measured
  on the DLPFC nb_mixture problem: best fixed :math:`\lambda` on all genes 1e-3, minimizer of the criterion
  on half the genes 3e-3). The scored fits stop at a relative KKT residual of :data:`AUTO_TOL` (1e-4;
  1e-3 was too loose: the fits at small :math:`\lambda` did not move from their start and 'auto' chose 0).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .deconv import ConvergenceWarning, SpatialTerm, kkt_residual

_log = logging.getLogger("smoother")

__all__ = ["CountDeconvResult", "check_counts", "fit_counts", "select_genes"]

LIKELIHOODS = ("poisson", "nb")
_THETA_MIN, _THETA_MAX = 1e-2, 1e4
COARSE_AUTO_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
GENE_BUDGET = 3_000_000  # spots x genes of the default gene set (speed), see default_n_genes
DENSE_CACHE = 1 << 23  # sparse counts up to this many spots x genes (64 MB) are densified once
AUTO_TOL = 1e-4  # relative KKT tolerance of the fits scored by lambda_spatial="auto"
QP_FORCING = 0.01  # QP tolerance of an SQP step = this x the KKT residual (0.1: one SQP pass more on 1e4 spots)
START_TOL = 1e-2  # relative KKT tolerance of the lambda = 0 fit that starts the SQP over all spots (see fit_counts)
AUTO_SCORED_FOLDS = 1  # folds whose held-out genes 'auto' scores (None: all); see the module docstring


def default_n_genes(n_genes: int, n_types: int, n_spots: int) -> int:
    """Genes used by default: ``min(G, max(30 K, 300, GENE_BUDGET / n_spots))``.

    Measured on the DLPFC generators (350 genes, 3,611 spots): all genes beat the 270 markers of
    :func:`select_genes` (RMSE 0.056 vs 0.059 on nb_mixture, 0.063 vs 0.063 on cell_sum at lambda 0); on a
    10-type lattice with 2,000 genes and 10,000 spots, 300 genes cost 4 CPU s (RMSE 0.072) and 1,553 genes
    19 CPU s (RMSE 0.065). Large problems therefore use the best 300 (or 30 per type) marker genes.
    """
    return int(min(n_genes, max(30 * n_types, 300, GENE_BUDGET // max(n_spots, 1))))


# --------------------------------------------------------------------------------------------------------------
# checks and gene selection
# --------------------------------------------------------------------------------------------------------------
def check_counts(Y, *, name: str = "adata.X") -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``Y`` holds finite, non-negative, integer counts.

    ``Y`` is a dense array or a scipy sparse matrix (only its stored values are read). Values within
    ``1e-6`` (relative) of an integer count as integers (float32 storage of counts).
    """
    vals = Y.data if sp.issparse(Y) else np.asarray(Y)
    if vals.size == 0:
        return
    if vals.ndim == 2 and vals.size > 10_000_000:  # large dense input: check in row chunks (no full-size copies)
        step = max(1, 10_000_000 // max(vals.shape[1], 1))
        for a in range(0, vals.shape[0], step):
            check_counts(vals[a : a + step], name=name)
        return
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        msg = f"Expected `{name}` to hold numeric counts, found dtype {vals.dtype}."
        raise ValueError(msg)
    if np.issubdtype(vals.dtype, np.integer) or vals.dtype == np.bool_:
        if vals.dtype != np.bool_ and vals.min() < 0:
            msg = f"`{name}` has negative values (min {vals.min()}); the count model needs raw counts >= 0."
            raise ValueError(msg)
        return
    if not np.isfinite(vals).all():
        msg = f"`{name}` contains NaN or inf; the count model needs finite raw counts."
        raise ValueError(msg)
    vmin = float(vals.min())
    if vmin < 0:
        msg = (
            f"`{name}` has negative values (min {vmin:g}); the count model needs raw counts >= 0 "
            "(pass the raw counts, e.g. a 'counts' layer, not scaled or centered data)."
        )
        raise ValueError(msg)
    frac = np.abs(vals - np.round(vals))
    bad = frac > 1e-6 * np.maximum(1.0, np.abs(vals))
    if bad.any():
        ex = float(vals.ravel()[np.argmax(bad.ravel())])
        msg = (
            f"`{name}` has {int(bad.sum())} non-integer value(s) (e.g. {ex:g}); the count model needs raw counts. "
            "Pass the raw counts (e.g. a 'counts' layer) or choose a model for normalized data."
        )
        raise ValueError(msg)


def _normalize_signatures(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        msg = f"Expected signatures of shape (n_genes, n_types), found shape {S.shape}."
        raise ValueError(msg)
    if not np.isfinite(S).all() or (S < 0).any():
        msg = "The reference signatures must be finite and non-negative."
        raise ValueError(msg)
    tot = S.sum(axis=0)
    if (tot <= 0).any():
        msg = f"Reference type(s) {np.flatnonzero(tot <= 0).tolist()} have no expression on the given genes."
        raise ValueError(msg)
    return S / tot


def select_genes(
    S: np.ndarray,
    gene_names=None,
    *,
    n_genes: int | None = None,
    min_fold: float = 1.5,
    min_expr: float = 0.1,
    type_names=None,
    return_scores: bool = False,
):
    r"""Informative genes of a reference: a boolean mask over the genes of ``S``.

    Rule. Each column of ``S`` is rescaled to sum 1. A gene's *marker type* is the type where it is highest;
    its *fold* is that value over the mean of the other types (``+ 1e-9``); its *score* is the Poisson
    information it carries about the mixture, :math:`\sum_k (S_{gk} - \bar S_g)^2 / \bar S_g` (large for
    high, type-specific genes). Genes below ``min_expr`` times the mean gene level (:math:`1/G`) in their
    marker type are dropped. The kept genes are the markers (``fold >= min_fold``), ranked by score within
    each marker type and taken in turn from every type (balanced), at most ``n_genes`` (default: all
    markers). When fewer than ``min(G, 20 K)`` markers pass, the best remaining genes by score fill up to
    that number. A type without any marker is named in a ``UserWarning`` (it will be hard to tell apart).

    Parameters
    ----------
    S
        ``(n_genes, n_types)`` non-negative signatures.
    gene_names
        Gene names (only for the warning and the returned scores' index; may be ``None``).
    n_genes
        Maximum number of genes (``None``: every marker).
    min_fold
        Minimum fold of a marker over the mean of the other types.
    min_expr
        Minimum level in the marker type, relative to the mean gene level :math:`1/G`.
    type_names
        Names of the types for the warning.
    return_scores
        Also return a dict with ``fold``, ``score`` and ``marker_type`` per gene.

    Returns
    -------
    ``(n_genes,)`` boolean mask (and the dict with ``return_scores=True``).
    """
    S = _normalize_signatures(S)
    G, K = S.shape
    if min_fold < 1.0:
        msg = f"Expected `min_fold` >= 1, found {min_fold}."
        raise ValueError(msg)
    if n_genes is not None and (int(n_genes) != n_genes or n_genes < 1):
        msg = f"Expected `n_genes` to be a positive integer or None, found {n_genes!r}."
        raise ValueError(msg)
    top = np.argmax(S, axis=1)
    smax = S[np.arange(G), top]
    others = (S.sum(axis=1) - smax) / max(K - 1, 1)
    fold = (smax + 1e-9) / (others + 1e-9) if K > 1 else np.ones(G)
    mean = S.mean(axis=1)
    score = np.divide(((S - mean[:, None]) ** 2).sum(axis=1), mean, out=np.zeros(G), where=mean > 0)
    expressed = smax >= min_expr / G
    marker = expressed & (fold >= min_fold)
    limit = int(marker.sum()) if n_genes is None else min(int(n_genes), G)
    per_type = [np.flatnonzero(marker & (top == k)) for k in range(K)]
    per_type = [idx[np.argsort(-score[idx], kind="stable")] for idx in per_type]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(p) for p in per_type):
        for p in per_type:
            if depth < len(p) and len(chosen) < limit:
                chosen.append(int(p[depth]))
        depth += 1
    floor = min(G, 20 * K) if n_genes is None else min(G, int(n_genes))
    if len(chosen) < floor:
        rest = np.setdiff1d(np.flatnonzero(expressed | (smax > 0)), chosen)
        rest = rest[np.argsort(-score[rest], kind="stable")]
        chosen.extend(int(g) for g in rest[: floor - len(chosen)])
    mask = np.zeros(G, dtype=bool)
    mask[chosen] = True
    missing = [k for k in range(K) if len(per_type[k]) == 0]
    if missing and K > 1:
        names = [str(type_names[k]) if type_names is not None else str(k) for k in missing]
        warnings.warn(
            f"Reference type(s) {names} have no marker gene (fold >= {min_fold} over the other types); "
            "they will be hard to tell apart from the others.",
            UserWarning,
            stacklevel=2,
        )
    if return_scores:
        return mask, {"fold": fold, "score": score, "marker_type": top, "gene_names": gene_names}
    return mask


# --------------------------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CountDeconvResult:
    """Solution of :func:`fit_counts` (spots x types arrays)."""

    abundance: np.ndarray  # (n, K) expected counts per type: library_size * shares
    proportions: np.ndarray  # (n, K) rows sum to 1
    library_size: np.ndarray  # (n,)
    gene_effect: np.ndarray  # (G_sel,) platform effect r of the genes used (1 without platform effect)
    dispersion: np.ndarray | None  # (G_sel,) NB phi = 1/theta (variance mu + phi mu^2), None for Poisson
    lambda_spatial: float
    objective: dict
    converged: bool
    n_iter: int
    kkt_residual: float
    seconds: float
    auto: dict | None = None
    genes: np.ndarray | None = None  # (G,) boolean mask of the genes used
    shares: np.ndarray | None = None  # (n, K) z itself
    likelihood: str = "poisson"
    n_empty: int = 0  # spots without counts on the genes used (uniform proportions)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# compiled kernels (numba, on first use): one pass over a chunk's (n, G) arrays instead of ~20 numpy temporaries
# --------------------------------------------------------------------------------------------------------------
def _k_nb(Y, V, LT, LV, s, theta, hess, exact, f, Qw, Wf, Wx):  # pragma: no cover - compiled by numba
    """NB terms of a chunk: f (objective per spot), Qw (d f / d v per gene), Wf / Wx (Fisher / exact weights).

    ``V`` > 0 (floored by the caller), ``LT = log(theta + s V)`` and ``LV = log V`` (numpy's vectorized log is
    several times faster than a scalar log in this loop).
    """
    n, G = Y.shape
    for i in range(n):
        si = s[i]
        s2 = si * si
        fl = 1e-8 / G * max(si, 1.0)
        acc = 0.0
        for g in range(G):
            y = Y[i, g]
            v = V[i, g]
            th = theta[g]
            mu = si * v
            itm = 1.0 / (th + mu)
            acc += (y + th) * LT[i, g] - y * LV[i, g]
            r = y / v
            a = (y + th) * itm * si
            Qw[i, g] = a - r
            if hess:
                Wf[i, g] = s2 * th * itm / max(mu, fl)
                if exact:
                    Wx[i, g] = r / v - a * si * itm
        f[i] = acc


def _k_poisson(Y, V, LV, hess, ylogv, R, Wf):  # pragma: no cover - compiled by numba
    """Poisson terms of a chunk (``V`` > 0, ``LV = log V``): sum_g y log v per spot, y / v and y / v^2."""
    n, G = Y.shape
    for i in range(n):
        acc = 0.0
        for g in range(G):
            y = Y[i, g]
            v = V[i, g]
            acc += y * LV[i, g]
            r = y / v
            R[i, g] = r
            if hess:
                Wf[i, g] = r / v
        ylogv[i] = acc


def _k_value(Y, LT, LV, theta, nb, f):  # pragma: no cover - compiled by numba
    """Objective per spot without the Poisson sum-of-means term (added by the caller): NB or -sum y log v."""
    n, G = Y.shape
    for i in range(n):
        acc = 0.0
        if nb:
            for g in range(G):
                y = Y[i, g]
                acc += (y + theta[g]) * LT[i, g] - y * LV[i, g]
        else:
            for g in range(G):
                acc -= Y[i, g] * LV[i, g]
        f[i] = acc


def _k_rates(V, s, theta, T):  # pragma: no cover - compiled by numba
    """T = theta + s V row by row (the NB log argument); returns min(V) (``inf`` when empty)."""
    n, G = V.shape
    vmin = np.inf
    for i in range(n):
        si = s[i]
        for g in range(G):
            v = V[i, g]
            vmin = min(vmin, v)
            T[i, g] = theta[g] + si * v
    return vmin


def _k_unpack(flat, iu0, iu1, H):  # pragma: no cover - compiled by numba
    """Symmetric (n, K, K) blocks from their upper triangles (n, K (K + 1) / 2)."""
    n, m = flat.shape
    for i in range(n):
        for p in range(m):
            x = flat[i, p]
            H[i, iu0[p], iu1[p]] = x
            H[i, iu1[p], iu0[p]] = x


def _k_blockmv(H, Z, out):  # pragma: no cover - compiled by numba
    """out[n] = H[n] @ Z[n] for every spot (symmetric blocks: summed over rows, which vectorizes)."""
    n, K = Z.shape
    for i in range(n):
        for a in range(K):
            out[i, a] = 0.0
        for b in range(K):
            zb = Z[i, b]
            for a in range(K):
                out[i, a] += H[i, b, a] * zb


def _k_qp_kkt(H, indptr, indices, data, qs, Z, wC, w, c):  # pragma: no cover - compiled by numba
    """Squared norm of the projected QP gradient w H[n] Z[n] + c qs * (Q Z)[n] - wC[n] (Q in CSR, H symmetric)."""
    n, K = Z.shape
    ss = 0.0
    tmp = np.empty(K)
    hz = np.empty(K)
    for i in range(n):
        for a in range(K):
            tmp[a] = 0.0
            hz[a] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            q = data[p]
            for a in range(K):
                tmp[a] += q * Z[j, a]
        for b in range(K):
            zb = Z[i, b]
            for a in range(K):
                hz[a] += H[i, b, a] * zb
        for a in range(K):
            gr = w * hz[a] + c * qs[a] * tmp[a] - wC[i, a]
            if not Z[i, a] > 0.0:
                gr = min(gr, 0.0)
            ss += gr * gr
    return ss


def _k_fista(H, indptr, indices, data, qs, Yp, Z, wC, step, w, c, Zn):  # pragma: no cover - compiled by numba
    """One projected gradient step Zn = max(Yp - step * grad(Yp), 0); returns sum((Yp - Zn) (Zn - Z)).

    The blocks are symmetric: ``H[n] y`` is summed over rows (contiguous, vectorizes).
    """
    n, K = Z.shape
    tmp = np.empty(K)
    hy = np.empty(K)
    dot = 0.0
    for i in range(n):
        for a in range(K):
            tmp[a] = 0.0
            hy[a] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            q = data[p]
            for a in range(K):
                tmp[a] += q * Yp[j, a]
        for b in range(K):
            yb = Yp[i, b]
            for a in range(K):
                hy[a] += H[i, b, a] * yb
        for a in range(K):
            y = Yp[i, a]
            z = y - step[i, a] * (w * hy[a] + c * qs[a] * tmp[a] - wC[i, a])
            z = max(z, 0.0)
            Zn[i, a] = z
            dot += (y - z) * (z - Z[i, a])
    return dot


def _k_momentum(Zn, Z, beta, Yp):  # pragma: no cover - compiled by numba
    """Yp = Zn + beta (Zn - Z)."""
    n, K = Z.shape
    for i in range(n):
        for a in range(K):
            Yp[i, a] = Zn[i, a] + beta * (Zn[i, a] - Z[i, a])


def _k_dense_rows(indptr, indices, data, ids, out):  # pragma: no cover - compiled by numba
    """out[r] = dense row ids[r] of a CSR matrix (out zero-filled by the caller; duplicates are summed)."""
    for r in range(len(ids)):
        i = ids[r]
        for p in range(indptr[i], indptr[i + 1]):
            out[r, indices[p]] += data[p]


def _k_newton_dir(H, Hx, use_x, free, dH, tr, g, d):  # pragma: no cover - compiled by numba
    """Projected Newton directions d[n] = -M[n]^{-1} g[n], one LDL^T solve per spot.

    ``M`` is the block with the rows / columns of the bound variables replaced by their diagonal ``dH`` and
    ``1e-10 tr`` added to the free diagonal; built from the exact block ``Hx`` where ``use_x`` and every LDL^T
    pivot exceeds ``1e-8 tr`` (positive definite with margin, as :func:`_pd_blocks`), else from ``H``.
    """
    n, K = g.shape
    M = np.empty((K, K))
    L = np.empty(K)
    y = np.empty(K)
    for i in range(n):
        thr = 1e-8 * tr[i]
        for attempt in range(2):
            exact = attempt == 0
            if exact and not use_x[i]:
                continue
            good = True
            for a in range(K):
                for b in range(K):
                    if free[i, a] and free[i, b]:
                        x = Hx[i, a, b] if exact else H[i, a, b]
                    else:
                        x = 0.0
                    if exact and not np.isfinite(x):
                        good = False
                    M[a, b] = x
                M[a, a] += 1e-10 * tr[i] if free[i, a] else dH[i, a]
            if not good:
                continue
            for j in range(K):
                dj = M[j, j]
                if exact and not dj > thr:
                    good = False
                    break
                for p in range(j + 1, K):
                    L[p] = M[p, j] / dj
                for p in range(j + 1, K):
                    for q in range(j + 1, p + 1):
                        M[p, q] -= L[p] * M[q, j]
                for p in range(j + 1, K):
                    M[p, j] = L[p]
            if not good:
                continue
            for p in range(K):  # L y = -g, then D, then L^T
                acc = -g[i, p]
                for q in range(p):
                    acc -= M[p, q] * y[q]
                y[p] = acc
            for p in range(K):
                y[p] /= M[p, p]
            for p in range(K - 1, -1, -1):
                acc = y[p]
                for q in range(p + 1, K):
                    acc -= M[q, p] * y[q]
                y[p] = acc
            for p in range(K):
                d[i, p] = y[p]
            break


def _k_pd(H, tr, ok):  # pragma: no cover - compiled by numba
    """ok[n]: every LDL^T pivot of block n exceeds 1e-8 tr[n] (blocks with a non-finite entry fail)."""
    n, K, _ = H.shape
    A = np.empty((K, K))
    for i in range(n):
        good = True
        for a in range(K):
            for b in range(K):
                x = H[i, a, b]
                if not np.isfinite(x):
                    good = False
                A[a, b] = x
        thr = 1e-8 * tr[i]
        if good:
            for j in range(K):
                d = A[j, j]
                if not d > thr:
                    good = False
                    break
                for p in range(j + 1, K):
                    c = A[p, j] / d
                    for q in range(j + 1, K):
                        A[p, q] -= c * A[q, j]
        ok[i] = good


def _k_ylogy_mu(indptr, indices, data, s, Z, B):  # pragma: no cover - compiled by numba
    """sum over the stored counts y > 0 of y log(y / mu), mu = s_n z_n . b_g (the deviance's sparse part)."""
    n = len(indptr) - 1
    K = Z.shape[1]
    tot = 0.0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            y = data[p]
            if y > 0.0:
                g = indices[p]
                v = 0.0
                for k in range(K):
                    v += Z[i, k] * B[g, k]
                tot += y * np.log(y / (s[i] * v))
    return tot


_KERNEL_FUNCS = (
    _k_rates,
    _k_nb,
    _k_poisson,
    _k_value,
    _k_unpack,
    _k_blockmv,
    _k_qp_kkt,
    _k_fista,
    _k_momentum,
    _k_pd,
    _k_newton_dir,
    _k_dense_rows,
    _k_ylogy_mu,
)
_KERNELS: dict = {}


def _kernel(name: str):
    """The numba-compiled kernel ``name`` (compiled on first use, cached on disk when possible)."""
    if not _KERNELS:
        import numba

        for fn in _KERNEL_FUNCS:
            try:  # an unwritable cache location must not break the computation
                _KERNELS[fn.__name__] = numba.njit(cache=True, nogil=True, error_model="numpy")(fn)
            except Exception:  # noqa: BLE001  (numba raises various errors when it cannot cache)
                _KERNELS[fn.__name__] = numba.njit(cache=False, nogil=True, error_model="numpy")(fn)
    return _KERNELS[name]


# --------------------------------------------------------------------------------------------------------------
# the problem on the chosen genes
# --------------------------------------------------------------------------------------------------------------
class _Counts:
    """Counts on the genes used (CSR or dense), library sizes and the current gene effect / NB dispersion."""

    def __init__(self, Y, S: np.ndarray, s: np.ndarray, likelihood: str, chunk: int) -> None:
        self.Y = Y  # (n, G) CSR float32/float64 or dense
        self.S = S  # (G, K) normalized over all genes, restricted to the genes used
        self.s = s
        self.N, self.G = Y.shape
        self.K = S.shape[1]
        self.sbar = float(np.mean(s)) if len(s) and np.mean(s) > 0 else 1.0
        self.likelihood = likelihood
        self.theta: np.ndarray | None = None
        self.H_exact: np.ndarray | None = None
        self.chunk = max(1, int(chunk))
        self._dense: np.ndarray | None = None
        self.set_r(np.ones(self.G))

    def set_r(self, r: np.ndarray) -> None:
        self.r = r
        self.B = S_r = self.S * r[:, None]
        self.colsum = S_r.sum(axis=0)  # (K,) sum_g b_gk
        K = self.K
        # products b_gi b_gj for i <= j (float32: the Hessian only steers Newton steps; the KKT test is float64)
        self.iu = np.triu_indices(K)
        self.P = np.ascontiguousarray((S_r[:, self.iu[0]] * S_r[:, self.iu[1]]).astype(np.float32))

    def gram(self, Wt: np.ndarray, dtype=np.float64) -> np.ndarray:
        """``sum_g Wt[n, g] b_g b_g^T`` for every row of ``Wt``, ``(n, K, K)`` of ``dtype`` (computed in float32)."""
        flat = np.asarray(Wt, dtype=np.float32) @ self.P
        H = np.empty((Wt.shape[0], self.K, self.K), dtype=dtype)
        _kernel("_k_unpack")(flat, self.iu[0], self.iu[1], H)
        return H

    def rows(self, start: int, stop: int, idx: np.ndarray | None = None) -> np.ndarray:
        """Dense float64 rows of the counts (read only: callers never write into them).

        Sparse counts of at most :data:`DENSE_CACHE` entries are densified once and kept (every Newton / SQP
        pass reads all rows; re-densifying them cost ~8 % of a pass).
        """
        if self._dense is None and sp.issparse(self.Y) and self.N * self.G <= DENSE_CACHE:
            self._dense = np.asarray(self.Y.toarray(), dtype=np.float64)
        if self._dense is not None:
            return self._dense[start:stop] if idx is None else self._dense[idx]
        if sp.issparse(self.Y):
            ids = np.arange(start, stop) if idx is None else np.asarray(idx, dtype=np.int64)
            out = np.zeros((len(ids), self.G))
            Y = self.Y
            _kernel("_k_dense_rows")(Y.indptr, Y.indices, Y.data, ids, out)
            return out
        blk = self.Y[start:stop] if idx is None else self.Y[idx]
        return np.asarray(blk, dtype=np.float64)

    def weights(self, Yc: np.ndarray, sc: np.ndarray, Va: np.ndarray) -> np.ndarray | None:
        """MM weights c of the NB surrogate at the anchor rates ``Va`` (None for Poisson: c = 1)."""
        if self.likelihood == "poisson":
            return None
        th = self.theta
        return (Yc + th) / (th + sc[:, None] * Va)

    def local(self, Yc, sc, Zc, *, hess: bool, exact: bool = True, hdtype=np.float64):
        r"""Objective (per spot, without terms free of mu), gradient and curvature blocks for a chunk of spots.

        Curvature: the exact Hessian for Poisson, the Fisher information
        :math:`\sum_g s^2 b_g b_g^T / (\mu + \mu^2/\theta)` for NB (positive definite; the NB Hessian is not).
        Values and gradients in float64; the curvature weights in float32 (they only steer the Newton steps), the
        blocks of dtype ``hdtype``.
        The per-gene terms are computed in one compiled pass over the chunk (:func:`_k_nb`, :func:`_k_poisson`).
        """
        Yc = np.ascontiguousarray(Yc, dtype=np.float64)
        sc = np.ascontiguousarray(sc, dtype=np.float64)
        V, LT, LV, bad = self._logs(Yc, sc, Zc)
        n, G = V.shape
        glin = sc[:, None] * self.colsum[None, :]
        Wf = np.empty((n, G) if hess else (0, 0), dtype=np.float32)
        H = None
        if self.likelihood == "poisson":
            ylogv = np.empty(n)
            R = np.empty((n, G))
            _kernel("_k_poisson")(Yc, V, LV, hess, ylogv, R, Wf)
            f = sc * (Zc @ self.colsum) - ylogv
            g = glin - R @ self.B
            if hess:
                H = self.gram(Wf, hdtype)
        else:
            f = np.empty(n)
            Qw = np.empty((n, G))
            ex = hess and exact
            Wx = np.empty((n, G) if ex else (0, 0), dtype=np.float32)
            _kernel("_k_nb")(Yc, V, LT, LV, sc, self.theta, hess, ex, f, Qw, Wf, Wx)
            g = Qw @ self.B
            if hess:
                H = self.gram(Wf, hdtype)  # Fisher information weights s^2 theta / (mu (theta + mu))
                # exact Hessian weights y / v^2 - s^2 (y + theta) / (theta + mu)^2 (callers use it where PD)
                self.H_exact = self.gram(Wx, hdtype) if ex else None
        if bad is not None:
            f[bad] = np.inf
        return f, g, H, glin

    def _logs(self, Yc, sc, Zc):
        """``V = Z B^T`` floored at 1e-300, ``log(theta + s V)`` (NB; else None), ``log V`` and the spots with a
        count where the model has mean 0 (their objective is +inf; None: no such spot)."""
        nb = self.likelihood != "poisson"
        V = Zc @ self.B.T  # BLAS (a compiled K-term loop was twice slower)
        if nb:
            LT = np.empty(V.shape)
            vmin = _kernel("_k_rates")(V, sc, self.theta, LT)
        else:
            vmin = V.min() if V.size else np.inf
        bad = None
        if V.size and not vmin > 0:  # rare: masks needed
            bad = ((Yc > 0) & ~(V > 0)).any(axis=1)
            bad = bad if bad.any() else None
            np.maximum(V, 1e-300, out=V)
            if nb:
                np.add(self.theta, sc[:, None] * V, out=LT)
        LV = np.log(V)
        if nb:
            np.log(LT, out=LT)
        else:
            LT = None
        return V, LT, LV, bad

    def value(self, Yc, sc, Zc) -> np.ndarray:
        Yc = np.ascontiguousarray(Yc, dtype=np.float64)
        sc = np.ascontiguousarray(sc, dtype=np.float64)
        V, LT, LV, bad = self._logs(Yc, sc, Zc)
        f = np.empty(V.shape[0])
        nb = self.likelihood != "poisson"
        _kernel("_k_value")(Yc, LT if nb else LV, LV, self.theta if nb else np.zeros(self.G), nb, f)
        if not nb:
            f += sc * (Zc @ self.colsum)
        if bad is not None:
            f[bad] = np.inf
        return f

    def nll(self, Z: np.ndarray, floor: bool = False) -> float:
        """The negative log-likelihood without terms free of mu, summed over spots.

        ``floor``: means below ``1e-8 s / G`` are raised to it (held-out genes may have no expression in the
        types of a spot; the NLL stays finite).
        """
        tot = 0.0
        for a in range(0, self.N, self.chunk):
            b = min(self.N, a + self.chunk)
            Yc, sc = self.rows(a, b), self.s[a:b]
            if floor:
                V = np.maximum(Z[a:b] @ self.B.T, 1e-8 / max(self.G, 1))
                pos = Yc > 0
                if self.likelihood == "poisson":
                    v = sc * V.sum(axis=1) - np.einsum("ng,ng->n", Yc, np.where(pos, np.log(V), 0.0))
                else:
                    th = self.theta
                    v = np.einsum("ng,ng->n", Yc + th, np.log(th + sc[:, None] * V)) - np.einsum(
                        "ng,ng->n", Yc, np.where(pos, np.log(V), 0.0)
                    )
                tot += float(np.sum(v))
            else:
                tot += float(np.sum(self.value(Yc, sc, Z[a:b])))
            tot -= float(np.sum(Yc.sum(axis=1) * np.log(np.maximum(sc, 1e-300))))
        return tot


def _pd_blocks(H: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Which ``K x K`` blocks of ``H`` are safely positive definite: every pivot of their LDL^T factorization
    exceeds ``1e-8 tr`` (compiled loop over the blocks, :func:`_k_pd`; ``O(n K^3)``, cheaper than ``eigvalsh``).

    A pivot is a diagonal entry of a Schur complement, so it is at least the smallest eigenvalue: every block
    whose smallest eigenvalue exceeds ``1e-8 tr`` passes.
    """
    ok = np.empty(H.shape[0], dtype=np.bool_)
    _kernel("_k_pd")(np.asarray(H, dtype=np.float64), np.asarray(tr, dtype=np.float64), ok)
    return ok


def _blockmv(H: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``H[n] @ Z[n]`` for every spot (``(n, K, K)`` symmetric blocks times ``(n, K)``)."""
    out = np.empty(Z.shape)
    _kernel("_k_blockmv")(H, np.ascontiguousarray(Z, dtype=np.float64), out)
    return out


def _proj_grad(Z: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.where(Z > 0, g, np.minimum(g, 0.0))


def _newton_chunk(prob: _Counts, Yc, sc, Z, tol, max_iter):
    """Projected Newton for independent spots (lambda = 0). Returns (Z, n_iter, converged mask).

    The first trial point of each line search is evaluated with its gradient and curvature: when it is
    accepted (nearly always), they are those of the next iterate, so an iteration costs one evaluation.
    """
    n, K = Z.shape
    active = np.ones(n, dtype=bool)
    it = 0
    done = np.zeros(n, dtype=bool)
    stalled = 0
    # cache of (f, g, H, H_exact, glin) per spot, valid where `have` (evaluated at the current Z)
    cf = np.empty(n)
    cg = np.empty((n, K))
    cgl = np.empty((n, K))
    cH = np.empty((n, K, K))
    cHx = np.empty((n, K, K)) if prob.likelihood != "poisson" else None
    have = np.zeros(n, dtype=bool)
    cex = np.zeros(n, dtype=bool)  # the cached H_exact is the exact Hessian (not None)

    def evaluate(ids, Zi, exact):
        f, g, H, glin = prob.local(Yc[ids], sc[ids], Zi, hess=True, exact=exact)
        cf[ids], cg[ids], cH[ids], cgl[ids] = f, g, H, glin
        if cHx is not None:
            if prob.H_exact is not None:
                cHx[ids] = prob.H_exact
            cex[ids] = prob.H_exact is not None
        have[ids] = True

    for it in range(1, max_iter + 1):  # noqa: B007 (returned)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        miss = idx[~have[idx]]
        if miss.size:
            evaluate(miss, Z[miss], it > 5)
        Za = Z[idx]
        f, g, H, glin = cf[idx], cg[idx], cH[idx], cgl[idx]
        pg = _proj_grad(Za, g)
        ref = np.maximum(np.linalg.norm(glin, axis=1), 1e-300)
        ok = np.linalg.norm(pg, axis=1) <= tol * ref
        done[idx[ok]] = True
        active[idx[ok]] = False
        keep = ~ok
        if not keep.any():
            active[idx] = False
            break
        idx, Za, f, g, H = idx[keep], Za[keep], f[keep], g[keep], H[keep]
        dH = np.einsum("nii->ni", H)
        tr = np.maximum(dH.sum(axis=1), 1e-300)
        dH = np.maximum(dH, 1e-12 * tr[:, None])
        # epsilon-active set (Bertsekas): variables at/near 0 whose gradient pushes them out
        wproj = np.linalg.norm(Za - np.maximum(Za - g / dH, 0.0), axis=1)
        eps = np.minimum(1e-3 * np.maximum(Za.sum(axis=1), 1e-300), wproj)
        bound = (Za <= eps[:, None]) & (g > 0)
        free = ~bound
        # NB: the exact Hessian where it is positive definite (LDL^T pivots > 1e-8 tr), else the Fisher blocks
        use_x = cex[idx] if cHx is not None else np.zeros(len(idx), dtype=bool)
        Hx = cHx[idx] if cHx is not None and use_x.any() else np.empty((0, K, K))
        d = np.empty_like(g)
        _kernel("_k_newton_dir")(H, Hx, use_x, free, dH, tr, np.ascontiguousarray(g), d)
        # a Newton decrement below the rounding of f: nothing left to gain at this precision
        tiny = -np.einsum("nk,nk->n", g, d) <= 1e-20 * np.maximum(np.abs(f), 1.0)
        if tiny.any():
            done[idx[tiny]] = True
            active[idx[tiny]] = False
            nt = ~tiny
            if not nt.any():
                break
            idx, Za, f, g, d = idx[nt], Za[nt], f[nt], g[nt], d[nt]
        # Armijo search along the projection arc; the full step is evaluated with its derivatives (cached)
        Zt = np.maximum(Za + d, 0.0)
        evaluate(idx, Zt, it + 1 > 5)
        ft = cf[idx]
        slack = 1e-12 * np.maximum(np.abs(f), 1.0)
        acc = ft <= f + 1e-4 * np.einsum("nk,nk->n", g, Zt - Za) + slack
        Znew = Za.copy()
        Znew[acc] = Zt[acc]
        pend = ~acc
        have[idx[pend]] = False  # their cache now holds the rejected point: re-evaluated at their new iterate
        alpha = np.full(len(idx), 0.5)
        for _ in range(39):
            p = np.flatnonzero(pend)
            if p.size == 0:
                break
            Zt = np.maximum(Za[p] + alpha[p, None] * d[p], 0.0)
            ft = prob.value(Yc[idx[p]], sc[idx[p]], Zt)
            # Armijo, with a slack at the rounding level of f (near the optimum f cannot resolve the decrease)
            acc = ft <= f[p] + 1e-4 * np.einsum("nk,nk->n", g[p], Zt - Za[p]) + slack[p]
            Znew[p[acc]] = Zt[acc]
            pend[p[acc]] = False
            alpha[p[~acc]] *= 0.5
        # spots where no step decreased the objective are at the limit of floating point
        if pend.any():
            stalled += int(pend.sum())
            active[idx[pend]] = False
            done[idx[pend]] = True
        Z[idx] = Znew
    return Z, it, done


def _init_shares(prob: _Counts, Yc: np.ndarray, sc: np.ndarray) -> np.ndarray:
    tot = prob.colsum.mean()
    share = np.divide(Yc.sum(axis=1), sc * tot, out=np.zeros(len(sc)), where=sc > 0)
    return np.repeat(np.maximum(share, 0.0)[:, None] / prob.K, prob.K, axis=1)


def _fit_independent(prob: _Counts, Z: np.ndarray, tol: float, max_iter: int, spots=None, show=False):
    """lambda = 0: projected Newton chunk by chunk (spots = an index subset, default all)."""
    idx_all = np.arange(prob.N) if spots is None else spots
    n_it = 0
    n_done = 0
    for a in range(0, len(idx_all), prob.chunk):
        ids = idx_all[a : a + prob.chunk]
        contiguous = spots is None
        Yc = prob.rows(ids[0], ids[-1] + 1) if contiguous else prob.rows(0, 0, idx=ids)
        sc = prob.s[ids]
        Zc = Z[ids].copy()
        Zc, it, done = _newton_chunk(prob, Yc, sc, Zc, tol, max_iter)
        Z[ids] = Zc
        n_it = max(n_it, it)
        n_done += int(done.sum())
    return Z, n_it, n_done == len(idx_all)


def _global_grad(prob: _Counts, Z: np.ndarray, *, hess: bool, exact: bool = True):
    """Data-term value (per spot), gradient, Hessian blocks and the mu-part of the gradient, all spots.

    The blocks are float32: they are built from float32 weights anyway and only define the SQP's quadratic model
    (the steps are accepted and the KKT residual is measured on the float64 objective and gradient); float32
    halves the memory traffic of the QP iterations, which read all ``N K^2`` entries each time.
    """
    N, K = Z.shape
    f = np.empty(N)
    g = np.empty((N, K))
    glin = np.empty((N, K))
    H = np.empty((N, K, K), dtype=np.float32) if hess else None
    for a in range(0, N, prob.chunk):
        b = min(N, a + prob.chunk)
        Yc, sc = prob.rows(a, b), prob.s[a:b]
        fa, ga, Ha, gl = prob.local(Yc, sc, Z[a:b], hess=hess, exact=exact, hdtype=np.float32)
        f[a:b], g[a:b], glin[a:b] = fa, ga, gl
        if hess:
            if prob.likelihood != "poisson" and prob.H_exact is not None:  # the exact NB Hessian where PD
                tr = np.maximum(np.einsum("nii->n", Ha), 1e-300)
                use = _pd_blocks(prob.H_exact, tr)
                Ha[use] = prob.H_exact[use]
            H[a:b] = Ha
    return f, g, H, glin


def _data_value(prob: _Counts, Z: np.ndarray) -> float:
    tot = 0.0
    for a in range(0, prob.N, prob.chunk):
        b = min(prob.N, a + prob.chunk)
        tot += float(np.sum(prob.value(prob.rows(a, b), prob.s[a:b], Z[a:b])))
    return tot


def _solve_block_qp(Hr, Cq, Z0, spatial: SpatialTerm, w: float, tol: float, max_iter: int = 5000):
    r"""Minimize :math:`w \sum_n (\tfrac12 z_n^T H_n z_n - c_n^T z_n) + \text{spatial}(Z)` over :math:`Z \ge 0`.

    FISTA with Jacobi scaling and gradient-based restart, as :func:`smoother._core.deconv.solve_quadratic`, but
    with the step from the Gershgorin bound of the scaled Hessian (guaranteed, within ~15 % of the largest
    eigenvalue on these problems) instead of ~30 power iterations per call, and the same stopping rule: the
    KKT residual below ``tol`` times the norm of the gradient at ``Z = 0``. Returns ``(Z, n_iter, residual)``.
    """
    c = 2.0 * spatial.coef
    Q = spatial.Qs[0] if len(spatial.Qs) == 1 else None

    def hess(Z):
        h = _blockmv(Hr, Z)
        h *= w
        h += c * spatial.mul(Z)
        return h

    d = w * np.einsum("nii->ni", Hr) + c * spatial.diag()
    d = np.maximum(d, max(1e-300, 1e-8 * float(d.max())) if d.size else 1.0)
    isd = 1.0 / np.sqrt(d)
    rows = w * _blockmv(np.abs(Hr), isd) * isd
    if Q is not None:
        aq = abs(Q) if sp.issparse(Q) else np.abs(Q)
        rows += c * (aq @ isd) * isd * np.abs(spatial.s)
    else:
        for k, q in enumerate(spatial.Qs):
            aq = abs(q) if sp.issparse(q) else np.abs(q)
            rows[:, k] += c * abs(spatial.s[k]) * (aq @ isd[:, k]) * isd[:, k]
    step = 1.0 / (max(float(rows.max()), 1e-300) * d)
    wC = w * Cq
    scale = max(float(np.linalg.norm(wC)), 1e-300)
    Z = np.maximum(Z0, 0.0)
    if Q is not None and sp.issparse(Q) and Z.flags.c_contiguous:
        return _fista_compiled(Hr, sp.csr_matrix(Q), spatial.s, Z, wC, step, w, c, scale, tol, max_iter)
    Yp = Z.copy()
    t = 1.0
    res = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        Zn = Yp - step * (hess(Yp) - wC)
        np.maximum(Zn, 0.0, out=Zn)
        if np.sum((Yp - Zn) * (Zn - Z)) > 0:  # gradient-based adaptive restart (O'Donoghue & Candes 2015)
            t = 1.0
            Yp = Zn.copy()
        else:
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            Yp = Zn + ((t - 1.0) / tn) * (Zn - Z)
            t = tn
        Z = Zn
        if it % 5 == 0:
            res = kkt_residual(Z, hess(Z) - wC, True) / scale
            if res <= tol:
                break
    return Z, it, res


def _fista_compiled(Hr, Q, qs, Z, wC, step, w, c, scale, tol, max_iter):
    """The FISTA loop of :func:`_solve_block_qp` with one sparse ``Q``, each iteration one compiled pass."""
    Hr = np.ascontiguousarray(Hr) if Hr.dtype in (np.float32, np.float64) else Hr.astype(np.float64)
    args = (Q.indptr, Q.indices, np.asarray(Q.data, dtype=np.float64), np.ascontiguousarray(qs, dtype=np.float64))
    step = np.ascontiguousarray(step, dtype=np.float64)
    wC = np.ascontiguousarray(wC, dtype=np.float64)
    k_step, k_mom, k_kkt = _kernel("_k_fista"), _kernel("_k_momentum"), _kernel("_k_qp_kkt")
    Yp = Z.copy()
    Zn = np.empty_like(Z)
    t = 1.0
    res = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        dot = k_step(Hr, *args, Yp, Z, wC, step, w, c, Zn)
        if dot > 0:  # gradient-based adaptive restart (O'Donoghue & Candes 2015)
            t = 1.0
            Yp[...] = Zn
        else:
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            k_mom(Zn, Z, (t - 1.0) / tn, Yp)
            t = tn
        Z, Zn = Zn, Z
        if it % 5 == 0:
            res = float(np.sqrt(k_kkt(Hr, *args, Z, wC, w, c))) / scale  # kkt_residual of the QP
            if res <= tol:
                break
    return Z, it, res


def _fit_spatial(
    prob: _Counts, Z: np.ndarray, spatial: SpatialTerm, tol: float, max_iter: int, exact_after=0, state=None
):
    """lambda > 0: SQP with the exact spatial quadratic; returns (Z, n_iter, converged, relative KKT).

    The full step of each line search is evaluated with its gradient and curvature: when it is accepted
    (nearly always), they are reused by the next iteration, so an iteration costs one pass over the counts.
    ``state``: a dict; ``state['cache']`` (the data term's value, gradient and blocks at ``Z``) is used as the
    first evaluation when present, and is set to those at the returned ``Z`` on convergence (they do not depend
    on lambda, so a path of fits over increasing lambda saves one pass per fit).
    """
    w = 1.0 / (prob.N * prob.sbar)
    c = 2.0 * spatial.coef
    res = np.inf
    it = 0
    cache = None if state is None else state.pop("cache", None)
    for it in range(1, max_iter + 1):
        # NB: the exact Hessian where PD, the Fisher information elsewhere
        f, g, H, glin = _global_grad(prob, Z, hess=True, exact=it > exact_after) if cache is None else cache
        cache = None
        QZ = spatial.mul(Z)
        F = w * float(f.sum()) + spatial.coef * float(np.sum(Z * QZ))
        gfull = w * g + c * QZ
        scale = max(float(np.linalg.norm(w * glin)), 1e-300)
        res = kkt_residual(Z, gfull, True) / scale
        if res <= tol:
            if state is not None:
                state["cache"] = (f, g, H, glin)
            return Z, it - 1, True, res
        tr = np.maximum(np.einsum("nii->n", H, dtype=np.float64), 1e-300)
        diag = np.arange(prob.K)
        H[:, diag, diag] += (1e-10 * tr)[:, None]
        Cq = _blockmv(H, Z) - g
        Zq, _, _ = _solve_block_qp(H, Cq, Z, spatial, w, tol=max(0.1 * tol, min(1e-2, QP_FORCING * res)))
        del H, Cq  # (N, K, K): freed before the trial point's blocks are built
        D = Zq - Z
        slope = float(np.sum(gfull * D))
        if slope >= 0:
            return Z, it, res <= tol, res
        trial = _global_grad(prob, Zq, hess=True, exact=it + 1 > exact_after)
        if w * float(trial[0].sum()) + spatial.value(Zq) <= F + 1e-4 * slope:
            Z, cache = Zq, trial
            continue
        del trial
        alpha = 0.5
        for _ in range(39):
            Zt = Z + alpha * D
            Ft = w * _data_value(prob, Zt) + spatial.value(Zt)
            if Ft <= F + 1e-4 * alpha * slope:
                break
            alpha *= 0.5
        else:
            return Z, it, False, res
        Z = np.maximum(Zt, 0.0)
    f, g, H, glin = _global_grad(prob, Z, hess=False) if cache is None else cache
    gfull = w * g + c * spatial.mul(Z)
    res = kkt_residual(Z, gfull, True) / max(float(np.linalg.norm(w * glin)), 1e-300)
    return Z, it, res <= tol, res


def _platform_step(prob: _Counts, Z: np.ndarray, spots=None) -> np.ndarray:
    """Exact minimization over r for fixed Z under sum_g Sbar_g r_g = sum_g Sbar_g."""
    ids = np.arange(prob.N) if spots is None else spots
    Ysum = np.zeros(prob.G)
    T = np.zeros(prob.G)
    for a in range(0, len(ids), prob.chunk):
        sub = ids[a : a + prob.chunk]
        Yc = prob.rows(0, 0, idx=sub) if spots is not None else prob.rows(sub[0], sub[-1] + 1)
        sc = prob.s[sub]
        Ysum += Yc.sum(axis=0)
        U = Z[sub] @ prob.S.T  # (n, G) mixture without r
        if prob.likelihood == "poisson":
            T += sc @ U
        else:
            Cw = prob.weights(Yc, sc, Z[sub] @ prob.B.T)
            T += np.einsum("n,ng,ng->g", sc, Cw, U)
    sbar_g = prob.S.mean(axis=1)
    target = float(sbar_g.sum())
    T = np.maximum(T, 1e-300)
    # h(nu) = sum_g sbar_g Ysum_g / (T_g + nu sbar_g) - target, decreasing in nu
    nu = 0.0
    lo = -float(np.min(T / np.maximum(sbar_g, 1e-300))) * (1 - 1e-12)
    for _ in range(100):
        den = T + nu * sbar_g
        h = float(np.sum(sbar_g * Ysum / den)) - target
        dh = -float(np.sum(sbar_g**2 * Ysum / den**2))
        if abs(h) <= 1e-12 * target or dh == 0:
            break
        nn = nu - h / dh
        if nn <= lo:
            nn = 0.5 * (nu + lo)
        nu = nn
    r = Ysum / (T + nu * sbar_g)
    # genes without counts keep a tiny positive effect (r = 0 would make them uninformative, not infeasible)
    r = np.maximum(r, 1e-8 * max(float(r.max()), 1e-300))
    return r * (target / float(np.sum(sbar_g * r)))


def _estimate_dispersion(prob: _Counts, Z: np.ndarray, spots=None) -> np.ndarray:
    ids = np.arange(prob.N) if spots is None else spots
    num = np.zeros(prob.G)
    den = np.zeros(prob.G)
    for a in range(0, len(ids), prob.chunk):
        sub = ids[a : a + prob.chunk]
        Yc = prob.rows(0, 0, idx=sub) if spots is not None else prob.rows(sub[0], sub[-1] + 1)
        mu = prob.s[sub, None] * (Z[sub] @ prob.B.T)
        num += np.sum((Yc - mu) ** 2 - mu, axis=0)
        den += np.sum(mu**2, axis=0)
    phi = np.divide(num, den, out=np.full(prob.G, 1e-4), where=den > 0)
    return np.clip(phi, 1.0 / _THETA_MAX, 1.0 / _THETA_MIN)


# --------------------------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------------------------
def _as_counts_matrix(Y):
    """CSR or ndarray; integer counts stay integers here (converted after the gene selection, :func:`_as_float`)."""
    Y = sp.csr_matrix(Y) if sp.issparse(Y) else np.asarray(Y)
    if Y.dtype == np.bool_ or not np.issubdtype(Y.dtype, np.number):
        Y = Y.astype(np.float64)
    return Y


def _as_float(Y):
    """The counts on the genes used as float32 / float64 (CSR stays CSR)."""
    if Y.dtype in (np.float32, np.float64):
        return sp.csr_matrix(Y) if sp.issparse(Y) else Y
    return sp.csr_matrix(Y, dtype=np.float64) if sp.issparse(Y) else np.asarray(Y, dtype=np.float64)


def fit_counts(
    Y,
    S: np.ndarray,
    *,
    Q=None,
    lambda_spatial: float | str = 0.0,
    likelihood: str = "nb",
    dispersion="auto",
    platform_effect: bool = False,
    library_size=None,
    genes=None,
    tol: float = 1e-6,
    max_iter: int = 200,
    platform_iter: int = 30,
    platform_spots: int = 20_000,
    random_state: int = 0,
    auto_grid=None,
    auto_folds: int = 2,
    auto_spots: int = 5000,
    chunk_size: int = 4096,
    progress: bool = False,
    check: bool = True,
) -> CountDeconvResult:
    r"""Fit the count model of this module (see the module docstring for the model and the solvers).

    Parameters
    ----------
    Y
        ``(n_spots, n_genes)`` raw counts, dense or scipy sparse (read in row chunks of ``chunk_size``).
    S
        ``(n_genes, n_types)`` reference signatures on the same genes (columns are rescaled to sum 1).
    Q
        ``(n_spots, n_spots)`` sparse precision of the spatial prior (needed when ``lambda_spatial != 0``).
    lambda_spatial
        Strength :math:`\lambda \ge 0` of the penalty on the shares, or ``'auto'`` (held-out genes).
    likelihood
        ``'nb'`` (default; Newton / Fisher scoring to a KKT point) or ``'poisson'`` (convex: the global optimum).
        Measured on the DLPFC generators of ``benchmarks/deconv_generators.py`` at lambda 0, NB with per-gene
        dispersion is far more accurate on overdispersed counts (see the module docstring).
    dispersion
        NB only: ``'auto'`` (per-gene moments), a scalar :math:`\phi` or a ``(n_genes,)`` array of :math:`\phi`
        (variance :math:`\mu + \phi \mu^2`) on all given genes.
    platform_effect
        Estimate the per-gene platform effect :math:`r` (default ``False``: :math:`r = 1`). Measured on the
        DLPFC generators with the NB likelihood, estimating :math:`r` made the proportions worse even where the
        spots carry a platform effect (cell_sum: RMSE 0.063 -> 0.067; nb_mixture 0.059 -> 0.065): the
        per-gene dispersion already down-weights genes with a platform bias, and :math:`r` trades off against
        the overall composition. It recovers :math:`r` well on Poisson data (see the tests).
    library_size
        ``(n_spots,)`` library sizes (default: the total count of each spot over all given genes).
    genes
        Boolean mask or indices of the genes used in the likelihood (default: every gene when
        :func:`default_n_genes` allows it, else :func:`select_genes` with that many genes).
    tol
        Relative KKT tolerance (projected gradient over the gradient of the :math:`\sum \mu` term).
    max_iter
        Maximum Newton / SQP iterations per fit.
    platform_iter
        Maximum alternations between :math:`Z` and :math:`r`.
    platform_spots
        Spots used to estimate :math:`r` and the dispersion (a random subset when there are more).
    random_state
        Seed of the subsamples, the spot window and the gene folds of 'auto'.
    auto_grid
        Candidate :math:`\lambda` for ``'auto'`` (0 is always added); default :data:`COARSE_AUTO_GRID` refined
        around its minimizer by half a decade on each side.
    auto_folds
        Number of gene folds for ``'auto'`` (the training fits see ``1 - 1/auto_folds`` of the genes; the first
        :data:`AUTO_SCORED_FOLDS` folds are scored).
    auto_spots
        With more spots, ``'auto'`` scores the grid on a spatially contiguous window of this many spots
        (breadth-first from a random spot on the graph of ``Q``, with ``Q`` restricted to it); the objective is
        normalized per spot, so the chosen :math:`\lambda` applies to all spots.
    chunk_size
        Spots per dense chunk.
    progress
        Print a line per stage.
    check
        Run :func:`check_counts` on ``Y``.
    """
    t0 = time.perf_counter()
    if isinstance(lambda_spatial, str):
        if lambda_spatial != "auto":
            msg = f"Expected `lambda_spatial` to be a number >= 0 or 'auto', found {lambda_spatial!r}."
            raise ValueError(msg)
        if Q is None:
            msg = "`lambda_spatial='auto'` needs a precision `Q`."
            raise ValueError(msg)
    elif isinstance(lambda_spatial, bool) or not np.isfinite(float(lambda_spatial)) or float(lambda_spatial) < 0:
        msg = f"Expected `lambda_spatial` to be a finite number >= 0 or 'auto', found {lambda_spatial!r}."
        raise ValueError(msg)
    if likelihood not in LIKELIHOODS:
        msg = f"Unknown likelihood {likelihood!r}: expected one of {list(LIKELIHOODS)}."
        raise ValueError(msg)
    Y = _as_counts_matrix(Y)
    if check:
        check_counts(Y, name="Y")
    N, Gall = Y.shape
    Sn = _normalize_signatures(S)
    if Sn.shape[0] != Gall:
        msg = f"Y has {Gall} genes but the signatures have {Sn.shape[0]}."
        raise ValueError(msg)
    K = Sn.shape[1]
    if genes is None:
        nd = default_n_genes(Gall, K, N)
        if nd >= Gall:
            mask = Sn.sum(axis=1) > 0
        else:
            mask = select_genes(Sn, n_genes=nd)
    else:
        genes = np.asarray(genes)
        if genes.dtype == bool:
            if genes.shape != (Gall,):
                msg = f"Expected a boolean `genes` mask of length {Gall}, found shape {genes.shape}."
                raise ValueError(msg)
            mask = genes.copy()
        else:
            mask = np.zeros(Gall, dtype=bool)
            mask[genes.astype(np.int64)] = True
    Ssel = Sn[mask]
    if (Ssel.sum(axis=1) <= 0).any():
        keep = Ssel.sum(axis=1) > 0
        mask[np.flatnonzero(mask)[~keep]] = False
        Ssel = Sn[mask]
    if library_size is None:
        s = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()
    else:
        s = np.asarray(library_size, dtype=np.float64).ravel()
        if s.shape != (N,) or not np.isfinite(s).all() or (s < 0).any():
            msg = f"Expected `library_size` of shape ({N},) with finite values >= 0."
            raise ValueError(msg)
    Ysel = _as_float(Y if mask.all() else Y[:, np.flatnonzero(mask)])
    if lambda_spatial != "auto" and float(lambda_spatial) > 0 and Q is None:
        msg = "`lambda_spatial` > 0 needs a precision `Q`."
        raise ValueError(msg)

    prob = _Counts(Ysel, Ssel, s, likelihood, chunk_size)
    rng = np.random.default_rng(random_state)
    fixed_phi = None
    if likelihood == "nb" and not (isinstance(dispersion, str) and dispersion == "auto"):
        phi = (
            np.broadcast_to(np.asarray(dispersion, dtype=np.float64).ravel(), (Gall,))
            if np.ndim(dispersion)
            else np.full(Gall, float(dispersion))
        )
        if np.ndim(dispersion) and np.size(dispersion) not in (1, Gall):
            msg = f"Expected `dispersion` of length {Gall} (all given genes), found {np.size(dispersion)}."
            raise ValueError(msg)
        if not np.isfinite(phi).all() or (phi < 0).any():
            msg = "Expected a finite `dispersion` >= 0."
            raise ValueError(msg)
        fixed_phi = np.clip(phi[mask], 1.0 / _THETA_MAX, None)
        prob.theta = 1.0 / fixed_phi

    # ---- stage 1: gene effect r and dispersion on (a subsample of) the spots, with lambda = 0
    sub = None if N <= platform_spots else np.sort(rng.choice(N, platform_spots, replace=False))
    Z = np.empty((N, K))
    for a in range(0, N, prob.chunk):
        b = min(N, a + prob.chunk)
        Z[a:b] = _init_shares(prob, prob.rows(a, b), s[a:b])
    n_iter = 0
    hist = []
    fitted = False  # Z holds stage-1 shares of every spot
    need_phi = likelihood == "nb" and fixed_phi is None
    if platform_effect or need_phi:
        lik = prob.likelihood
        if need_phi:
            prob.likelihood = "poisson"
        Zs = Z.copy()
        # without a platform effect this fit only feeds the moments of the dispersion and the start of the final
        # fit: 1e-4 is plenty for both (the final fit stops at `tol` on its own)
        stage1_tol = max(tol, 1e-8) if platform_effect else max(tol, 1e-4)
        for outer in range(max(1, platform_iter) if platform_effect else 1):
            Zs, it, _ = _fit_independent(prob, Zs, stage1_tol, max_iter, spots=sub)
            n_iter += it
            if not platform_effect:
                break
            obj = prob.nll(Zs) if sub is None else np.nan
            r_new = _platform_step(prob, Zs, spots=sub)
            change = float(np.max(np.abs(np.log(r_new) - np.log(prob.r))))
            prob.set_r(r_new)
            hist.append({"iter": outer, "nll": obj, "max_log_change_r": change, "newton_iter": it})
            if progress:
                _log.info("    fit_counts: platform step %d, max |log r change| = %.2e", outer, change)
            if change < 1e-4:
                break
        if need_phi:
            prob.likelihood = lik
            prob.theta = 1.0 / _estimate_dispersion(prob, Zs, spots=sub)
            if platform_effect:
                # a few more alternations under the NB weights
                for _outer in range(max(1, platform_iter // 3)):
                    Zs, it, _ = _fit_independent(prob, Zs, max(tol, 1e-8), max_iter, spots=sub)
                    n_iter += it
                    r_new = _platform_step(prob, Zs, spots=sub)
                    change = float(np.max(np.abs(np.log(r_new) - np.log(prob.r))))
                    prob.set_r(r_new)
                    if change < 1e-4:
                        break
        if sub is None:
            Z = Zs
            fitted = True
    # ---- stage 2: lambda
    auto = None
    lam = lambda_spatial
    if isinstance(lambda_spatial, str):
        if N > auto_spots:
            win = _spatial_window(Q, auto_spots, rng)
            Yw = prob.Y[win]
            sub_prob = _Counts(sp.csr_matrix(Yw) if sp.issparse(Yw) else Yw, prob.S, s[win], likelihood, chunk_size)
            sub_prob.sbar = prob.sbar
            sub_prob.set_r(prob.r)
            sub_prob.theta = prob.theta
            Qw = sp.csr_matrix(Q)[win][:, win] if not isinstance(Q, list | tuple) else [q[win][:, win] for q in Q]
            lam, auto = _choose_lambda(sub_prob, Z[win], Qw, auto_grid, auto_folds, rng, tol, max_iter, progress)
            auto["spots"] = win
        else:
            lam, auto = _choose_lambda(prob, Z, Q, auto_grid, auto_folds, rng, tol, max_iter, progress)
    lam = float(lam)
    # ---- stage 3: the final fit over all spots
    spatial = SpatialTerm(Q if lam > 0 else None, lam * K, 1.0, K, N)
    final: dict = {}
    if spatial.active:
        # start: the stage-1 shares when every spot has them (SQP steps with the exact blocks converge from there
        # in as few iterations as from the lambda = 0 NB optimum, which cost more than it saved), else the
        # lambda = 0 fit to a loose tolerance START_TOL (a start only; the SQP below stops at `tol`; measured on the
        # 10^5-spot lattice of benchmarks/deconv_suite.py: 1e-2 instead of 1e-4 saved 2 of 9 Newton passes, the SQP
        # took the same 4 iterations and the proportions moved by < 1e-5)
        if not fitted:
            Z = _fit_independent(prob, Z, max(tol, START_TOL), max_iter)[0]
        Z, it2, conv_z, res = _fit_spatial(prob, Z, spatial, tol, max_iter, state=final)
    else:
        Z, it2, conv_z = _fit_independent(prob, Z, tol, max_iter)
        res = None
    n_iter += it2
    # ---- report (the data term at the returned Z from the SQP's last pass when it converged: one pass less)
    w = 1.0 / (N * prob.sbar)
    f, g, _, glin = final.pop("cache", None) or _global_grad(prob, Z, hess=False)
    gfull = w * g + (2.0 * spatial.coef * spatial.mul(Z) if spatial.active else 0.0)
    res = kkt_residual(Z, gfull, True) / max(float(np.linalg.norm(w * glin)), 1e-300)
    # the NLL from the same pass (f is the per-spot value of _Counts.nll without its log-library term)
    ysum = np.asarray(prob.Y.sum(axis=1), dtype=np.float64).ravel()
    nll = float(f.sum()) - float(np.sum(ysum * np.log(np.maximum(s, 1e-300))))
    pen = spatial.value(Z) if spatial.active else 0.0
    converged = bool(res <= tol)
    if not converged:
        warnings.warn(
            f"fit_counts stopped after {n_iter} iterations before converging (relative KKT residual {res:.2e}); "
            "increase `max_iter` or `tol`.",
            ConvergenceWarning,
            stacklevel=2,
        )
    tot = Z.sum(axis=1, keepdims=True)
    empty = tot[:, 0] <= 0
    props = np.divide(Z, tot, out=np.full_like(Z, 1.0 / K), where=tot > 0)
    return CountDeconvResult(
        abundance=s[:, None] * Z,
        proportions=props,
        library_size=s,
        gene_effect=prob.r.copy(),
        dispersion=None if likelihood == "poisson" else 1.0 / prob.theta,
        lambda_spatial=lam,
        objective={
            "total": w * nll + pen,
            "nll": nll,
            "data_term": w * nll,
            "spatial_term": pen,
            "scale": w,
            "deviance": _deviance(prob, Z),
        },
        converged=converged,
        n_iter=n_iter,
        kkt_residual=float(res),
        seconds=time.perf_counter() - t0,
        auto=auto,
        genes=mask,
        shares=Z,
        likelihood=likelihood,
        n_empty=int(empty.sum()),
        extra={"platform_history": hist, "platform_spots": None if sub is None else len(sub)},
    )


def _deviance(prob: _Counts, Z: np.ndarray, Ytest=None, s_test=None) -> float:
    r"""Poisson deviance of counts (default: the fitted ones) under the model's means.

    Sparse counts: :math:`2[\sum_{y>0} y \log(y/\mu) - \sum y + \sum \mu]` with the means evaluated at the
    stored entries only (:math:`\sum \mu = \sum_n s_n z_n^T B^T 1` needs no pass over the genes).
    """
    Ysrc = prob.Y if Ytest is None else Ytest
    s = prob.s if s_test is None else s_test
    if sp.issparse(Ysrc):
        Y = sp.csr_matrix(Ysrc)
        y = np.asarray(Y.data, dtype=np.float64)
        tot = 2.0 * float(np.sum(s * (Z @ prob.colsum))) - 2.0 * float(y.sum())
        Zc = np.ascontiguousarray(Z, dtype=np.float64)
        sc = np.ascontiguousarray(s, dtype=np.float64)
        Bc = np.ascontiguousarray(prob.B, dtype=np.float64)
        return tot + 2.0 * float(_kernel("_k_ylogy_mu")(Y.indptr, Y.indices, y, sc, Zc, Bc))
    tot = 0.0
    for a in range(0, prob.N, prob.chunk):
        b = min(prob.N, a + prob.chunk)
        Yc = np.asarray(Ysrc[a:b], dtype=np.float64)
        mu = s[a:b, None] * (Z[a:b] @ prob.B.T)
        pos = Yc > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(pos, Yc * np.log(Yc / mu), 0.0)
        tot += 2.0 * float(np.sum(t - (Yc - mu)))
    return tot


def _spatial_window(Q, m: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``m`` spots reached breadth-first on the graph of ``Q`` from random starts."""
    from scipy.sparse.csgraph import breadth_first_order

    A = sp.csr_matrix(Q[0] if isinstance(Q, list | tuple) else Q)
    n = A.shape[0]
    taken = np.zeros(n, dtype=bool)
    out: list[np.ndarray] = []
    count = 0
    while count < m:
        free = np.flatnonzero(~taken)
        start = int(rng.choice(free))
        order = breadth_first_order(A, start, directed=False, return_predecessors=False)
        order = order[~taken[order]][: m - count]
        taken[order] = True
        out.append(order)
        count += len(order)
    return np.sort(np.concatenate(out))


def _choose_lambda(prob: _Counts, Z0, Q, grid, n_folds, rng, tol, max_iter, progress, auto_tol=None):
    """Held-out genes: fit the shares on all but one fold of genes, score the model's NLL of the left-out fold.

    Without a grid: a coarse grid (0 and powers of 10 from 1e-4 to 1), then the two half-decade neighbours
    of its minimizer. Along increasing lambda each fit starts from the previous one, and a fold stops once its
    score rises past its minimum (skipped values score +inf); the two refinement fits start from the fit at the
    coarse minimizer.
    """
    auto_tol = AUTO_TOL if auto_tol is None else auto_tol
    refine = grid is None
    grid = sorted(set([0.0] + [float(g) for g in (COARSE_AUTO_GRID if grid is None else grid)]))
    if any(g < 0 or not np.isfinite(g) for g in grid):
        msg = "Expected every `auto_grid` value to be finite and >= 0."
        raise ValueError(msg)
    K, N, G = prob.K, prob.N, prob.G
    n_folds = int(min(max(2, n_folds), G))
    fold_of = rng.permutation(np.arange(G) % n_folds)
    Ycsc = prob.Y.tocsc() if sp.issparse(prob.Y) else prob.Y

    def part(idx):
        Yp = Ycsc[:, idx]
        Yp = sp.csr_matrix(Yp) if sp.issparse(Yp) else Yp
        c = _Counts(Yp, prob.S[idx], prob.s, prob.likelihood, prob.chunk)
        c.sbar = prob.sbar  # the same normalization, so lambda carries over to the fit on all genes
        c.set_r(prob.r[idx])
        c.theta = None if prob.theta is None else prob.theta[idx]
        return c

    n_scored = n_folds if AUTO_SCORED_FOLDS is None else min(n_folds, AUTO_SCORED_FOLDS)
    folds = [(part(np.flatnonzero(fold_of != f)), part(np.flatnonzero(fold_of == f))) for f in range(n_scored)]

    sols: list[dict] = [{} for _ in folds]  # fold -> {lambda: shares}, warm starts of the refinement

    def evaluate(lams, early_stop, start=None):
        total = np.zeros(len(lams))
        for f, (train, test) in enumerate(folds):
            Z = (Z0 if start is None else sols[f][start]).copy()
            state: dict = {}  # the data term at Z, handed from one fit of the path to the next
            sc = np.full(len(lams), np.nan)
            for i, lam in enumerate(lams):
                # the criterion is unimodal along the path in every run we made: stop once it rises
                if early_stop and i >= 2 and sc[i - 1] > sc[i - 2] and sc[i - 2] <= np.nanmin(sc[: i - 1]):
                    break
                if start is not None:
                    Z = sols[f][start].copy()
                    state = {}
                spatial = SpatialTerm(Q if lam > 0 else None, lam * K, 1.0, K, N)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    if spatial.active:
                        Z, *_ = _fit_spatial(train, Z, spatial, max(tol, auto_tol), max_iter, state=state)
                    else:
                        Z, *_ = _fit_independent(train, Z, max(tol, auto_tol), max_iter)
                sols[f][lam] = Z
                sc[i] = test.nll(np.maximum(Z, 0.0), floor=True)
            sc[np.isnan(sc)] = np.inf
            total += sc
            if progress:
                _log.info(
                    "    fit_counts: auto fold %d, held-out NLL %s", f, dict(zip(lams, np.round(sc, 1), strict=True))
                )
        return total

    scores = evaluate(grid, True)
    if refine:
        b = grid[int(np.argmin(scores))]
        extra = [b * 10**-0.5, b * 10**0.5] if b > 0 else [grid[1] * 10**-0.5]
        extra = [x for x in extra if x not in grid]
        if extra:
            grid = grid + extra
            scores = np.concatenate([scores, evaluate(extra, False, start=b)])
            order = np.argsort(grid)
            grid, scores = [grid[i] for i in order], scores[order]
    best = int(np.argmin(scores))
    frac = 1.0 - 1.0 / n_folds
    return grid[best] * frac, {
        "grid": np.array(grid),
        "scores": scores,
        "criterion": f"negative log-likelihood of held-out genes ({n_scored} of {n_folds} folds), shares fitted on "
        "the others",
        "n_folds": n_folds,
        "lambda_best": grid[best],
        "train_fraction": frac,
    }
