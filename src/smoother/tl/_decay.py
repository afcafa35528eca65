r"""Dependency diagnostics: how fast correlation decays with neighbourhood degree, under a prior and in the data.

A prior (which model, which ``rho``, which graph scaling) is a good choice when the correlation it implies
between a spot and its ``k``-th nearest neighbour decays with ``k`` about as fast as the similarity of the data
does. :func:`corr_decay` computes the prior's curve, :func:`similarity_decay` the data's, :func:`fit_decay` the
mono-exponential decay rate of each curve and :func:`scan_rho` the ``rho`` whose curve matches the data best.
Results live in ``adata.uns['corr_decay'][name]``; :func:`smoother.pl.corr_decay` plots them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import _constants as K
from .._anndata import check_adata, check_key, get_coords, get_graph, to_writable
from .._settings import logger
from .._validation import check_prior, check_rho

__all__ = ["corr_decay", "fit_decay", "scan_rho", "similarity_decay"]


def _check_ks(n: int, min_k, max_k, n_sample) -> None:
    from .._core.decay import check_decay_args

    check_decay_args(n, min_k, max_k, n_sample)


def _store(adata, name: str, entry: dict, *, copy: bool, start: float):
    """Write ``entry`` to ``adata.uns['corr_decay'][name]`` (of a copy with ``copy=True``), log, return the copy."""
    adata = adata.copy() if copy else adata
    store = adata.uns.get(K.CORR_DECAY)
    store = dict(store) if isinstance(store, dict) or hasattr(store, "keys") else {}
    store[name] = entry
    adata.uns[K.CORR_DECAY] = store
    logger.info("    added adata.uns['%s']['%s'] (%.2fs)", K.CORR_DECAY, name, time.perf_counter() - start)
    return adata if copy else None


def _rate(df: pd.DataFrame, quantile: str = "Q50") -> tuple[float, float, float]:
    from .._core.decay import fit_mono_exp

    sub = df[df["k"] >= 1] if (df["k"] >= 1).sum() >= 3 else df
    return fit_mono_exp(sub["k"].to_numpy(), sub[quantile].to_numpy())


def default_name(prior: str, rho: float, standardize: bool = False) -> str:
    """The default entry name of a prior's curve, e.g. ``'icar_rho0.99'`` (``'..._std'`` when standardized)."""
    return f"{prior}_rho{rho:g}" + ("_std" if standardize else "")


def _prior_curve(W, coords, nbrs, *, prior, rho, standardize, min_k, max_k, n_sample, seed):
    """Correlation and variance tables of one prior (checks positive definiteness, raises a named error)."""
    from .._core.decay import corr_decay_quantiles, corr_decay_quantiles_from_cov, sma_covariance, var_table
    from .._core.linalg import NotPositiveDefiniteError
    from .._core.precision import not_pd_message, precision

    kw = {"min_k": min_k, "max_k": max_k, "return_var": True, "n_sample": n_sample, "seed": seed, "nbrs": nbrs}
    if prior == "sma":
        W = W.copy()
        np.maximum(W.data, 0.0, out=W.data)
        corr, var = corr_decay_quantiles_from_cov(sma_covariance(W, rho), coords, **kw)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not symmetric.*", category=UserWarning)
            Q = precision(W, prior, rho, standardize=False)
        try:
            corr, var = corr_decay_quantiles(Q, coords, **kw)
        except NotPositiveDefiniteError as e:
            raise NotPositiveDefiniteError(not_pd_message(prior, rho, W)) from e
    if standardize:  # S^1/2 Q S^1/2 leaves correlations unchanged and makes every variance 1
        var = var_table(np.ones(coords.shape[0]))
    return corr, var


