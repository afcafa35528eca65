r"""Imputation of unobserved spots and resolution enhancement on AnnData.

The math (conditional means of the spatial prior) lives in :mod:`smoother._core.smooth`; the shared checks and
the ``'auto'`` search record come from :mod:`smoother.tl._smooth`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import (
    check_adata,
    check_precision_args,
    get_coords,
    get_matrix,
    save_result,
    to_writable,
)
from .._core import smooth as core
from .._core.linalg import NotPositiveDefiniteError
from .._core.precision import not_pd_message
from .._settings import log_finish, log_start, logger
from .._validation import (
    check_bool,
    check_choice,
    check_coords,
    check_int,
    check_key,
    check_lambda,
    check_random_state,
    check_real,
    check_unique_names,
)
from ._smooth import (
    _check_chunk,
    _check_dtype,
    _check_grid,
    _check_spots,
    _gcv_record,
    _is_dask_input,
    _operator,
    _warn_edge,
)

__all__ = ["enhance", "impute", "subspot_lattice"]


# ----------------------------------------------------------------------------------------------------------------
# impute
# ----------------------------------------------------------------------------------------------------------------
def impute(
    adata,
    coords_new,
    *,
    fixed_obs: bool = True,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    lambda_spatial: float = 1.0,
    layer: str | None = None,
    spatial_key: str = K.SPATIAL_KEY,
    graph_method: Literal["knn", "radius"] = "knn",
    n_neighs: int = 6,
    mutual: bool = True,
    radius: float | None = None,
    bandwidth: float | None = None,
    standardize: bool = False,
    nonneg: bool = False,
    center: bool = True,
    criterion: Literal["risk", "gcv", "ml"] = "risk",
    gcv_grid: np.ndarray | list[float] | None = None,
    random_state: int | None = 0,
    uncertainty: bool = False,
    dtype: Literal["float32", "float64"] = "float32",
    chunk_size: int | None = None,
    key_added: str = "impute",
):
    r"""Impute expression at new (unobserved) spots from the observed ones, exactly.

    A spatial graph is built over the observed spots (``adata.obsm[spatial_key]``) and the new ones together,
    observed first (as :func:`smoother.pp.spatial_graph` builds it, with ``graph_method``, ``n_neighs``,
    ``mutual``, ``radius``, ``bandwidth``), and the prior's precision :math:`Q` on it gives

    - ``fixed_obs=True`` (default): the Gaussian conditional mean
      :math:`X_m = \arg\min x^T Q x \text{ s.t. } x_o = y_o`, i.e. :math:`Q_{mm} X_m = -Q_{mo} Y_o`
      (independent of :math:`\lambda`); observed spots keep their values;
    - ``fixed_obs=False``: joint denoising and filling,
      :math:`\min_X \lVert Y_o - X_o\rVert_F^2 + \lambda\,\mathrm{tr}(X^T Q X)`, i.e.
      :math:`(P + \lambda Q) X = P Y` with :math:`P` the observed-spot indicator.

    **Centring** (``center=True``, default): the prior is centred at each gene's mean :math:`m` over the
    observed spots, i.e. :math:`x^T Q x` becomes :math:`(x - m)^T Q (x - m)`:
    :math:`X_m = m + Q_{mm}^{-1}(-Q_{mo})(Y_o - m)` and
    :math:`X = m + (P + \lambda Q)^{-1} P (Y - m)` (a plug-in intercept, see :func:`smooth`). Far from every
    observation the imputation then tends to the gene's mean instead of 0. ``center=False`` is the classic
    uncentred problem; with ``prior='icar', rho=1`` both agree.

    **Spots the data do not reach.** New spots with no graph path to any observed spot are not determined by
    the data (their block of :math:`Q` is decoupled). They receive the prior mean (the gene's mean, or 0 with
    ``center=False``), are marked ``False`` in ``obs['connected']``, and a warning gives their number and the
    fix (a larger ``n_neighs`` or ``radius``).

    The classic ``ImputeTorch(fixed_obs=False)`` with ``lambda_spatial_loss = l`` minimizes
    ``MSE(Y_o, X_o) + l * SpatialLoss(X.T)``, which normalizes the fit by ``n_obs * G`` and the prior by
    ``n_all * G``: it equals this objective (``center=False``) with :math:`\lambda = l \cdot n_{obs} / n_{all}`.

    Parameters
    ----------
    adata
        Observed spots with coordinates in ``adata.obsm[spatial_key]``.
    coords_new
        ``(n_new, 2)`` coordinates of the spots to impute, same unit as the observed ones.
    fixed_obs, prior, rho, standardize, nonneg, dtype, chunk_size
        See above and :func:`smooth`.
    lambda_spatial
        With ``fixed_obs=False``: :math:`\lambda > 0`, or ``'auto'``: chosen by the same criterion as
        :func:`smooth` (risk estimate on the observed spots; :math:`\lambda = 0`, the fixed-observation limit, is
        a candidate and is used when it scores best). Ignored with ``fixed_obs=True``.
    center
        Centre the prior at each gene's observed mean (see above).
    criterion, gcv_grid, random_state
        How ``lambda_spatial='auto'`` chooses (see :func:`smooth`): ``'risk'`` (default), ``'gcv'``, or ``'ml'``
        (empirical Bayes: the :math:`\lambda` maximizing the marginal likelihood of the observed values under the
        prior plus noise, each gene's noise variance profiled out; the grid of ``ml`` is 9 log-spaced values from
        1e-3 to 1e3 refined by golden section, ``gcv_grid`` does not apply). On data drawn from the prior
        ``'ml'`` recovers its strength and gives calibrated intervals (``uncertainty=True``), where ``'risk'``
        over-smooths a little and its intervals are too narrow (50% intervals cover ~43%; see
        ``benchmarks/results/impute_uncertainty.md``); prefer ``'ml'`` when the intervals matter.
    layer
        Expression to impute (``None``: ``adata.X``).
    spatial_key
        Coordinates in ``adata.obsm``.
    graph_method, n_neighs, mutual, radius, bandwidth
        Graph over all spots, as in :func:`smoother.pp.spatial_graph`.
    uncertainty
        Also compute posterior standard deviations, stored compactly as for :func:`smooth`: the sd of gene ``g`` at
        spot ``i`` is :math:`\sigma_g \sqrt{d_i}` (``sm.get.posterior_sd(out, genes, key=key_added)``,
        ``sm.get.interval``). The variance factor :math:`d` is shared by all genes:

        - ``fixed_obs=True``: the field is :math:`x \sim N(\mu, \tau_g^2 Q^{-1})` observed without noise, so the
          new spots' conditional covariance is :math:`\tau_g^2 Q_{mm}^{-1}` (the Schur complement of the observed
          block of the prior covariance); :math:`d = \mathrm{diag}(Q_{mm}^{-1})` at new spots and 0 at observed
          ones. There is no noise term, so :math:`\sigma_g` here is the **prior's scale** :math:`\tau_g`,
          estimated from the observed values by restricted maximum likelihood (their marginal precision is
          :math:`(Q_{oo} - Q_{om} Q_{mm}^{-1} Q_{mo}) / \tau_g^2`; the mean is profiled out with ``center``).
        - ``fixed_obs=False``: :math:`y_o = x_o + \varepsilon`, :math:`x \sim N(\mu, \frac{\sigma_g^2}{\lambda}
          Q^{-1})`; the posterior covariance is :math:`\sigma_g^2 (P + \lambda Q)^{-1}` at every spot and
          :math:`\sigma_g^2 = \mathrm{RSS}_g / (n_{obs} - \mathrm{tr} H)` from the observed residuals (the
          estimator of :func:`smooth`). When ``'auto'`` chooses :math:`\lambda = 0`, the fit and its uncertainty
          are those of ``fixed_obs=True``.

        With ``center=True`` the gene's mean is estimated too (a flat prior on it); its uncertainty is added to
        :math:`d`. The diagonal is exact (selected inversion of a sparse factor, never a dense inverse) up to 10
        million spots and estimated beyond with its measured error (``uns[key_added]['uncertainty']``). The
        intervals are calibrated when the data follow the prior (a Gaussian field, plus noise for
        ``fixed_obs=False``); on fields the prior does not describe (sharp layers) they can miss (see
        ``benchmarks/results/impute_uncertainty.md``). Spots without a graph path to the data get ``NaN``. Not
        available with ``nonneg=True`` (a truncated posterior) or ``prior='sma'`` (a dense precision).
    key_added
        Name of the result (``uns[key_added]`` and the uncertainty keys below).

    Returns
    -------
    A new AnnData over ``n_obs + n_new`` spots (observed first, new ones named ``'new_0'``, ...):

    - ``X`` — ``(n_obs + n_new, n_vars)`` dense imputed (and, with ``fixed_obs=False``, denoised) expression;
    - ``obs['observed']`` — boolean; ``obs['connected']`` — boolean, ``False`` for new spots with no graph path to
      an observed spot (undetermined; see above); ``obsm['spatial']`` — all coordinates;
    - ``obsp['spatial_connectivities']``, ``obsp['spatial_distances']``, ``uns['spatial_neighbors']`` — the graph;
    - ``uns[key_added]['params']`` (``lambda`` is the value used, ``None`` with ``fixed_obs=True``); with
      ``lambda_spatial='auto'`` also ``uns[key_added]['gcv']`` as in :func:`smooth`;
    - with ``uncertainty=True``: ``obs[f'{key_added}_var_factor']`` (:math:`d`), ``var[f'{key_added}_sigma']``
      (:math:`\sigma_g`) and ``uns[key_added]['uncertainty']`` (``model``, ``sigma`` — ``'prior_scale_reml'`` or
      ``'residual'`` —, ``method`` and ``max_rel_error`` of the diagonal, ``dof``, and the hat matrix ``trace``
      for ``fixed_obs=False``).

    **Dask-backed data** (``adata.X`` or the layer is a :class:`dask.array.Array`): ``X`` of the result is a lazy
    dask array of gene blocks holding every spot; computing it streams the blocks on the active Dask scheduler
    and each worker factors the system once. ``lambda_spatial='auto'`` chooses on at most 500 random genes
    loaded into memory. ``uncertainty=True``, ``nonneg=True`` and ``prior='sma'`` need the data in memory
    (``adata = adata.to_memory()`` first).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=3, seed=0)
    >>> held_out = np.arange(adata.n_obs) % 5 == 0
    >>> observed = adata[~held_out].copy()
    >>> out = sm.tl.impute(observed, adata.obsm["spatial"][held_out], uncertainty=True)
    >>> out.shape, int(out.obs["observed"].sum())
    ((400, 3), 320)
    >>> sd = sm.get.posterior_sd(out, "gene_0", key="impute")
    >>> bool((sd.loc[out.obs["observed"]] == 0).all().all()), bool((sd.loc[~out.obs["observed"]] > 0).all().all())
    (True, True)
    """
    import anndata as ad
    import pandas as pd

    from .._core.graph import knn_graph, radius_graph

    # ---- validate everything before any work
    check_adata(adata, writes=False)
    fixed_obs = check_bool(fixed_obs, "fixed_obs")
    prior, rho = check_precision_args(prior, rho)
    lam = check_lambda(lambda_spatial, allow_auto=True)
    if fixed_obs and lam == "auto":
        msg = (
            "`lambda_spatial='auto'` needs `fixed_obs=False` (with the observations fixed, lambda plays no role); "
            "use fixed_obs=False to denoise and fill jointly."
        )
        raise ValueError(msg)
    if not fixed_obs and lam == 0:
        msg = (
            "`fixed_obs=False` needs `lambda_spatial` > 0 (new spots are otherwise undetermined); use e.g. "
            "lambda_spatial=1.0, or fixed_obs=True for the limit lambda -> 0."
        )
        raise ValueError(msg)
    standardize = check_bool(standardize, "standardize")
    nonneg = check_bool(nonneg, "nonneg")
    center = check_bool(center, "center")
    uncertainty = check_bool(uncertainty, "uncertainty")
    _check_uncertainty(uncertainty, nonneg, prior)
    check_key(key_added, "key_added")
    criterion = check_choice(criterion, "criterion", ("risk", "gcv", "ml"))
    if criterion == "ml" and prior == "sma":
        msg = "`criterion='ml'` needs a sparse precision, not prior='sma'; use criterion='risk' or another prior."
        raise ValueError(msg)
    gcv_grid = _check_grid(gcv_grid)
    random_state = check_random_state(random_state)
    dt = _check_dtype(dtype)
    chunk_size = _check_chunk(chunk_size)
    check_key(spatial_key, "spatial_key")
    graph_method = check_choice(graph_method, "graph_method", ("knn", "radius"))
    n_neighs = check_int(n_neighs, "n_neighs", low=1, example="6")
    mutual = check_bool(mutual, "mutual")
    radius = check_real(radius, "radius", low=0.0, low_open=True, allow_none=True, example="1.5")
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True, allow_none=True, example="1.0")
    if graph_method == "radius" and radius is None:
        msg = "`graph_method='radius'` needs `radius=` (a distance in the unit of the coordinates, e.g. radius=1.5)."
        raise ValueError(msg)
    c_obs = get_coords(adata, spatial_key)
    _check_spots(c_obs.shape[0], "adata")
    c_new = check_coords(coords_new, name="coords_new")
    if c_new.shape[1] != c_obs.shape[1]:
        msg = f"`coords_new` has {c_new.shape[1]} columns but the observed coordinates have {c_obs.shape[1]}."
        raise ValueError(msg)
    check_unique_names(adata.var_names, "`adata.var_names`")
    check_unique_names(adata.obs_names, "`adata.obs_names`")
    lazy = _is_dask_input(adata, layer)
    if lazy:
        Y = _check_dask_input(adata, layer, "impute", nonneg=nonneg, uncertainty=uncertainty, prior=prior)
    else:
        Y, _ = get_matrix(adata, layer)
    n_obs, n_new = c_obs.shape[0], c_new.shape[0]
    if graph_method == "knn" and n_obs + n_new < n_neighs + 1:
        msg = (
            f"`n_neighs={n_neighs}` needs at least {n_neighs + 1} spots (observed + new), found {n_obs + n_new}; "
            "lower `n_neighs`."
        )
        raise ValueError(msg)

    # ---- work
    coords = np.vstack([c_obs, c_new])
    start = log_start(f"imputing {Y.shape[1]} genes at {n_new} new spots from {n_obs} observed")
    if graph_method == "knn":
        W, Dm = knn_graph(coords, n_neighs, symmetrize="mutual" if mutual else "union")
    else:
        W, Dm = radius_graph(coords, radius, bandwidth=bandwidth)
    op = _operator(W, prior, rho, standardize)
    observed = np.r_[np.ones(n_obs, bool), np.zeros(n_new, bool)]
    connected = core.reached(op, observed)
    sub = core.restrict(op, connected)  # the spots the data determine (whole components)
    obs_sub = observed[connected]
    n_fill = int(connected[n_obs:].sum())
    gcv_rec = None
    lam_used = None
    var_factor = sigma = unc = None
    try:
        if not fixed_obs:
            lam_used = lam
            if lam == "auto" and Y.shape[1] == 0:  # nothing to choose lambda from
                lam_used = None
            elif lam == "auto" and criterion == "ml":
                from .._core.conditional import joint_ml_lambda

                Ysel = _auto_sample(Y, random_state) if lazy else Y
                lam_used, lams, loglik = joint_ml_lambda(Ysel, sub.Q, obs_sub, center=center, seed=_seed(random_state))
                gcv_rec = {"lambda": lams, "loglik": loglik, "criterion": "ml", "n_genes": int(min(Y.shape[1], 500))}
                logger.info("    marginal likelihood chose lambda = %.4g", lam_used)
            elif lam == "auto":
                Ysel = _auto_sample(Y, random_state) if lazy else Y
                res = core.gcv(
                    _pad_rows(Ysel, n_fill),
                    sub,
                    weights=obs_sub.astype(float),
                    grid=gcv_grid,
                    criterion=criterion,
                    seed=random_state,
                    chunk_size=chunk_size,
                    center=center,
                    graph=W[connected][:, connected],
                )
                if res.edge is not None:
                    _warn_edge(float(res.lam), res.grid, prior, W, edge=res.edge)
                gcv_rec = _gcv_record(res, n_genes=None if not lazy else int(Ysel.shape[1]))
                lam_used = float(res.lam)
                logger.info("    the %s criterion chose lambda = %.4g", criterion, lam_used)
        joint = lam_used is not None and lam_used != 0
        if lazy:
            X = _impute_lazy(Y, sub, obs_sub, connected, n_obs, n_new, joint, lam_used, center, dt)
        elif not joint:  # fixed observations (also the limit lambda -> 0 of the joint fit)
            X, var_factor, sigma, unc = _impute_fixed(
                Y, sub, obs_sub, connected, n_obs, n_new, nonneg, center, dt, chunk_size, uncertainty, random_state
            )
        else:
            X, var_factor, sigma, unc = _impute_joint(
                Y, sub, obs_sub, connected, n_obs, n_fill, float(lam_used), nonneg, center, dt, chunk_size,
                uncertainty, random_state,
            )  # fmt: skip
    except NotPositiveDefiniteError as e:  # only an indefinite 'car' precision gets here
        raise ValueError(not_pd_message(prior, rho, W)) from e
    n_lost = int((~connected).sum())
    if n_lost:
        import warnings

        fill = "each gene's mean over the observed spots" if center else "0 (the prior mean; center=False)"
        msg = (
            f"{n_lost} new spot(s) have no graph path to any observed spot, so the data do not determine their "
            f"values: they were set to {fill} and are marked False in `obs['connected']` of the result. Connect "
            "them with a larger `n_neighs` (or graph_method='radius' with a larger `radius`), or drop them."
        )
        warnings.warn(msg, UserWarning, stacklevel=2)

    # ---- write: a new AnnData
    names = pd.Index(list(map(str, adata.obs_names)) + [f"new_{i}" for i in range(n_new)])
    if not names.is_unique:
        names = pd.Index(ad.utils.make_index_unique(names))
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=names), var=adata.var.copy())
    ck, dk, nk = K.conn_key("spatial"), K.dist_key("spatial"), K.neighbors_key("spatial")
    graph_params = {
        "method": graph_method,
        "n_neighbors": n_neighs,
        "mutual": mutual,
        "radius": radius,
        "bandwidth": bandwidth,
    }
    out.uns[nk] = to_writable({"connectivities_key": ck, "distances_key": dk, "params": graph_params})
    params = {
        "fixed_obs": fixed_obs,
        "prior": prior,
        "rho": rho,
        "lambda_spatial": lambda_spatial if isinstance(lambda_spatial, str) else float(lambda_spatial),
        "lambda": lam_used,
        "layer": layer,
        "spatial_key": spatial_key,
        "standardize": standardize,
        "nonneg": nonneg,
        "center": center,
        "criterion": criterion if lam == "auto" else None,
        "uncertainty": uncertainty,
        "random_state": random_state,
        "dtype": dt.name,
        "key_added": key_added,
        **({"backend": "dask"} if lazy else {}),
        **{f"graph_{k}": v for k, v in graph_params.items()},
    }
    uns = {} if gcv_rec is None else {"gcv": gcv_rec}
    if unc is not None:
        uns["uncertainty"] = unc
    save_result(
        out,
        uns_key=key_added,
        params=params,
        uns=uns,
        obs={"observed": observed, "connected": connected, f"{key_added}_var_factor": var_factor},
        var={f"{key_added}_sigma": sigma},
        obsm={K.SPATIAL_KEY: coords},
        obsp={ck: W, dk: Dm},
    )
    log_finish(start)
    return out


# the three fits of impute, in memory and lazily
def _pad_rows(Y, n_fill: int):
    """``Y`` with ``n_fill`` rows of zeros below (the unobserved spots of the joint fit; their weight is 0)."""
    if sp.issparse(Y):
        return sp.vstack([sp.csr_matrix(Y), sp.csr_matrix((n_fill, Y.shape[1]))]).tocsr()
    return np.vstack([np.asarray(Y, dtype=np.float64), np.zeros((n_fill, Y.shape[1]))])


def _impute_fixed(Y, sub, obs_sub, connected, n_obs, n_new, nonneg, center, dt, chunk_size, uncertainty, seed):
    """Conditional means with the observations fixed, and (``uncertainty``) the conditional variances."""
    from .._core.conditional import fixed_var_factor, reml_quadratic

    g = Y.shape[1]
    X = np.empty((n_obs + n_new, g), dtype=dt)
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    new_conn = connected[n_obs:]
    vf = fixed_var_factor(sub.Q, obs_sub, center=center, seed=_seed(seed)) if uncertainty else None
    q = np.zeros(g)
    cs = core._chunk_size(n_obs + n_new, g, chunk_size)
    for s0 in range(0, g, cs):
        Yc = core._dense_cols(src, s0, min(g, s0 + cs))
        s1 = s0 + Yc.shape[1]
        X[:n_obs, s0:s1] = Yc
        mu = Yc.mean(axis=0) if center else np.zeros(Yc.shape[1])
        Xm = core.conditional_mean(sub, Yc, obs_sub, nonneg=nonneg, center=center)
        block = np.empty((n_new, Yc.shape[1]))
        block[new_conn] = Xm
        block[~new_conn] = mu
        X[n_obs:, s0:s1] = block
        if vf is not None:
            q[s0:s1] = reml_quadratic(sub.Q, np.vstack([Yc - mu, Xm - mu]), obs_sub, vf, center=center)
    if vf is None:
        return X, None, None, None
    d = np.full(n_obs + n_new, np.nan)
    d[:n_obs] = 0.0
    d[n_obs:][new_conn] = vf.d
    unc = {
        "model": "fixed_obs",
        "sigma": "prior_scale_reml",
        "method": vf.method,
        "max_rel_error": vf.max_rel_error,
        "dof": vf.dof,
    }
    return X, d, np.sqrt(q / vf.dof), unc


def _impute_joint(Y, sub, obs_sub, connected, n_obs, n_fill, lam, nonneg, center, dt, chunk_size, uncertainty, seed):
    """Joint denoising and filling, and (``uncertainty``) the posterior variances."""
    from .._core.conditional import joint_var_factor
    from .._core.uncertainty import residual_sigma2

    g = Y.shape[1]
    Xc = core.smooth(
        _pad_rows(Y, n_fill),
        sub,
        lam,
        weights=obs_sub.astype(float),
        nonneg=nonneg,
        dtype=np.float64,
        chunk_size=chunk_size,
        center=center,
    )
    X = np.empty((connected.size, g), dtype=dt)
    X[connected] = Xc
    if not connected.all():
        X[~connected] = np.asarray(Y.mean(axis=0), dtype=np.float64).ravel() if center else 0.0
    if not uncertainty:
        return X, None, None, None
    vf = joint_var_factor(sub.Q, obs_sub.astype(float), lam, center=center, seed=_seed(seed))
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    rss = np.zeros(g)
    cs = core._chunk_size(n_obs, g, chunk_size)
    for s0 in range(0, g, cs):
        Yc = core._dense_cols(src, s0, min(g, s0 + cs))
        rss[s0 : s0 + Yc.shape[1]] = ((Yc - Xc[:n_obs, s0 : s0 + Yc.shape[1]]) ** 2).sum(axis=0)
    d = np.full(connected.size, np.nan)
    d[connected] = vf.d
    unc = {
        "model": "joint",
        "sigma": "residual",
        "method": vf.method,
        "max_rel_error": vf.max_rel_error,
        "trace": vf.trace,
        "dof": vf.dof,
    }
    return X, d, np.sqrt(residual_sigma2(rss, n_obs, vf.trace)), unc


def _impute_lazy(Y, sub, obs_sub, connected, n_obs, n_new, joint, lam, center, dt):
    """A lazy dask result (gene blocks of every spot) of the fixed or joint fit."""
    from .._core.conditional import lazy_fill

    Q = sub.Q
    if joint:
        M = sp.diags(obs_sub.astype(float)) + lam * Q
        R = sp.eye(int(connected.sum()), n_obs, format="csr")  # observed spots are the first connected ones
        return lazy_fill(Y, M, R, sys_rows=np.flatnonzero(connected), copy_rows=None, n_out=n_obs + n_new,
                         center=center, dtype=dt)  # fmt: skip
    o, m = np.flatnonzero(obs_sub), np.flatnonzero(~obs_sub)
    return lazy_fill(
        Y,
        Q[m][:, m],
        -Q[m][:, o],
        sys_rows=n_obs + np.flatnonzero(connected[n_obs:]),
        copy_rows=np.arange(n_obs),
        n_out=n_obs + n_new,
        center=center,
        dtype=dt,
    )


def _auto_sample(Yd, random_state, max_genes: int = 500):
    """At most ``max_genes`` random genes of a dask matrix, loaded into memory (to choose lambda)."""
    g = Yd.shape[1]
    rng = np.random.default_rng(random_state)
    cols = np.sort(rng.choice(g, size=min(g, max_genes), replace=False))
    Ys = Yd[:, cols].compute()
    return Ys.tocsr() if sp.issparse(Ys) else np.asarray(Ys)


def _seed(seed) -> int:
    return 0 if seed is None else int(seed)


def _check_uncertainty(uncertainty: bool, nonneg: bool, prior: str) -> None:
    """Options whose posterior is not the Gaussian one computed here: a clear error before any work."""
    if not uncertainty:
        return
    if nonneg:
        msg = (
            "`uncertainty=True` is not available with nonneg=True (a truncated posterior); pass "
            "uncertainty=False or nonneg=False."
        )
        raise ValueError(msg)
    if prior == "sma":
        msg = (
            "`uncertainty=True` is not available with prior='sma' (its precision is dense); use prior='icar', "
            "'car', 'sar' or 'isar', or uncertainty=False."
        )
        raise ValueError(msg)


def _check_dask_input(adata, layer, what: str, *, nonneg: bool, uncertainty: bool, prior: str, nonneg_ok=False):
    """The dask matrix of ``adata`` (``X`` or ``layer``), checked; options that need memory say what to do."""
    Yd = adata.X if layer is None else adata.layers[layer]
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    todo = f"load the data first: `{where} = {where}.compute()` (or `adata = adata.to_memory()`)"
    if uncertainty:
        msg = f"`{what}(..., uncertainty=True)` needs the data in memory (one pass for every gene's sigma); {todo}."
        raise ValueError(msg)
    if nonneg and not nonneg_ok:
        msg = f"`{what}(..., nonneg=True)` needs the data in memory (an iterative constrained solve); {todo}."
        raise ValueError(msg)
    if prior == "sma":
        msg = (
            f"prior='sma' on dask input is not supported by `{what}` (its precision is dense); use 'icar' or "
            f"'car', or {todo}."
        )
        raise ValueError(msg)
    if Yd.ndim != 2:
        msg = f"Expected `{where}` to be a 2D dask array, found {Yd.ndim} dimensions."
        raise ValueError(msg)
    if not (np.issubdtype(Yd.dtype, np.number) or Yd.dtype == bool):
        msg = f"Expected `{where}` to hold numeric data, found dtype {Yd.dtype}."
        raise TypeError(msg)
    return Yd


# ----------------------------------------------------------------------------------------------------------------
# enhance
# ----------------------------------------------------------------------------------------------------------------
def _spot_spacing(coords: np.ndarray) -> float:
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(coords)
    return float(np.median(d[:, 1]))


def subspot_lattice(coords: np.ndarray, factor: int, spacing: float | None = None):
    """A square lattice of spacing ``spacing / factor`` over the spots' footprints.

    Every lattice point is assigned to its nearest spot (a Voronoi partition) and kept when it lies inside that
    spot's cell: within ``spacing / sqrt(3)`` (the hexagon's circumradius) on hexagonal arrays (6 neighbours at
    the spacing), within ``spacing / 2`` along both axes on square ones.

    Returns
    -------
    sub_coords
        ``(n_sub, 2)`` coordinates.
    parent
        ``(n_sub,)`` index of the parent spot.
    """
    from sklearn.neighbors import NearestNeighbors

    d = _spot_spacing(coords) if spacing is None else float(spacing)
    step = d / factor
    # lattice x = base + k * step, anchored so that on a square grid of spacing d the sub-spots sit symmetrically
    # inside each spot; only the lattice points within d of some spot are generated (memory ~ n * factor**2,
    # never the bounding box of the tissue)
    lo = coords.min(axis=0) - d
    base = lo + step / 2
    off = (coords.min(axis=0) - d / 2 + step / 2) - base
    base = base + off - np.round(off / step) * step
    span = np.arange(-factor - 1, factor + 2)
    centre = np.round((coords - base) / step).astype(np.int64)
    kx, ky = np.broadcast_arrays(
        centre[:, 0, None, None] + span[None, :, None], centre[:, 1, None, None] + span[None, None, :]
    )
    cells = np.unique(np.column_stack([kx.ravel(), ky.ravel()]), axis=0)
    pts = base + cells * step
    nn = NearestNeighbors(n_neighbors=1).fit(coords)
    dist, idx = nn.kneighbors(pts)
    n_close = np.array([len(i) for i in nn.radius_neighbors(coords[: min(len(coords), 500)], radius=1.05 * d)[1]])
    hexagonal = np.median(n_close - 1) >= 5
    if hexagonal:
        keep = dist[:, 0] <= d / np.sqrt(3) + 1e-9 * d
    else:
        keep = (np.abs(pts - coords[idx[:, 0]]) <= d / 2 + 1e-9 * d).all(axis=1)
    sub, parent = pts[keep], idx[keep, 0]
    order = np.lexsort((sub[:, 0], sub[:, 1], parent))
    return sub[order], parent[order]


def enhance(
    adata,
    *,
    factor: int = 3,
    prior: Literal["sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    lambda_spatial: float = 0.1,
    layer: str | None = None,
    spatial_key: str = K.SPATIAL_KEY,
    n_neighs: int = 4,
    nonneg: bool = False,
    center: bool = True,
    uncertainty: bool = False,
    dtype: Literal["float32", "float64"] = "float32",
    chunk_size: int | None = None,
    key_added: str = "enhance",
):
    r"""Resolution enhancement: expression on a sub-spot lattice whose spot averages match the data.

    Each spot's footprint is tiled by a square lattice of spacing ``spot spacing / factor``
    (:func:`subspot_lattice`; about ``factor**2`` sub-spots per spot). With :math:`A` the averaging matrix
    (spot value = mean of its sub-spots) and :math:`Q` the prior on the sub-spot kNN graph (``n_neighs``
    neighbours), the sub-spot expression is

    .. math::

        \hat X = \arg\min_X \lVert Y - A X \rVert_F^2 + \lambda\, \mathrm{tr}(X^T Q X)
        = (A^T A + \lambda Q)^{-1} A^T Y,

    solved exactly with one sparse factorization. Small :math:`\lambda` keeps spot averages close to the data
    (as :math:`\lambda \to 0`, the smoothest field with exactly the observed averages). With ``center=True``
    (default) the prior is centred at each gene's spot mean :math:`m` (a plug-in intercept, see :func:`smooth`):
    :math:`\hat X = \mathbf 1 m^T + (A^T A + \lambda Q)^{-1} A^T (Y - \mathbf 1 m^T)`; ``center=False`` is the
    formula above.

    Parameters
    ----------
    adata
        Spots with coordinates in ``adata.obsm[spatial_key]``.
    factor
        Sub-spots per spot side (integer >= 2).
    prior, rho
        Prior on the sub-spot lattice ('sma' is not offered here).
    lambda_spatial
        :math:`\lambda > 0`.
    layer, spatial_key, dtype, chunk_size
        As in :func:`smooth`.
    n_neighs
        Neighbours per sub-spot (4: the square lattice).
    nonneg
        Clip negative sub-spot values at 0.
    center
        Centre the prior at each gene's mean (see above).
    uncertainty
        Also compute the sub-spots' posterior standard deviations, stored as for :func:`smooth`: with the noise
        model :math:`Y = A X + \varepsilon`, :math:`\varepsilon \sim N(0, \sigma_g^2)`, and the prior
        :math:`x_g \sim N(\mu_g, \frac{\sigma_g^2}{\lambda} Q^{-1})`, the posterior covariance of gene ``g`` is
        :math:`\sigma_g^2 (A^T A + \lambda Q)^{-1}`; :math:`d` is its diagonal (plus the mean's uncertainty with
        ``center``), exact by selected inversion, and :math:`\sigma_g^2 = \mathrm{RSS}_g / (n_{spots} -
        \mathrm{tr} H)` from the spot residuals :math:`Y - A \hat X`. Not available with ``nonneg=True`` or on
        dask-backed data.
    key_added
        Name of the result (``uns[key_added]`` and the uncertainty keys below).

    Returns
    -------
    A new AnnData over the sub-spots:

    - ``X`` — ``(n_sub, n_vars)`` dense expression;
    - ``obs['parent_spot']`` — categorical, ``adata.obs_names`` of the parent spot;
    - ``obsm['spatial']`` — ``(n_sub, 2)`` sub-spot coordinates (same unit as the input);
    - ``obsp['spatial_connectivities']`` / ``['spatial_distances']`` — the sub-spot graph;
    - ``uns[key_added]['params']``;
    - with ``uncertainty=True``: ``obs[f'{key_added}_var_factor']``, ``var[f'{key_added}_sigma']`` and
      ``uns[key_added]['uncertainty']`` (as :func:`impute`), so that
      ``sm.get.posterior_sd(out, genes, key=key_added)`` gives every sub-spot's sd.

    **Dask-backed data**: ``X`` of the result is a lazy dask array of gene blocks (each worker factors
    :math:`A^T A + \lambda Q` once); ``uncertainty=True`` needs the data in memory.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=100, n_genes=2, seed=0)
    >>> out = sm.tl.enhance(adata, factor=2, uncertainty=True)
    >>> out.n_obs > 3 * adata.n_obs, out.obs["enhance_var_factor"].shape == (out.n_obs,)
    (True, True)
    >>> sm.get.posterior_sd(out, ["gene_0", "gene_1"], key="enhance").shape == (out.n_obs, 2)
    True
    """
    import anndata as ad
    import pandas as pd

    from .._core.graph import knn_graph

    # ---- validate everything before any work
    check_adata(adata, writes=False)
    prior, rho = check_precision_args(prior, rho)
    if prior == "sma":
        msg = "`enhance` supports the priors 'sar', 'isar', 'car' and 'icar', found 'sma' (e.g. prior='icar')."
        raise ValueError(msg)
    factor = check_int(factor, "factor", low=2, example="3")
    lam = check_real(lambda_spatial, "lambda_spatial", low=0.0, low_open=True, example="0.1")
    nonneg = check_bool(nonneg, "nonneg")
    center = check_bool(center, "center")
    uncertainty = check_bool(uncertainty, "uncertainty")
    _check_uncertainty(uncertainty, nonneg, prior)
    check_key(key_added, "key_added")
    dt = _check_dtype(dtype)
    chunk_size = _check_chunk(chunk_size)
    check_key(spatial_key, "spatial_key")
    n_neighs = check_int(n_neighs, "n_neighs", low=1, example="4")
    coords = get_coords(adata, spatial_key)
    _check_spots(coords.shape[0], "adata", minimum=2)
    if coords.shape[1] != 2:
        msg = f"`enhance` needs 2D coordinates; `adata.obsm[{spatial_key!r}]` has {coords.shape[1]} columns."
        raise ValueError(msg)
    _check_distinct(coords, spatial_key)
    check_unique_names(adata.var_names, "`adata.var_names`")
    check_unique_names(adata.obs_names, "`adata.obs_names`")
    lazy = _is_dask_input(adata, layer)
    if lazy:
        Y = _check_dask_input(
            adata, layer, "enhance", nonneg=nonneg, uncertainty=uncertainty, prior=prior, nonneg_ok=True
        )  # fmt: skip
    else:
        Y, _ = get_matrix(adata, layer)

    # ---- work
    start = log_start(f"enhancing {adata.n_obs} spots by a factor of {factor}")
    sub, parent = subspot_lattice(coords, factor)
    n_sub = sub.shape[0]
    if n_sub < n_neighs + 1:
        msg = f"`n_neighs={n_neighs}` needs at least {n_neighs + 1} sub-spots, found {n_sub}; lower `n_neighs`."
        raise ValueError(msg)
    counts = np.bincount(parent, minlength=adata.n_obs)
    if (counts == 0).any():  # pragma: no cover - distinct spots each hold their own lattice cell
        msg = "Some spots received no sub-spot; use a larger `factor`."
        raise ValueError(msg)
    A = sp.csr_matrix((1.0 / counts[parent], (parent, np.arange(n_sub))), shape=(adata.n_obs, n_sub))
    W, Dm = knn_graph(sub, n_neighs, symmetrize="mutual")
    op = _operator(W, prior, rho, False)
    var_factor = sigma = unc = None
    try:
        if lazy:
            from .._core.conditional import lazy_fill

            X = lazy_fill(Y, A.T @ A + lam * op.Q, A.T, sys_rows=np.arange(n_sub), copy_rows=None, n_out=n_sub,
                          center=center, dtype=dt)  # fmt: skip
            if nonneg:
                X = X.clip(0, None)
        else:
            X = core.aggregate_solve(
                A, Y, op.Q, lam, dtype=np.float64 if uncertainty else dt, chunk_size=chunk_size, center=center
            )
            if nonneg:
                np.maximum(X, 0, out=X)
            if uncertainty:
                var_factor, sigma, unc = _enhance_uncertainty(A, Y, X, op.Q, lam, center, chunk_size)
                X = X.astype(dt, copy=False)
    except NotPositiveDefiniteError as e:
        raise ValueError(not_pd_message(prior, rho, W)) from e

    # ---- write: a new AnnData
    names = np.asarray(adata.obs_names).astype(str)
    out = ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=pd.Index([f"{names[p]}_sub{i}" for i, p in enumerate(parent)])),
        var=adata.var.copy(),
    )
    params = {
        "factor": factor,
        "prior": prior,
        "rho": rho,
        "lambda_spatial": lam,
        "layer": layer,
        "spatial_key": spatial_key,
        "n_neighs": n_neighs,
        "nonneg": nonneg,
        "center": center,
        "uncertainty": uncertainty,
        "dtype": dt.name,
        "key_added": key_added,
        **({"backend": "dask"} if lazy else {}),
    }
    save_result(
        out,
        uns_key=key_added,
        params=params,
        uns={} if unc is None else {"uncertainty": unc},
        obs={"parent_spot": pd.Categorical(names[parent], categories=names), f"{key_added}_var_factor": var_factor},
        var={f"{key_added}_sigma": sigma},
        obsm={K.SPATIAL_KEY: sub},
        obsp={K.conn_key("spatial"): W, K.dist_key("spatial"): Dm},
    )
    log_finish(start)
    return out


def _enhance_uncertainty(A, Y, X, Q, lam: float, center: bool, chunk_size):
    """Sub-spot variance factor, per-gene noise sd and the record (``uncertainty`` in :func:`enhance`)."""
    from .._core.conditional import enhance_var_factor
    from .._core.uncertainty import residual_sigma2

    vf = enhance_var_factor(A, Q, lam, center=center)
    n_s, g = Y.shape
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    rss = np.zeros(g)
    cs = core._chunk_size(n_s, g, chunk_size)
    for s0 in range(0, g, cs):
        Yc = core._dense_cols(src, s0, min(g, s0 + cs))
        s1 = s0 + Yc.shape[1]
        rss[s0:s1] = ((Yc - A @ X[:, s0:s1]) ** 2).sum(axis=0)
    unc = {
        "model": "aggregate",
        "sigma": "residual",
        "method": vf.method,
        "max_rel_error": vf.max_rel_error,
        "trace": vf.trace,
        "dof": vf.dof,
    }
    return vf.d, np.sqrt(residual_sigma2(rss, n_s, vf.trace)), unc


def _check_distinct(coords: np.ndarray, spatial_key: str) -> None:
    """``ValueError`` when two spots share coordinates (their footprints, and so their sub-spots, coincide)."""
    _, first, counts = np.unique(coords, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        n_dup = int((counts - 1).sum())
        example = coords[first[np.argmax(counts > 1)]].tolist()
        msg = (
            f"{n_dup} spot(s) in `adata.obsm[{spatial_key!r}]` share their coordinates with another spot (e.g. at "
            f"{example}); `enhance` tiles each spot's own footprint, so merge or drop the duplicated spots first."
        )
        raise ValueError(msg)
