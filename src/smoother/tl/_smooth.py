r"""Exact spatial smoothing on AnnData.

The math lives in the core solvers (``_core.smooth``); this module reads and validates the AnnData fields, calls the
solver, and writes the results.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import (
    check_adata,
    check_precision_args,
    get_graph,
    get_matrix,
    get_prior_operator,
    save_result,
)
from .._core import smooth as core
from .._core.iterative import JACOBI_MAX_KAPPA
from .._core.linalg import NotPositiveDefiniteError
from .._core.precision import not_pd_message
from .._settings import log_finish, log_start, logger
from .._validation import (
    check_bool,
    check_choice,
    check_int,
    check_key,
    check_lambda,
    check_random_state,
    check_real,
)

__all__ = ["smooth"]

_ITERATIVE = ("cg", "chebyshev")


# ----------------------------------------------------------------------------------------------------------------
# shared checks
# ----------------------------------------------------------------------------------------------------------------
def _check_dtype(dtype) -> np.dtype:
    if isinstance(dtype, (str, type, np.dtype)):
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt in (np.dtype(np.float32), np.dtype(np.float64)):
            return dt
        if dt is not None:
            msg = f"Expected `dtype` to be 'float32' or 'float64', found {dtype!r} (e.g. dtype='float32')."
            raise ValueError(msg)
    msg = f"Expected `dtype` to be 'float32' or 'float64', found {type(dtype).__name__} `{dtype!r}`."
    raise TypeError(msg)


def _check_chunk(chunk_size) -> int | None:
    return check_int(chunk_size, "chunk_size", low=1, allow_none=True, example="256")


def _check_grid(grid) -> np.ndarray | None:
    if grid is None:
        return None
    if isinstance(grid, (str, bytes)) or np.ndim(grid) > 1:
        msg = f"Expected `gcv_grid` to be a list of lambda values >= 0, found {type(grid).__name__} `{grid!r}`."
        raise TypeError(msg)
    values = [check_real(v, "gcv_grid", low=0.0, example="[0.1, 1.0, 10.0]") for v in np.atleast_1d(grid).tolist()]
    if not values:
        msg = "Expected `gcv_grid` to be a non-empty list of lambda values >= 0 (e.g. gcv_grid=[0.1, 1.0, 10.0])."
        raise ValueError(msg)
    return np.asarray(values, dtype=np.float64)


def _check_spots(n: int, what: str, minimum: int = 1) -> None:
    if n < minimum:
        msg = f"{what} has {n} spot(s); at least {minimum} needed."
        raise ValueError(msg)


def _operator(W: sp.csr_matrix, prior: str, rho: float, standardize: bool) -> core.PriorOperator:
    """The prior on ``W`` (the one shared builder :func:`smoother._anndata.get_prior_operator`)."""
    return get_prior_operator(W, prior, rho, standardize)


# ----------------------------------------------------------------------------------------------------------------
# smooth
# ----------------------------------------------------------------------------------------------------------------
def smooth(
    adata,
    *,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    lambda_spatial: float | Literal["auto"] = "auto",
    layer: str | None = None,
    connectivity_key: str = K.DEFAULT_CONN,
    standardize: bool = False,
    nonneg: bool = False,
    center: bool = True,
    per_gene: bool = False,
    criterion: Literal["risk", "gcv", "ml"] = "risk",
    gcv_grid: np.ndarray | list[float] | None = None,
    uncertainty: bool = False,
    dtype: Literal["float32", "float64"] = "float32",
    chunk_size: int | None = None,
    solver: Literal["auto", "cholesky", "cg", "chebyshev"] = "auto",
    tol: float = 1e-6,
    random_state: int = 0,
    key_added: str = K.SMOOTHED,
    copy: bool = False,
):
    r"""Denoise every gene with a Gaussian random field prior, exactly (or to a stated residual tolerance).

    For the expression :math:`Y` (``n_obs x n_vars``) and the prior's precision :math:`Q` on the spatial graph,
    computes

    .. math::

        \hat X = \arg\min_X \; \lVert Y - X \rVert_F^2 + \lambda\, \mathrm{tr}(X^T Q X)
        = (I + \lambda Q)^{-1} Y,

    one sparse Cholesky factorization of :math:`I + \lambda Q` solved for all genes in chunks — or, where that
    factor would not fit in memory (~10^7 spots), preconditioned conjugate gradients to a relative residual
    ``tol`` per gene (``solver``).

    **Each gene's level is not shrunk** (``center=True``, default). A prior with mean zero pulls every gene
    towards 0, its level as well as its spatial noise. By default the prior is centred at each gene's mean
    :math:`m_g` over the spots (an intercept left unpenalized, estimated by the mean and added back):

    .. math::

        \hat X = \arg\min_X \lVert Y - X \rVert_F^2
        + \lambda\, \mathrm{tr}\big((X - \mathbf 1 m^T)^T Q (X - \mathbf 1 m^T)\big)
        = \mathbf 1 m^T + (I + \lambda Q)^{-1} (Y - \mathbf 1 m^T).

    (The mean is a plug-in estimate, not the joint minimizer over intercept and field.) When
    :math:`Q \mathbf 1 = 0` (``'icar'`` at ``rho = 1``, the graph Laplacian) this equals the uncentred
    solution; for ``rho < 1`` and for the other priors it differs. ``center=False`` gives the classic
    :math:`(I + \lambda Q)^{-1} Y`.

    **Same** :math:`\lambda` **as the classic API.** The classic loss of smoother-omics is
    ``MSELoss(Y, X) + lambda * SpatialLoss(X.T)`` =
    :math:`\frac{1}{nG}\lVert Y - X\rVert_F^2 + \lambda \frac{1}{nG}\sum_g x_g^T Q x_g` (``SpatialLoss``
    normalizes by ``beta.numel()``, ``MSELoss`` by the same count), which is the objective above divided by
    :math:`nG`: the same minimizer for the same :math:`\lambda`.

    Parameters
    ----------
    adata
        AnnData with a spatial graph in ``adata.obsp[connectivity_key]``.
    prior
        ``'icar'`` (default), ``'car'``, ``'sar'``, ``'isar'`` or ``'sma'`` (precision formulas in the
        documentation's math page).
        ``'icar'`` at ``rho = 1`` (the graph Laplacian) is fine here: :math:`I + \lambda Q` is positive
        definite. ``'sma'`` is solved sparsely through :math:`Q = (B B^T)^{-1}`, :math:`B = I + \rho W`.
    rho
        Spatial autocorrelation in ``[0, 1]``.
    lambda_spatial
        Strength :math:`\lambda \ge 0`, or ``'auto'`` (default): chosen from the data. The smoother is linear,
        :math:`\hat X = S_\lambda Y` with :math:`S_\lambda = (I + \lambda Q)^{-1}`, so generalized
        cross-validation :math:`\mathrm{GCV}(\lambda) = \frac{\lVert Y - \hat X\rVert^2 / (nG)}
        {(1 - \mathrm{tr}(S_\lambda)/n)^2}` applies; by default (``criterion='risk'``) GCV calibrates each
        gene's noise variance (capped by the neighbour-difference estimate
        :math:`\sum_{ij} w_{ij}(y_i - y_j)^2 / 2\sum_{ij} w_{ij}`, which does not depend on the prior) and
        :math:`\lambda` minimizes the unbiased risk estimate
        :math:`\sum_g \lVert y_g - \hat x_g\rVert^2 + 2\hat\sigma_g^2 \mathrm{tr}(S_\lambda)`, which avoids
        GCV's under-smoothing. Nothing is factorized for the search: the residuals and traces of every grid value
        come from one Lanczos run on :math:`Q` per gene and per random probe (exact eigendecomposition up to 500
        spots), recorded as ``uns[key_added]['gcv']['trace_method']``. One value for the dataset (about one gene in
        20, 16 to 500 genes, drawn in proportion to their variance and weighted back to a mean over all genes,
        enter the criterion), or one per gene with ``per_gene=True`` (then one factorization per grid value).
        :math:`\lambda = 0` (no smoothing) is always a candidate, so ``'auto'`` is never worse than no smoothing
        by its own criterion; a
        choice at the largest grid value warns and says what to change (a wider ``gcv_grid``; for ``'sar'`` on a
        graph whose rows do not sum to 1, ``prior='isar'`` or a row-normalized graph). On the DLPFC benchmark
        (``benchmarks/smooth_defaults.py``) the defaults beat naive neighbour averaging; a fixed ``1.0`` (the
        classic default) is about 20x faster and slightly less accurate there.
    layer
        Layer to smooth (``None``: ``adata.X``). Sparse data stay sparse (densified one chunk of genes at a
        time); integer counts are cast to floating point.
    connectivity_key
        The graph in ``adata.obsp`` (from ``sq.gr.spatial_neighbors``, ``sm.pp.spatial_graph`` or
        ``sm.pp.scale_by_*``). For 'car'/'icar' an asymmetric graph (squidpy's directed kNN) is symmetrized
        with ``max(W, W.T)``.
    standardize
        Rescale :math:`Q` to unit implied variance at every spot.
    nonneg
        Exact minimizer under :math:`X \ge 0` (for counts).
    center
        Leave each gene's mean unpenalized (see above); ``False``: the classic :math:`(I + \lambda Q)^{-1} Y`.
    per_gene
        With ``lambda_spatial='auto'``: choose :math:`\lambda` per gene on the grid.
    criterion
        How ``lambda_spatial='auto'`` chooses: ``'risk'`` (GCV-calibrated unbiased risk, the default),
        ``'gcv'`` (plain GCV) or ``'ml'`` (empirical Bayes: the :math:`\lambda` maximizing the marginal likelihood
        of the data under the prior, each gene's noise variance profiled out). On data drawn from the prior,
        ``'ml'`` recovers its strength and gives calibrated intervals (``uncertainty=True``) where ``'risk'``
        over-smooths a little and its intervals are too narrow (50% intervals cover ~43%); on data the prior does
        not describe (smooth fields of another family, sharp layers) ``'risk'`` is both more accurate and better
        calibrated (see ``benchmarks/results/uncertainty.md``), hence the default.
    gcv_grid
        The :math:`\lambda` values searched (default 17 values from 1e-3 to 1e3, plus 0; then refined).
    uncertainty
        Also compute the posterior standard deviations. The fit is the mode of the Gaussian posterior
        :math:`N(\hat x_g, \sigma_g^2 S)`, :math:`S = (I + \lambda Q)^{-1}`; one spot-wise factor
        :math:`d = \mathrm{diag}(S)` (plus the mean's uncertainty with ``center=True``) is shared by every gene and
        :math:`\sigma_g^2 = \mathrm{RSS}_g / (n - \mathrm{tr}\, H)` is estimated per gene from the residuals, so
        the sd of gene ``g`` at spot ``i`` is :math:`\sigma_g \sqrt{d_i}` (``sm.get.posterior_sd``,
        ``sm.get.interval``, ``sm.pl.uncertainty``). The diagonal is exact (selected inversion of the factor) up to
        10 million spots. The intervals are calibrated when the data follow the prior (a Gaussian field plus
        noise); at sharp boundaries the smoothed value is biased towards the neighbours and intervals there can
        miss. Not available with ``nonneg=True`` (a truncated posterior) or ``per_gene=True`` (one factor per gene).
    dtype
        ``'float32'`` (default) or ``'float64'`` for the result (the solve is always float64).
    chunk_size
        Genes per solve (default: about 256 MiB of float64 per chunk).
    solver
        How :math:`(I + \lambda Q) X = Y - \mathbf 1 m^T` is solved for the final :math:`\lambda`: ``'cholesky'``
        (exact: a sparse Cholesky factor); ``'cg'`` (preconditioned conjugate gradients on blocks of genes: Jacobi
        when :math:`I + \lambda Q` is well conditioned — for ICAR on a graph of degree :math:`d` the Gershgorin bound
        on its Jacobi-scaled condition number is :math:`(1 + \lambda(1+\rho) d) / (1 + \lambda(1-\rho) d)`, 8.6 at
        :math:`\lambda = 1` on a 4-neighbour grid — else pyamg's smoothed-aggregation AMG); ``'chebyshev'`` (the
        Jacobi-preconditioned Chebyshev iteration on that Gershgorin interval: as many iterations as Jacobi-CG with
        a third of its memory traffic, for diagonally dominant systems such as ICAR/CAR); or ``'auto'`` (default):
        the factor unless its estimated size (:math:`\mathrm{nnz}(L) \approx \tfrac{31}{8} n \log_2 n` on a
        planar graph, 18 bytes each at the peak) exceeds half the available memory (on dask input with a
        :class:`distributed.Client`: half the smallest worker's memory limit, since each worker builds its own) —
        at 10^7 spots on a 24 GiB machine — then ``'chebyshev'`` when the bound is at most 400, else ``'cg'``.
        The iterative solvers keep only the matrix and a few ``n x genes`` blocks. ``nonneg``, ``uncertainty`` and
        ``per_gene`` always use the factor; the search of ``lambda_spatial='auto'`` factors nothing (one Lanczos
        run on :math:`Q`, see ``lambda_spatial``).
    tol
        Relative residual tolerance of the iterative solvers: every gene's solution satisfies
        :math:`\lVert r\rVert_2 \le \mathrm{tol}\, \lVert b\rVert_2` for its true residual (else
        a ``RuntimeError``, ``ConvergenceError``, that says what to change); the achieved value is recorded (see
        Returns).
    random_state
        Seed of the GCV gene subsample and trace probes.
    key_added
        Name of the result.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``adata.layers[key_added]`` — ``(n_obs, n_vars)`` dense smoothed expression of ``dtype``;
    - ``adata.uns[key_added]['params']`` — ``prior``, ``rho``, ``lambda`` (the value used; ``'per_gene'`` when
      per gene; ``None`` for 0 genes with ``'auto'``), ``lambda_spatial`` (as passed), ``layer``,
      ``connectivity_key``, ``standardize``, ``nonneg``, ``center``, ``per_gene``, ``criterion``, ``dtype``,
      ``random_state``, ``key_added``;
    - ``adata.uns[key_added]['lambda']`` — the value used (dataset-wide);
    - with ``'auto'``: ``adata.uns[key_added]['gcv']`` — ``{'lambda', 'score', 'gcv', 'trace', 'criterion',
      'trace_method', 'n_genes'}`` (plus ``'sigma2_mean'``, the mean noise variance, for the dataset-wide
      ``'risk'``): the evaluated values (0 included), the criterion minimized and the GCV score at each (inf at 0,
      where GCV is 0/0; ``(n_grid, n_vars)`` per gene);
    - with ``per_gene=True``: ``adata.var[f'{key_added}_lambda']``;
    - ``adata.uns[key_added]['params']['solver']`` — the method used, and ``'tol'`` (``None`` for the factor);
    - with an iterative solver: ``adata.uns[key_added]['solver']`` — ``method``, ``preconditioner`` (``'cg'``), ``tol``,
      ``kappa_bound`` (the Gershgorin bound on the Jacobi-scaled condition number), and in memory
      ``iterations_max`` and ``residual_max``, the largest achieved relative residual of any gene (on dask input
      they are known only once the blocks are computed: every block raises unless each gene reaches ``tol``;
      ``token`` names the solver in each worker's cache);
    - with ``uncertainty=True``: ``adata.obs[f'{key_added}_var_factor']`` (``d``, ``(n_obs,)``),
      ``adata.var[f'{key_added}_sigma']`` (``(n_vars,)``) and ``adata.uns[key_added]['uncertainty']``
      (``method``, ``max_rel_error`` of the diagonal, ``trace`` of the hat matrix, ``dof``).

    **Dask-backed data** (``adata.X`` or the layer is a :class:`dask.array.Array`, e.g. from
    ``anndata.experimental.read_lazy``): ``adata.layers[key_added]`` becomes a lazy dask array of gene blocks that
    hold every spot; computing it (or ``adata.write_zarr``) streams the blocks on the active Dask scheduler, each
    worker process builds its solver of :math:`I + \lambda Q` once (the factor, or the CG preconditioner) and
    reuses it. ``'auto'`` chooses
    :math:`\lambda` on a subsample of at most 500 genes loaded into memory (where the factor does not fit, or with
    an iterative ``solver``, on a connected window of at most 2^18 spots, breadth-first from a random spot:
    ``uns[key_added]['gcv']['n_spots']``); per-gene means (``center=True``) take
    one pass over the data. ``nonneg``, ``per_gene`` and ``uncertainty`` need in-memory data (call
    ``.compute()`` first).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    >>> adata.layers["smoothed"].shape, adata.obs["smoothed_var_factor"].shape
    ((400, 5), (400,))

    Conjugate gradients instead of the factor, to a relative residual of 1e-8 (the achieved value is recorded):

    >>> sm.tl.smooth(adata, lambda_spatial=1.0, solver="cg", tol=1e-8, key_added="smoothed_cg")
    >>> rec = adata.uns["smoothed_cg"]["solver"]
    >>> rec["preconditioner"], bool(rec["residual_max"] <= 1e-8)
    ('jacobi', True)
    >>> diff = abs(adata.layers["smoothed_cg"] - adata.layers["smoothed"]).max()
    >>> bool(diff < 1e-5 * abs(adata.layers["smoothed"]).max())
    True
    """
    # ---- validate everything before any work
    check_adata(adata, copy=copy)
    prior, rho = check_precision_args(prior, rho)
    lam = check_lambda(lambda_spatial, allow_auto=True)
    standardize = check_bool(standardize, "standardize")
    nonneg = check_bool(nonneg, "nonneg")
    center = check_bool(center, "center")
    per_gene = check_bool(per_gene, "per_gene")
    check_key(key_added, "key_added")
    check_key(connectivity_key, "connectivity_key")
    criterion = check_choice(criterion, "criterion", ("risk", "gcv", "ml"))
    dt = _check_dtype(dtype)
    chunk_size = _check_chunk(chunk_size)
    gcv_grid = _check_grid(gcv_grid)
    random_state = check_random_state(random_state)
    uncertainty = check_bool(uncertainty, "uncertainty")
    solver = check_choice(solver, "solver", ("auto", "cholesky", "cg", "chebyshev"))
    tol = check_real(tol, "tol", low=0.0, high=1.0, low_open=True, high_open=True, example="1e-6")
    if solver in _ITERATIVE and (nonneg or uncertainty or per_gene):
        what = "nonneg=True" if nonneg else ("uncertainty=True" if uncertainty else "per_gene=True")
        msg = f"`{what}` needs the Cholesky factor; pass solver='cholesky' (or 'auto') or drop that option."
        raise ValueError(msg)
    if per_gene and lam != "auto":
        msg = "`per_gene=True` needs `lambda_spatial='auto'` (a lambda chosen per gene)."
        raise ValueError(msg)
    if uncertainty and (nonneg or per_gene):
        what = "nonneg=True (a truncated posterior)" if nonneg else "per_gene=True (one variance factor per gene)"
        msg = f"`uncertainty=True` is not available with {what}; pass uncertainty=False or drop that option."
        raise ValueError(msg)
    if criterion == "ml" and per_gene:
        msg = "`criterion='ml'` chooses one lambda for the dataset; use criterion='risk' with per_gene=True."
        raise ValueError(msg)
    params = {
        "prior": prior,
        "rho": rho,
        "lambda_spatial": lambda_spatial if isinstance(lambda_spatial, str) else float(lambda_spatial),
        "lambda": None,  # the value used, set after the fit
        "layer": layer,
        "connectivity_key": connectivity_key,
        "standardize": standardize,
        "nonneg": nonneg,
        "center": center,
        "per_gene": per_gene,
        "criterion": criterion,
        "uncertainty": uncertainty,
        "dtype": dt.name,
        "solver": solver,  # the method used, set before the fit
        "tol": None,  # the tolerance of 'cg'
        "random_state": random_state,
        "key_added": key_added,
    }
    if _is_dask_input(adata, layer):
        return _smooth_dask(
            adata, params, lam=lam, gcv_grid=gcv_grid, dt=dt, random_state=random_state, solver=solver, tol=tol,
            copy=copy,
        )  # fmt: skip
    Y, _ = get_matrix(adata, layer)
    _check_spots(Y.shape[0], "adata")
    W = get_graph(adata, connectivity_key)
    op = _operator(W, prior, rho, standardize)

    # ---- work
    start = log_start(f"smoothing {Y.shape[1]} genes over {Y.shape[0]} spots (prior '{prior}', rho={rho})")
    gcv_rec = None
    var_lambda = None
    if lam == "auto" and Y.shape[1] == 0:  # nothing to smooth, nothing to choose lambda from
        lam_used, X = None, np.zeros((Y.shape[0], 0), dtype=dt)
        var_lambda = np.zeros(0) if per_gene else None
    elif lam == "auto" and criterion == "ml":
        from .._core.uncertainty import ml_lambda

        lam_used, lams, loglik = ml_lambda(
            Y, op, center=center, graph=W, seed=0 if random_state is None else random_state
        )
        gcv_rec = {"lambda": lams, "loglik": loglik, "criterion": "ml", "n_genes": int(min(Y.shape[1], 500))}
        logger.info("    marginal likelihood chose lambda = %.4g", lam_used)
    elif lam == "auto":
        res = core.gcv(
            Y,
            op,
            grid=gcv_grid,
            criterion=criterion,
            per_gene=per_gene,
            seed=random_state,
            chunk_size=chunk_size,
            dtype=dt,
            center=center,
            graph=W,
        )
        if res.edge is not None:
            _warn_edge(float(res.lam), res.grid, prior, W, edge=res.edge)
        gcv_rec = _gcv_record(res)
        if res.sigma2 is not None and not per_gene:
            w = res.gene_weights  # normalized Hajek weights of a sampled gene set (None: every gene counts once)
            gcv_rec["sigma2_mean"] = float(np.mean(res.sigma2) if w is None else np.asarray(res.sigma2) @ w)
        if per_gene:
            X = res.X
            if nonneg:
                X = _nonneg_per_gene(Y, op, res.lam, X, chunk_size, center)
            var_lambda = np.asarray(res.lam)
            lam_used = "per_gene"
            top = float(res.grid.max())
            n_top = int((var_lambda == top).sum()) if top > 0 and res.grid.size >= 3 else 0
            if n_top:
                where = f" for {n_top} of {var_lambda.size} genes (adata.var['{key_added}_lambda'])"
                _warn_edge(top, res.grid, prior, W, where)
            logger.info("    GCV chose lambda per gene (median %.4g)", float(np.median(var_lambda)))
        else:
            lam_used = float(res.lam)
            logger.info("    GCV chose lambda = %.4g", lam_used)
    else:
        lam_used = float(lam)
    method, solver_rec = "cholesky", {"method": "cholesky"}
    if var_lambda is None and lam_used is not None:
        method = _resolve_solver(solver, op, lam_used, nonneg or uncertainty)
        try:
            if method in _ITERATIVE:
                X, solver_rec = _smooth_cg(
                    Y, op, lam_used, center=center, dt=dt, chunk_size=chunk_size, tol=tol, method=method
                )
            else:
                X = core.smooth(Y, op, lam_used, nonneg=nonneg, dtype=dt, chunk_size=chunk_size, center=center)
        except NotPositiveDefiniteError as e:
            raise ValueError(not_pd_message(prior, rho, W)) from e
    params["solver"], params["tol"] = method, (tol if method in _ITERATIVE else None)
    var_factor = sigma = unc = None
    if uncertainty and lam_used is not None:
        var_factor, sigma, unc = _posterior_factors(Y, X, op, lam_used, center, random_state, chunk_size)

    # ---- write
    params["lambda"] = lam_used
    out = _write_smoothed(
        adata, params, X, lam_used, gcv_rec, unc, var_factor, var_lambda, sigma, solver_rec, copy=copy
    )
    log_finish(start)
    return out


def _system(op, lam: float) -> sp.csr_matrix:
    r""":math:`I + \lambda Q` (CSR, float64)."""
    n = op.Q.shape[0]
    return (sp.identity(n, format="csr") + lam * op.Q).tocsr()


def _resolve_solver(solver: str, op, lam: float, needs_factor: bool, *, lazy: bool = False) -> str:
    """``'cholesky'`` or an iterative method: as asked, else the factor unless its estimate does not fit in this
    process's memory or (``lazy``, with a :class:`distributed.Client`) in the smallest worker's memory limit."""
    from .._core.blockwise import worker_memory
    from .._core.linalg import available_memory, choose_solver

    if solver != "auto":
        return solver
    if needs_factor or op.Q is None or lam == 0:
        return "cholesky"
    limit = worker_memory() if lazy else None
    memory, where = (available_memory(), "memory") if limit is None else (limit, "a worker's memory limit")
    method = choose_solver(_system(op, lam), memory=memory)
    if method in _ITERATIVE:
        logger.info("    the Cholesky factor would not fit in %s: solving iteratively (%s)", where, method)
    return method


def _smooth_cg(
    Y, op, lam: float, *, center: bool, dt, chunk_size, tol: float, method: str = "cg"
) -> tuple[np.ndarray, dict]:
    """In-memory smoothing by an iterative solver (``solver='cg'``/``'chebyshev'``): the result and its record."""
    from .._core.blockwise import default_genes_per_block
    from .._core.linalg import spd_solver

    if op.Q is None:
        msg = f"solver={method!r} needs a sparse precision; prior='sma' is solved with solver='cholesky'."
        raise ValueError(msg)
    n, g = Y.shape
    cg = spd_solver(_system(op, lam), method, tol=tol)
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    means = np.asarray(src.mean(axis=0, dtype=np.float64)).ravel() if center else np.zeros(g)
    X = np.empty((n, g), dtype=dt)
    step = chunk_size or max(default_genes_per_block(n, "cg"), 1)
    for start in range(0, g, step):
        stop = min(g, start + step)
        Yc = src[:, start:stop]
        Yc = Yc.toarray() if sp.issparse(Yc) else Yc
        B = np.array(Yc, dtype=np.float64, order="C") - means[start:stop]
        X[:, start:stop] = cg.solve(B) + means[start:stop]
    info = cg.info
    logger.info(
        "    %s (%s): at most %d iterations, relative residual <= %.2g",
        info["method"],
        info["preconditioner"],
        info["iterations_max"],
        info["residual_max"],
    )
    return X, _solver_record(info)


def _solver_record(info: dict) -> dict:
    """What ``uns[key]['solver']`` records of a solver's ``info``."""
    keys = ("method", "preconditioner", "tol", "kappa_bound", "iterations_max", "residual_max")
    if info.get("method") == "chebyshev":
        keys = tuple(k for k in keys if k != "preconditioner")
    return {k: info.get(k) for k in keys if k in info}


def _posterior_factors(Y, X, op, lam: float, center: bool, seed, chunk_size) -> tuple[np.ndarray, np.ndarray, dict]:
    """Spot-wise variance factor, per-gene noise sd and a record (see ``uncertainty`` in :func:`smooth`)."""
    from .._core.uncertainty import residual_sigma2, smooth_var_factor

    d, trace, info = smooth_var_factor(op, lam, center=center, seed=0 if seed is None else int(seed))
    n, g = Y.shape
    rss = np.zeros(g)
    step = chunk_size or max(1, int(2**25 // max(n, 1)))
    for start in range(0, g, step):
        stop = min(g, start + step)
        Yc = Y[:, start:stop]
        Yc = Yc.toarray() if sp.issparse(Yc) else np.asarray(Yc)
        rss[start:stop] = ((Yc.astype(np.float64) - X[:, start:stop].astype(np.float64)) ** 2).sum(axis=0)
    sigma = np.sqrt(residual_sigma2(rss, n, trace))
    rec = {
        "method": info.method,
        "max_rel_error": info.max_rel_error,
        "trace": trace,
        "dof": float(n - trace),
    }
    logger.info("    posterior variance factor by %s diagonal (trace %.4g)", info.method, trace)
    return d, sigma, rec


def _is_dask_input(adata, layer) -> bool:
    from .._core.blockwise import is_dask

    if layer is None:
        return is_dask(adata.X)
    return isinstance(layer, str) and layer in adata.layers and is_dask(adata.layers[layer])


def _smooth_dask(adata, params: dict, *, lam, gcv_grid, dt, random_state, solver, tol, copy):
    """:func:`smooth` on a dask-backed matrix: a lazy result of gene blocks (see the docstring)."""
    import dask

    from .._core.blockwise import column_means, smooth_blocks

    prior, rho, layer, center = params["prior"], params["rho"], params["layer"], params["center"]
    nonneg, per_gene, uncertainty = params["nonneg"], params["per_gene"], params["uncertainty"]
    connectivity_key, criterion = params["connectivity_key"], params["criterion"]
    if nonneg or per_gene or uncertainty:
        what = "nonneg=True" if nonneg else ("per_gene=True" if per_gene else "uncertainty=True")
        msg = (
            f"`{what}` needs the data in memory; load them first, e.g. `adata.X = adata.X.compute()` "
            f"(or `adata.layers[{layer!r}] = adata.layers[{layer!r}].compute()`)."
        )
        raise ValueError(msg)
    Yd = adata.X if layer is None else adata.layers[layer]
    if Yd.ndim != 2:
        msg = f"Expected a 2D dask array, found {Yd.ndim} dimensions."
        raise ValueError(msg)
    if not (np.issubdtype(Yd.dtype, np.number) or Yd.dtype == bool):
        msg = f"Expected numeric data, found dtype {Yd.dtype}."
        raise TypeError(msg)
    n, g = Yd.shape
    _check_spots(n, "adata")
    W = get_graph(adata, connectivity_key)
    op = _operator(W, prior, rho, params["standardize"])
    if op.Q is None:
        msg = "prior='sma' on dask input is not supported (its system is not a sparse matrix); use 'icar' or 'car'."
        raise ValueError(msg)
    start = log_start(f"smoothing {g} genes over {n} spots lazily (dask; prior '{prior}', rho={rho})")
    gcv_rec = None
    if lam == "auto":
        rng = np.random.default_rng(random_state)
        cols = np.sort(rng.choice(g, size=min(g, 500), replace=False)) if g else np.zeros(0, dtype=int)
        # where the factor does not fit (~10^7 spots), the search runs on a connected window of spots
        # (breadth-first from a random spot) and its part of the graph: its subsample of genes is loaded into memory
        spots = None
        if solver in _ITERATIVE or (
            solver == "auto" and _resolve_solver("auto", op, 1.0, False, lazy=True) != "cholesky"
        ):
            spots = auto_window(W, AUTO_MAX_SPOTS, random_state)
        Ws, ops = (W, op) if spots is None else (W[spots][:, spots].tocsr(), None)
        if ops is None:
            ops = _operator(Ws, prior, rho, params["standardize"])
            logger.info("    choosing lambda on a connected window of %d of %d spots", spots.size, n)
        sub = (Yd if spots is None else Yd[spots])[:, cols].compute()
        sub = sub.tocsr() if sp.issparse(sub) else np.asarray(sub)
        if criterion == "ml":
            from .._core.uncertainty import ml_lambda

            lam_used, lams, loglik = ml_lambda(sub, ops, center=center, graph=Ws, seed=random_state or 0)
            gcv_rec = {"lambda": lams, "loglik": loglik, "criterion": "ml", "n_genes": int(cols.size)}
        else:
            res = core.gcv(
                sub, ops, grid=gcv_grid, criterion=criterion, seed=random_state, dtype=dt, center=center, graph=Ws
            )
            if res.edge is not None:
                _warn_edge(float(res.lam), res.grid, prior, Ws, edge=res.edge)
            lam_used = float(res.lam)
            gcv_rec = _gcv_record(res, n_genes=int(cols.size))
        gcv_rec["n_spots"] = int(sub.shape[0])
        logger.info("    chose lambda = %.4g on %d genes x %d spots in memory", lam_used, cols.size, sub.shape[0])
    else:
        lam_used = float(lam)
    means = column_means(Yd) if center else None
    A = _system(op, lam_used)
    method = _resolve_solver(solver, op, lam_used, False, lazy=True)
    token = "smooth-" + dask.base.tokenize(A.data, A.indices, A.indptr)
    iterative = method in _ITERATIVE
    X = smooth_blocks(Yd, A, token=token, means=means, dtype=dt, solver=method, tol=tol if iterative else None)
    if iterative:
        from .._core.iterative import jacobi_condition_bound

        kappa = jacobi_condition_bound(A)
        solver_rec = {"method": method, "tol": tol}
        if method == "cg":
            solver_rec["preconditioner"] = "jacobi" if kappa <= JACOBI_MAX_KAPPA else "amg"
        solver_rec |= {
            "kappa_bound": kappa,
            "token": token,  # iterations and residuals: known once the lazy blocks are computed
        }
    else:
        solver_rec = {"method": "cholesky"}
    if X.chunks[0] != Yd.chunks[0] or X.chunks[1] != Yd.chunks[1]:
        logger.info(
            "    gene blocks of %d genes holding all %d spots (input chunks %s)",
            max(X.chunks[1]),
            n,
            tuple(len(c) for c in Yd.chunks),
        )
    params = {**params, "lambda": lam_used, "backend": "dask", "solver": method, "tol": tol if iterative else None}
    out = _write_smoothed(adata, params, X, lam_used, gcv_rec, None, None, None, None, solver_rec, copy=copy)
    log_finish(start)
    return out


#: With ``lambda_spatial='auto'`` where the Cholesky factor does not fit, lambda is chosen on a connected window of
#: at most this many spots (2^18: a 1 mm square of 2 um bins), which the search factors for each lambda of its grid.
AUTO_MAX_SPOTS = 2**18


def auto_window(W: sp.spmatrix, n_max: int, seed) -> np.ndarray | None:
    """Sorted indices of at most ``n_max`` spots reached breadth-first on ``W`` from a random spot (``None``: all
    spots, when there are at most ``n_max``)."""
    from scipy.sparse.csgraph import breadth_first_order

    n = W.shape[0]
    if n <= n_max:
        return None
    start = int(np.random.default_rng(seed).integers(n))
    order = breadth_first_order(sp.csr_matrix(W), start, directed=False, return_predecessors=False)
    return np.sort(order[:n_max])


def _gcv_record(res, n_genes: int | None = None) -> dict:
    """What ``uns[key]['gcv']`` records of a ``lambda_spatial='auto'`` search (a ``GCVResult``)."""
    return {
        "lambda": res.grid,
        "score": res.score,
        "gcv": res.gcv,
        "trace": res.trace,
        "criterion": res.criterion,
        "trace_method": res.trace_method,
        "n_genes": res.n_genes_used if n_genes is None else n_genes,
    }


def _write_smoothed(adata, params, X, lam_used, gcv_rec, unc, var_factor, var_lambda, sigma, solver_rec, *, copy):
    """The one write of :func:`smooth` (in memory or dask): every key listed, ``None`` removes a stale one."""
    key = params["key_added"]
    uns = {"lambda": lam_used}
    if solver_rec is not None and solver_rec.get("method") in _ITERATIVE:
        uns["solver"] = solver_rec
    if gcv_rec is not None:
        uns["gcv"] = gcv_rec
    if unc is not None:
        uns["uncertainty"] = unc
    return save_result(
        adata,
        copy=copy,
        uns_key=key,
        params=params,
        uns=uns,
        layers={key: X},
        obs={f"{key}_var_factor": var_factor},
        var={f"{key}_lambda": var_lambda, f"{key}_sigma": sigma},
    )


def _warn_edge(lam: float, grid: np.ndarray, prior: str, W: sp.csr_matrix, n_genes: str = "", edge="upper") -> None:
    """A ``lambda_spatial='auto'`` choice at an edge of the grid (its top, or 0 strictly best): say what to change."""
    import warnings

    rowsum = np.asarray(W.sum(axis=1)).ravel()
    if prior in ("sar", "sma") and not np.allclose(rowsum, 1.0, rtol=1e-6):
        fix = (
            f"prior='{prior}' on a graph whose rows do not sum to 1 (median row sum {np.median(rowsum):.3g}) "
            "penalizes smooth fields heavily; use prior='isar' (SAR on the row-normalized graph), or row-normalize "
            "the graph"
        )
    elif edge == "zero":
        fix = f"pass a `gcv_grid` with values below {grid[grid > 0].min():.3g}, or another prior / rho"
    else:
        fix = f"pass a `gcv_grid` reaching beyond {grid.max():.3g}, or consider rho=1 (prior='icar') for the prior"
    if edge == "zero":
        msg = (
            f"lambda_spatial='auto' chose 0 (no smoothing){n_genes}: every lambda of the grid scored worse than the "
            f"raw data, so this prior does not describe these data. {fix[0].upper() + fix[1:]}."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        return
    msg = (
        f"lambda_spatial='auto' chose {lam:.3g}{n_genes}, the largest value of the grid: the criterion was still "
        f"falling there, so the best lambda is larger or the prior does not fit these data. "
        f"{fix[0].upper() + fix[1:]}."
    )
    warnings.warn(msg, UserWarning, stacklevel=3)


def _nonneg_per_gene(Y, op, lams: np.ndarray, X: np.ndarray, chunk_size, center: bool) -> np.ndarray:
    """Non-negative finish of per-gene solutions (genes grouped by their lambda)."""
    bad = np.flatnonzero((X < 0).any(axis=0))
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    for lam in np.unique(lams[bad]):
        cols = bad[lams[bad] == lam]
        Ysub = src[:, cols]
        X[:, cols] = core.smooth(Ysub, op, float(lam), nonneg=True, dtype=X.dtype, chunk_size=chunk_size, center=center)
    return X