def corr_decay(
    adata,
    *,
    prior: str = "icar",
    rho: float = 0.99,
    standardize: bool = False,
    connectivity_key: str = K.DEFAULT_CONN,
    spatial_key: str = K.SPATIAL_KEY,
    min_k: int = 0,
    max_k: int = 50,
    n_sample: int | None = None,
    seed: int = 0,
    key_added: str | None = None,
    copy: bool = False,
):
    r"""Decay of the prior's implied correlation with neighbourhood degree.

    For every ``k`` in ``[min_k, max_k]``, the quantiles (Q10, Q25, Q50, Q75, Q90) over spots ``i`` of

    .. math::

        r_{ik} = \frac{\Sigma_{ij}}{\sqrt{\Sigma_{ii}\Sigma_{jj}}}, \qquad \Sigma = Q^{-1},

    where ``j`` is the ``k``-th nearest spatial neighbour of ``i`` (``k = 0``: the spot itself; Euclidean
    neighbours of ``adata.obsm[spatial_key]``), plus the quantiles of the variances :math:`\Sigma_{ii}`.
    :math:`\Sigma` is never formed: ``Q`` is factored once (sparse :math:`LDL^T`), the variances are the exact
    diagonal of :math:`Q^{-1}` (selected inversion) and each spot's ``max_k + 1`` covariances come from a sparse
    solve. The SMA prior's covariance :math:`(I + \rho W)(I + \rho W)^T` is sparse and read directly.

    Which estimate: with ``n_sample=None`` and at most 20,000 spots (or ``n_sample >= n``) every spot is used
    and the table is exact. Otherwise the correlations of a uniform sample of ``n_sample`` spots (5,000 when
    ``None``), drawn without replacement with ``seed``, are used: the quantiles are the empirical quantiles of
    exact correlations of the sampled spots (error of order ``1 / sqrt(n_sample)``). The variance quantiles
    always use all spots.

    Parameters
    ----------
    adata
        AnnData with a spatial graph in ``adata.obsp[connectivity_key]`` and coordinates in
        ``adata.obsm[spatial_key]``.
    prior
        ``'sma'``, ``'sar'``, ``'isar'``, ``'car'`` or ``'icar'``.
    rho
        Spatial autocorrelation; must give a proper prior (e.g. ``'icar'`` needs ``rho < 1``).
    standardize
        Use the standardized prior (unit variance everywhere). Correlations are unchanged; variances become 1.
    connectivity_key
        Key of the graph in ``adata.obsp``.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    min_k, max_k
        Range of neighbourhood degrees (``max_k < n_obs``).
    n_sample
        Number of spots whose correlations are used (see above).
    seed
        Seed of the spot sample.
    key_added
        Entry name; default e.g. ``'icar_rho0.99'`` (``'icar_rho0.99_std'`` with ``standardize``).
    copy
        Return a copy of ``adata`` with the result instead of writing to ``adata``.

    Returns
    -------
    ``None`` (or the changed copy with ``copy=True``); writes ``adata.uns['corr_decay'][name]``, a dict with

    - ``'quantiles'``: ``pandas.DataFrame``, one row per ``k``, columns ``Q10, Q25, Q50, Q75, Q90, k``;
    - ``'variance'``: one-row ``DataFrame``, columns ``Q10 .. Q90`` (quantiles of the implied variances);
    - ``'decay_rate'``: ``beta`` of :math:`Q50(k) \approx \alpha e^{-\beta k} + \theta` over ``k >= 1``
      (``'decay_fit'``: ``[alpha, beta, theta]``);
    - ``'params'``: the arguments, ``'kind'`` = ``'prior'``, ``'exact'`` (all spots used) and ``'n_used'``.

    Raises
    ------
    KeyError
        Missing graph or coordinates.
    ValueError
        Bad ``prior``/``rho``/``k`` range, or a prior that is singular or not positive definite (the message
        names a valid ``rho``).
    """
    from .._core.decay import choose_spots
    from .._core.precision import not_pd_message

    check_adata(adata)
    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    if not isinstance(standardize, bool | np.bool_):
        msg = f"Expected `standardize` to be True or False, found `{standardize!r}`."
        raise TypeError(msg)
    if prior in ("icar", "isar") and rho >= 1.0:
        from .._core.linalg import NotPositiveDefiniteError

        raise NotPositiveDefiniteError(not_pd_message(prior, rho))
    W = get_graph(adata, connectivity_key)
    coords = get_coords(adata, spatial_key)
    _check_ks(adata.n_obs, min_k, max_k, n_sample)
    name = default_name(prior, rho, bool(standardize)) if key_added is None else check_key(key_added, "key_added")

    start = time.perf_counter()
    logger.info("computing correlation decay of the '%s' prior (rho = %g)", prior, rho)
    nbrs = None  # the engine finds the neighbours of the spots it uses
    corr, var = _prior_curve(
        W,
        coords,
        nbrs,
        prior=prior,
        rho=rho,
        standardize=bool(standardize),
        min_k=min_k,
        max_k=max_k,
        n_sample=n_sample,
        seed=seed,
    )
    spots = choose_spots(adata.n_obs, n_sample, seed)
    alpha, beta, theta = _rate(corr)
    params = {
        "kind": "prior",
        "prior": prior,
        "rho": rho,
        "standardize": bool(standardize),
        "connectivity_key": connectivity_key,
        "spatial_key": spatial_key,
        "min_k": int(min_k),
        "max_k": int(max_k),
        "n_sample": n_sample,
        "seed": int(seed),
        "exact": spots is None,
        "n_used": int(adata.n_obs if spots is None else len(spots)),
    }
    return _store(
        adata,
        name,
        {
            "quantiles": corr,
            "variance": var,
            "decay_rate": beta,
            "decay_fit": np.array([alpha, beta, theta]),
            "params": to_writable(params),
        },
        copy=copy,
        start=start,
    )


