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
    criterion: Literal["risk", "gcv"] = "risk",
    gcv_grid: np.ndarray | list[float] | None = None,
    random_state: int | None = 0,
    dtype: Literal["float32", "float64"] = "float32",
    chunk_size: int | None = None,
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
        How ``lambda_spatial='auto'`` chooses (see :func:`smooth`).
    layer
        Expression to impute (``None``: ``adata.X``).
    spatial_key
        Coordinates in ``adata.obsm``.
    graph_method, n_neighs, mutual, radius, bandwidth
        Graph over all spots, as in :func:`smoother.pp.spatial_graph`.

    Returns
    -------
    A new AnnData over ``n_obs + n_new`` spots (observed first, new ones named ``'new_0'``, ...):

    - ``X`` — ``(n_obs + n_new, n_vars)`` dense imputed (and, with ``fixed_obs=False``, denoised) expression;
    - ``obs['observed']`` — boolean; ``obs['connected']`` — boolean, ``False`` for new spots with no graph path to
      an observed spot (undetermined; see above); ``obsm['spatial']`` — all coordinates;
    - ``obsp['spatial_connectivities']``, ``obsp['spatial_distances']``, ``uns['spatial_neighbors']`` — the graph;
    - ``uns['impute']['params']`` (``lambda`` is the value used, ``None`` with ``fixed_obs=True``); with
      ``lambda_spatial='auto'`` also ``uns['impute']['gcv']`` as in :func:`smooth`.
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
    criterion = check_choice(criterion, "criterion", ("risk", "gcv"))
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
    X = np.empty((n_obs + n_new, Y.shape[1]), dtype=dt)
    src = Y.tocsc() if sp.issparse(Y) else np.asarray(Y)
    gcv_rec = None
    lam_used = None
    try:
        if not fixed_obs:
            n_fill = int(connected[n_obs:].sum())
            Yall = (
                sp.vstack([sp.csr_matrix(Y), sp.csr_matrix((n_fill, Y.shape[1]))]).tocsr()
                if sp.issparse(Y)
                else np.vstack([np.asarray(Y, dtype=np.float64), np.zeros((n_fill, Y.shape[1]))])
            )
            lam_used = lam
            if lam == "auto" and Y.shape[1] == 0:  # nothing to choose lambda from
                lam_used = None
            elif lam == "auto":
                res = core.gcv(
                    Yall,
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
                gcv_rec = _gcv_record(res)
                lam_used = float(res.lam)
                logger.info("    the %s criterion chose lambda = %.4g", criterion, lam_used)
        if lam_used is None or lam_used == 0:  # fixed observations (also the limit lambda -> 0 of the joint fit)
            cs = core._chunk_size(n_obs + n_new, Y.shape[1], chunk_size)
            for s0 in range(0, Y.shape[1], cs):
                Yc = core._dense_cols(src, s0, min(Y.shape[1], s0 + cs))
                s1 = s0 + Yc.shape[1]
                X[:n_obs, s0:s1] = Yc
                block = np.empty((n_new, Yc.shape[1]))
                block[connected[n_obs:]] = core.conditional_mean(sub, Yc, obs_sub, nonneg=nonneg, center=center)
                block[~connected[n_obs:]] = Yc.mean(axis=0) if center else 0.0
                X[n_obs:, s0:s1] = block
        else:
            Xc = core.smooth(
                Yall,
                sub,
                float(lam_used),
                weights=obs_sub.astype(float),
                nonneg=nonneg,
                dtype=np.float64,
                chunk_size=chunk_size,
                center=center,
            )
            X[connected] = Xc
            if not connected.all():
                X[~connected] = np.asarray(Y.mean(axis=0), dtype=np.float64).ravel() if center else 0.0
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
        "random_state": random_state,
        "dtype": dt.name,
        **{f"graph_{k}": v for k, v in graph_params.items()},
    }
    save_result(
        out,
        uns_key="impute",
        params=params,
        uns={} if gcv_rec is None else {"gcv": gcv_rec},
        obs={"observed": observed, "connected": connected},
        obsm={K.SPATIAL_KEY: coords},
        obsp={ck: W, dk: Dm},
    )
    log_finish(start)
    return out


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
    dtype: Literal["float32", "float64"] = "float32",
    chunk_size: int | None = None,
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

    Returns
    -------
    A new AnnData over the sub-spots:

    - ``X`` — ``(n_sub, n_vars)`` dense expression;
    - ``obs['parent_spot']`` — categorical, ``adata.obs_names`` of the parent spot;
    - ``obsm['spatial']`` — ``(n_sub, 2)`` sub-spot coordinates (same unit as the input);
    - ``obsp['spatial_connectivities']`` / ``['spatial_distances']`` — the sub-spot graph;
    - ``uns['enhance']['params']``.
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
    try:
        X = core.aggregate_solve(A, Y, op.Q, lam, dtype=dt, chunk_size=chunk_size, center=center)
    except NotPositiveDefiniteError as e:
        raise ValueError(not_pd_message(prior, rho, W)) from e
    if nonneg:
        np.maximum(X, 0, out=X)

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
        "dtype": dt.name,
    }
    save_result(
        out,
        uns_key="enhance",
        params=params,
        obs={"parent_spot": pd.Categorical(names[parent], categories=names)},
        obsm={K.SPATIAL_KEY: sub},
        obsp={K.conn_key("spatial"): W, K.dist_key("spatial"): Dm},
    )
    log_finish(start)
    return out


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