def _representation(adata, use_rep: str, n_pcs: int | None, seed: int) -> np.ndarray:
    """``adata.obsm[use_rep][:, :n_pcs]``, ``adata.X`` for ``'X'``, or PCA of ``adata.X`` computed here."""
    import scipy.sparse as sp

    if use_rep == "X":
        X = adata.X
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        return np.asarray(X, dtype=np.float64)
    if use_rep in adata.obsm:
        X = np.asarray(adata.obsm[use_rep], dtype=np.float64)
        return X if n_pcs is None else X[:, :n_pcs]
    if use_rep != "X_pca":
        msg = (
            f"Representation {use_rep!r} not found in `adata.obsm` (available: {list(adata.obsm.keys())}); "
            "pass `use_rep='X_pca'` (computed when missing) or `use_rep='X'`."
        )
        raise KeyError(msg)
    import scanpy as sc

    n_comps = min(n_pcs or 50, adata.n_obs - 1, adata.n_vars - 1)
    if n_comps < 1:
        msg = f"Cannot compute a PCA of a {adata.n_obs} x {adata.n_vars} matrix; pass `use_rep='X'`."
        raise ValueError(msg)
    logger.info("    computing %d principal components of adata.X (not stored)", n_comps)
    X = adata.X
    X = X.astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    return np.asarray(sc.pp.pca(X, n_comps=n_comps, random_state=seed), dtype=np.float64)


def similarity_decay(
    adata,
    *,
    use_rep: str = "X_pca",
    n_pcs: int | None = 20,
    spatial_key: str = K.SPATIAL_KEY,
    min_k: int = 0,
    max_k: int = 50,
    topk: bool = False,
    cdf_k: int = 6,
    n_null: int = 100,
    seed: int = 0,
    key_added: str = "data",
    copy: bool = False,
):
    r"""Decay of the data's cosine similarity with neighbourhood degree, and its CDF against a shuffled null.

    For every ``k`` in ``[min_k, max_k]``: the quantiles (Q10 .. Q90) over spots ``i`` of the cosine similarity
    of the representation between ``i`` and its ``k``-th nearest spatial neighbour (with ``topk=True``: all of its
    ``0..k`` nearest, the classic option). Plus ``similarity_cdf``: the quantile function of the similarity of
    each spot with its ``cdf_k`` nearest neighbours, and of a null in which the two ends of those pairs are
    shuffled independently (``n_null`` shuffles, at most 2,000,000 null pairs in all). Everything is vectorized
    over spots.

    Parameters
    ----------
    adata
        AnnData with coordinates in ``adata.obsm[spatial_key]``.
    use_rep
        Key in ``adata.obsm`` (its first ``n_pcs`` columns are used), or ``'X'`` for ``adata.X``. When
        ``'X_pca'`` is missing, ``n_pcs`` principal components of ``adata.X`` are computed with
        :func:`scanpy.pp.pca` for this call only and **not** written to ``adata`` (run ``sc.pp.pca(adata)`` first
        to keep them), as scanpy's neighbour functions do.
    n_pcs
        Number of leading columns of the representation (``None``: all).
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    min_k, max_k
        Range of neighbourhood degrees (``max_k < n_obs``).
    topk
        Pool neighbours ``0..k`` for degree ``k`` instead of the ``k``-th only.
    cdf_k
        Number of nearest neighbours whose similarity enters ``similarity_cdf``.
    n_null
        Number of shuffles of the null.
    seed
        Seed of the shuffles (and of the PCA when it is computed).
    key_added
        Entry name in ``adata.uns['corr_decay']``.
    copy
        Return a copy of ``adata`` with the result instead of writing to ``adata``.

    Returns
    -------
    ``None`` (or the changed copy); writes ``adata.uns['corr_decay'][key_added]``, a dict with ``'quantiles'``
    (``DataFrame``: ``Q10 .. Q90, k``), ``'similarity_cdf'`` (``DataFrame``: ``quantile, observed, shuffled``,
    101 rows), ``'decay_rate'``, ``'decay_fit'`` and ``'params'`` (``'kind'`` = ``'data'``).
    """
    from .._core.decay import knn_indices, similarity_cdf_table, similarity_decay_quantiles

    check_adata(adata)
    key_added = check_key(key_added, "key_added")
    check_key(use_rep, "use_rep")
    coords = get_coords(adata, spatial_key)
    n = adata.n_obs
    _check_ks(n, min_k, max_k, None)
    for nm, v in (("cdf_k", cdf_k), ("n_null", n_null)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            msg = f"Expected `{nm}` to be a positive integer, found `{v!r}`."
            raise ValueError(msg)
    if cdf_k >= n:
        msg = f"`cdf_k` ({cdf_k}) must be smaller than the number of spots ({n})."
        raise ValueError(msg)
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, int | np.integer) or n_pcs < 1):
        msg = f"Expected `n_pcs` to be a positive integer or None, found `{n_pcs!r}`."
        raise ValueError(msg)
    if use_rep != "X" and use_rep != "X_pca" and use_rep not in adata.obsm:
        _representation(adata, use_rep, n_pcs, seed)  # raises the KeyError

    start = time.perf_counter()
    logger.info("computing similarity decay of %r", use_rep)
    X = _representation(adata, use_rep, n_pcs, seed)
    nbrs = knn_indices(coords, max(max_k, cdf_k))
    df = similarity_decay_quantiles(X, nbrs, min_k=min_k, max_k=max_k, topk=bool(topk))
    cdf = similarity_cdf_table(X, nbrs, k=cdf_k, n_null=n_null, seed=seed)
    alpha, beta, theta = _rate(df)
    params = {
        "kind": "data",
        "use_rep": use_rep,
        "n_pcs": n_pcs,
        "spatial_key": spatial_key,
        "min_k": int(min_k),
        "max_k": int(max_k),
        "topk": bool(topk),
        "cdf_k": int(cdf_k),
        "n_null": int(n_null),
        "seed": int(seed),
    }
    return _store(
        adata,
        key_added,
        {
            "quantiles": df,
            "similarity_cdf": cdf,
            "decay_rate": beta,
            "decay_fit": np.array([alpha, beta, theta]),
            "params": to_writable(params),
        },
        copy=copy,
        start=start,
    )


def _entries(adata, keys) -> list[str]:
    store = adata.uns.get(K.CORR_DECAY)
    if not store:
        msg = "No decay curves in `adata.uns['corr_decay']`. Please run `sm.tl.corr_decay` first."
        raise KeyError(msg)
    if keys is None:
        return list(store.keys())
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in store]
    if missing:
        msg = (
            f"Decay curve(s) {missing} not found in `adata.uns['corr_decay']` (available: {list(store.keys())}). "
            "Please run `sm.tl.corr_decay` (or `sm.tl.similarity_decay`) first."
        )
        raise KeyError(msg)
    return keys


def fit_decay(adata, keys: str | Sequence[str] | None = None, *, quantile: str = "Q50") -> pd.DataFrame:
    r"""Mono-exponential decay rate of stored decay curves.

    Fits :math:`y(k) = \alpha e^{-\beta k} + \theta` by least squares to the ``quantile`` column over ``k >= 1``
    of each curve in ``adata.uns['corr_decay']`` (``k = 0`` is 1 for every curve and is left out). Pick the
    prior whose ``beta`` is closest to the data's (see also :func:`scan_rho`).

    Parameters
    ----------
    adata
        AnnData with results of :func:`corr_decay` / :func:`similarity_decay`.
    keys
        Entry name(s); ``None``: all.
    quantile
        One of ``'Q10'``, ``'Q25'``, ``'Q50'``, ``'Q75'``, ``'Q90'``.

    Returns
    -------
    ``pandas.DataFrame`` indexed by entry name, columns ``alpha, beta, theta``; also writes
    ``adata.uns['corr_decay'][name]['decay_rate']`` (= ``beta``) and ``['decay_fit']`` for each entry.
    """
    from .._core.decay import QUANTILE_COLUMNS

    if quantile not in QUANTILE_COLUMNS:
        msg = f"Expected `quantile` in {list(QUANTILE_COLUMNS)}, found `{quantile!r}`."
        raise ValueError(msg)
    names = _entries(adata, keys)
    rows = {}
    store = adata.uns[K.CORR_DECAY]
    for name in names:  # a loop over curves, not spots
        rows[name] = _rate(store[name]["quantiles"], quantile)
    for name, (a, b, t) in rows.items():
        store[name]["decay_rate"] = b
        store[name]["decay_fit"] = np.array([a, b, t])
    return pd.DataFrame.from_dict(rows, orient="index", columns=["alpha", "beta", "theta"])


def scan_rho(
    adata,
    *,
    prior: str = "icar",
    rhos: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999),
    data_key: str = "data",
    standardize: bool = False,
    connectivity_key: str = K.DEFAULT_CONN,
    spatial_key: str = K.SPATIAL_KEY,
    n_sample: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Scan a grid of ``rho`` for a prior and report which matches the data's similarity decay best.

    For each ``rho`` runs :func:`corr_decay` (same ``k`` range as the data curve ``data_key``, written to
    ``adata.uns['corr_decay']`` under the default names, so :func:`smoother.pl.corr_decay` can overlay them) and
    compares its median curve with the data's over ``k >= 1``: ``mae`` is the mean absolute difference of the
    medians, ``rate_diff`` the difference of the fitted decay rates. Values of ``rho`` that do not give a proper
    prior on this graph are skipped with a warning.

    Returns
    -------
    ``pandas.DataFrame`` with columns ``rho, name, decay_rate, rate_diff, mae, best`` (``best`` marks the
    smallest ``mae``); the data curve's decay rate is in its ``attrs['data_decay_rate']``.
    """
    import warnings

    from .._core.linalg import NotPositiveDefiniteError

    check_adata(adata)
    prior = check_prior(prior)
    rhos = [check_rho(r, prior) for r in rhos]
    if not rhos:
        msg = "Expected at least one value in `rhos`."
        raise ValueError(msg)
    store = adata.uns.get(K.CORR_DECAY, {})
    if data_key not in store:
        msg = (
            f"Data curve {data_key!r} not found in `adata.uns['corr_decay']`. "
            "Please run `sm.tl.similarity_decay` first."
        )
        raise KeyError(msg)
    data = store[data_key]["quantiles"]
    min_k, max_k = int(data["k"].min()), int(data["k"].max())
    get_graph(adata, connectivity_key)
    get_coords(adata, spatial_key)
    data_rate = _rate(data)[1]
    rows = []
    for rho in rhos:  # a loop over a handful of rho values
        if prior in ("icar", "isar") and rho >= 1.0:
            warnings.warn(f"Skipping rho = {rho}: the '{prior}' prior is singular there.", UserWarning, stacklevel=2)
            continue
        try:
            corr_decay(
                adata,
                prior=prior,
                rho=rho,
                standardize=standardize,
                connectivity_key=connectivity_key,
                spatial_key=spatial_key,
                min_k=min_k,
                max_k=max_k,
                n_sample=n_sample,
                seed=seed,
            )
        except NotPositiveDefiniteError as e:
            warnings.warn(f"Skipping rho = {rho}: {e}", UserWarning, stacklevel=2)
            continue
        name = default_name(prior, rho, bool(standardize))
        entry = adata.uns[K.CORR_DECAY][name]
        q = entry["quantiles"]
        mask = (q["k"].to_numpy() >= 1) if max_k >= 1 else np.ones(len(q), bool)
        mae = float(np.mean(np.abs(q["Q50"].to_numpy()[mask] - data["Q50"].to_numpy()[mask])))
        rate = float(entry["decay_rate"])
        rows.append({"rho": rho, "name": name, "decay_rate": rate, "rate_diff": rate - data_rate, "mae": mae})
    if not rows:
        msg = f"No value in `rhos` gives a proper '{prior}' prior on this graph."
        raise ValueError(msg)
    out = pd.DataFrame(rows)
    out["best"] = out["mae"] == out["mae"].min()
    out.attrs["data_decay_rate"] = data_rate
    best = out.loc[out["best"], "rho"].iloc[0]
    logger.info("    best match to %r: %s with rho = %g", data_key, prior, best)
    return out
