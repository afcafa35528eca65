r"""Dependency diagnostics: how fast correlation decays with neighbourhood degree, under a prior and in the data.

A prior (which model, which ``rho``, which graph scaling) is a good choice when the correlation it implies
between a spot and its ``k``-th nearest neighbour decays with ``k`` about as fast as the similarity of the data
does. :func:`corr_decay` computes the prior's curve, :func:`similarity_decay` the data's, :func:`fit_decay` the
mono-exponential decay rate of each curve and :func:`scan_rho` the ``rho`` whose curve matches the data best.
Results live in ``adata.uns['corr_decay'][name]``; :func:`smoother.pl.corr_decay` plots them.

The prior of :func:`corr_decay` and :func:`scan_rho` is built by the same code that every fitting function
(``smooth``, ``deconvolve``, ``spatial_pca``, ...) uses: the curve describes exactly the prior those functions
fit with (for 'car'/'icar' an asymmetric graph, such as squidpy's directed kNN
graph, is symmetrized with ``max(W, W.T)``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import _constants as K
from .._anndata import check_adata, get_coords, get_graph, get_matrix, save_result, symmetrize_for_prior
from .._settings import logger
from .._validation import (
    accepts_random_state,
    check_bool,
    check_choice,
    check_int,
    check_key,
    check_prior,
    check_random_state,
    check_rho,
)

__all__ = ["corr_decay", "fit_decay", "scan_rho", "similarity_decay"]


def _graph_name(connectivity_key: str) -> str:
    return f"adata.obsp[{connectivity_key!r}]"


def _check_k_range(n: int, min_k, max_k, n_sample=None) -> tuple[int, int]:
    """``min_k``/``max_k`` (and ``n_sample``) as integers, with ``0 <= min_k <= max_k < n``."""
    from .._core.decay import check_decay_args

    min_k = check_int(min_k, "min_k", low=0, example="0")
    max_k = check_int(max_k, "max_k", low=0, example="30")
    if n < 2:
        msg = f"Correlation decay needs at least 2 spots, found {n}."
        raise ValueError(msg)
    check_decay_args(n, min_k, max_k, n_sample)
    return min_k, max_k


def _fit(df: pd.DataFrame, quantile: str = "Q50") -> tuple[float, float, float, str]:
    """Mono-exponential fit of a decay table over ``k >= 1`` (``k = 0`` is 1 for every curve)."""
    from .._core.decay import fit_decay_rate

    sub = df[df["k"] >= 1] if (df["k"] >= 1).sum() >= 3 else df
    return fit_decay_rate(sub["k"].to_numpy(), sub[quantile].to_numpy())


def _decay_fields(name: str, fit: tuple[float, float, float, str], *, stacklevel: int = 3) -> dict:
    """The ``decay_*`` entries of a curve: the rate is NaN (with a warning saying why) for a degenerate fit."""
    alpha, beta, theta, problem = fit
    if problem:
        warnings.warn(
            f"The decay-rate fit of curve {name!r} is degenerate: {problem}. Its decay rate is reported as NaN.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return {
        "decay_rate": float("nan") if problem else beta,
        "decay_fit": np.array([alpha, beta, theta], dtype=np.float64),
        "decay_degenerate": bool(problem),
        "decay_note": problem,
    }


def _save_curve(adata, name: str, params: dict, entry: dict, *, copy: bool, start: float):
    """Write one curve with :func:`smoother._anndata.save_result` (replacing ``adata.uns['corr_decay'][name]``)."""
    out = save_result(adata, copy=copy, uns_key=(K.CORR_DECAY, name), params=params, uns=entry)
    # save_result passes values through `to_writable`, which (for now) turns a DataFrame into its repr: put the
    # tables back as they are (anndata writes DataFrames in uns to h5ad/zarr)
    target = out if copy else adata
    stored = target.uns[K.CORR_DECAY][name]
    for key, value in entry.items():
        if isinstance(value, pd.DataFrame) and not isinstance(stored.get(key), pd.DataFrame):
            stored[key] = value
    logger.info("    finished (%.2fs)", time.perf_counter() - start)
    return out


def default_name(prior: str, rho: float, standardize: bool = False) -> str:
    """The default entry name of a prior's curve, e.g. ``'icar_rho0.99'`` (``'..._std'`` when standardized)."""
    return f"{prior}_rho{rho:g}" + ("_std" if standardize else "")


def _check_proper(W, prior: str, rho: float, *, obs_names, connectivity_key: str):
    """The graph the prior uses (symmetrized for car/icar), after the checks that need no factorization.

    Raises :class:`~smoother._core.linalg.NotPositiveDefiniteError` (a ``ValueError``) for an intrinsic prior at
    ``rho = 1`` and, for 'icar', spots without any neighbour (improper at every ``rho``).
    """
    from .._core.linalg import NotPositiveDefiniteError
    from .._core.precision import isolated_spots, not_pd_message

    graph = _graph_name(connectivity_key)
    if prior in ("icar", "isar") and rho >= 1.0:
        raise NotPositiveDefiniteError(not_pd_message(prior, rho))
    Wp = symmetrize_for_prior(W, prior)
    if prior == "icar" and isolated_spots(Wp).size:
        raise NotPositiveDefiniteError(not_pd_message(prior, rho, Wp, names=obs_names, graph=graph))
    return Wp


def _prior_curve(W, coords, *, prior, rho, min_k, max_k, n_sample, seed, obs_names, connectivity_key):
    """Correlation and variance tables of one prior, built by ``get_prior_operator`` (unstandardized: the
    standardized prior has the same correlations)."""
    from .._anndata import get_prior_operator
    from .._core.decay import corr_decay_quantiles, corr_decay_quantiles_from_cov
    from .._core.linalg import NotPositiveDefiniteError
    from .._core.precision import not_pd_message

    def not_pd(e):
        Wp = symmetrize_for_prior(W, prior)
        msg = not_pd_message(prior, rho, Wp, names=obs_names, graph=_graph_name(connectivity_key))
        return NotPositiveDefiniteError(msg)

    try:
        op = get_prior_operator(W, prior, rho, standardize=False)
    except ValueError as e:  # only "not positive definite" remains: the arguments were checked
        raise not_pd(e) from e
    kw = {"min_k": min_k, "max_k": max_k, "return_var": True, "n_sample": n_sample, "seed": seed}
    if op.Q is None:  # 'sma': the covariance B B^T is sparse
        return corr_decay_quantiles_from_cov((op.B @ op.B.T).tocsr(), coords, **kw)
    try:
        return corr_decay_quantiles(op.Q, coords, **kw)
    except NotPositiveDefiniteError as e:
        raise not_pd(e) from e


def _prior_entry(adata, W, coords, *, prior, rho, standardize, min_k, max_k, n_sample, seed, connectivity_key, name):
    """``(params, entry)`` of one prior curve (the work of :func:`corr_decay`)."""
    from .._core.decay import choose_spots, var_table

    corr, var = _prior_curve(
        W,
        coords,
        prior=prior,
        rho=rho,
        min_k=min_k,
        max_k=max_k,
        n_sample=n_sample,
        seed=seed,
        obs_names=adata.obs_names,
        connectivity_key=connectivity_key,
    )
    if standardize:  # S^1/2 Q S^1/2 leaves correlations unchanged and makes every variance 1
        var = var_table(np.ones(coords.shape[0]))
    spots = choose_spots(adata.n_obs, n_sample, seed)
    params = {
        "kind": "prior",
        "prior": prior,
        "rho": rho,
        "standardize": standardize,
        "connectivity_key": connectivity_key,
        "min_k": min_k,
        "max_k": max_k,
        "n_sample": n_sample,
        "random_state": seed,
        "key_added": name,
        "exact": spots is None,
        "n_used": int(adata.n_obs if spots is None else len(spots)),
    }
    entry = {"quantiles": corr, "variance": var, **_decay_fields(name, _fit(corr), stacklevel=4)}
    return params, entry


@accepts_random_state
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
    r"""How fast the correlation that a spatial prior implies falls off with distance (in neighbours).

    Use it to choose the prior and its ``rho`` before smoothing, deconvolving or reducing: compute this curve for
    a few priors, the data's own curve with :func:`similarity_decay`, and keep the prior whose curve follows the
    data's (:func:`scan_rho` does the comparison, :func:`smoother.pl.corr_decay` draws the curves). It reads only
    the spatial graph and the coordinates, not the expression.

    The result is, for every ``k`` in ``[min_k, max_k]``, the quantiles (Q10, Q25, Q50, Q75, Q90) over spots of
    the prior correlation between a spot and its ``k``-th nearest neighbour (``k = 0``: the spot itself), plus the
    quantiles of the prior variances; see Notes.

    Parameters
    ----------
    adata
        AnnData with a spatial graph in ``adata.obsp[connectivity_key]`` and coordinates in
        ``adata.obsm[spatial_key]``.
    prior
        ``'sma'``, ``'sar'``, ``'isar'``, ``'car'`` or ``'icar'``.
    rho
        Spatial autocorrelation in ``[0, 1]``; it must give a proper prior (``'icar'``/``'isar'`` need
        ``rho < 1``, ``'icar'`` a neighbour for every spot, ``'car'`` ``rho < 1 / lambda_max(W)``); otherwise the
        error names the admissible range on this graph.
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
        Also accepted as ``random_state`` (scanpy's name, used in the recorded params).
        Seed of the spot sample (recorded as ``random_state``).
    key_added
        Entry name; default e.g. ``'icar_rho0.99'`` (``'icar_rho0.99_std'`` with ``standardize``).
    copy
        Return a copy of ``adata`` with the result instead of writing to ``adata``.

    Returns
    -------
    ``None`` (or the changed copy with ``copy=True``); writes (replacing) ``adata.uns['corr_decay'][name]``, a
    dict with

    - ``'quantiles'``: ``pandas.DataFrame``, one row per ``k``, columns ``Q10, Q25, Q50, Q75, Q90, k``;
    - ``'variance'``: one-row ``DataFrame``, columns ``Q10 .. Q90`` (quantiles of the implied variances);
    - ``'decay_rate'``: ``beta`` of :math:`Q50(k) \approx \alpha e^{-\beta k} + \theta` over ``k >= 1``, NaN
      when the fit is degenerate (a warning says why); ``'decay_fit'``: ``[alpha, beta, theta]`` as fitted;
      ``'decay_degenerate'`` (bool) and ``'decay_note'`` (why, ``''`` for a usable fit);
    - ``'params'``: the arguments (``random_state`` = ``seed``), ``'kind'`` = ``'prior'``, ``'exact'`` (all spots
      used) and ``'n_used'``.

    Raises
    ------
    TypeError, ValueError
        A bad argument (checked before any work).
    KeyError
        Missing graph or coordinates.
    ValueError
        A prior that is singular or not positive definite on this graph
        (``NotPositiveDefiniteError``, a ``ValueError``): the message names the admissible range of ``rho`` on this
        graph, or the spots without a neighbour that make 'icar' improper at every ``rho``.

    Notes
    -----
    For spot :math:`i` and its ``k``-th nearest spatial neighbour :math:`j` (Euclidean, on
    ``adata.obsm[spatial_key]``), the implied correlation is

    .. math::

        r_{ik} = \frac{\Sigma_{ij}}{\sqrt{\Sigma_{ii}\Sigma_{jj}}}, \qquad \Sigma = Q^{-1},

    with :math:`Q` the precision every fitting function of ``sm.tl`` uses on this graph (for 'car'/'icar' an
    asymmetric graph such as squidpy's directed kNN graph is symmetrized with ``max(W, W.T)``). :math:`\Sigma` is
    never formed: :math:`Q` is factored once (sparse :math:`LDL^T`), the variances are the exact diagonal of
    :math:`Q^{-1}` (selected inversion) and each spot's ``max_k + 1`` covariances come from a sparse solve. The
    SMA prior's covariance :math:`(I + \rho W)(I + \rho W)^T` is sparse and read directly.

    Which estimate: with ``n_sample=None`` and at most 20,000 spots (or ``n_sample >= n``) every spot is used
    and the table is exact. Otherwise the correlations of a uniform sample of ``n_sample`` spots (5,000 when
    ``None``), drawn without replacement with ``seed``, are used: the quantiles are the empirical quantiles of
    exact correlations of the sampled spots (error of order :math:`1 / \sqrt{n_{sample}}`). The variance
    quantiles always use all spots.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.corr_decay(adata, prior="icar", rho=0.99, max_k=30)  # -> adata.uns["corr_decay"]["icar_rho0.99"]
    >>> entry = adata.uns["corr_decay"]["icar_rho0.99"]
    >>> entry["quantiles"].shape, round(entry["decay_rate"], 2)
    ((31, 6), 0.07)
    >>> entry["quantiles"].loc[1, ["k", "Q50"]].round(2).tolist()  # median correlation with the nearest neighbour
    [1.0, 0.56]
    """
    check_adata(adata, copy=copy)
    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    standardize = check_bool(standardize, "standardize")
    check_key(spatial_key, "spatial_key")
    seed = check_random_state(seed, "seed")
    n_sample = check_int(n_sample, "n_sample", low=1, allow_none=True, example="5000")
    name = default_name(prior, rho, standardize) if key_added is None else check_key(key_added, "key_added")
    W = get_graph(adata, connectivity_key)
    coords = get_coords(adata, spatial_key)
    min_k, max_k = _check_k_range(adata.n_obs, min_k, max_k, n_sample)
    W = _check_proper(W, prior, rho, obs_names=adata.obs_names, connectivity_key=connectivity_key)

    start = time.perf_counter()
    logger.info("computing correlation decay of the '%s' prior (rho = %g)", prior, rho)
    params, entry = _prior_entry(
        adata,
        W,
        coords,
        prior=prior,
        rho=rho,
        standardize=standardize,
        min_k=min_k,
        max_k=max_k,
        n_sample=n_sample,
        seed=seed,
        connectivity_key=connectivity_key,
        name=name,
    )
    params["spatial_key"] = spatial_key
    return _save_curve(adata, name, params, entry, copy=copy, start=start)


def _check_in_memory(adata, use_rep: str) -> None:
    """``use_rep='X'`` (or a PCA of ``X`` computed here) on a dask-backed ``adata.X``: say what to do, before work.

    The similarities compare every spot's full vector with its neighbours', in random order for the null: the data
    must be in memory. A representation already in ``adata.obsm`` (small: ``n_obs x n_comps``) needs nothing more.
    """
    from .._core.blockwise import is_dask

    if not (use_rep == "X" or (use_rep == "X_pca" and use_rep not in adata.obsm)) or not is_dask(adata.X):
        return
    what = "`use_rep='X'`" if use_rep == "X" else "`use_rep='X_pca'` without `adata.obsm['X_pca']` (computed from X)"
    msg = (
        f"similarity_decay with {what} needs `adata.X` in memory, but it is a dask array. Either compute a small "
        "representation first and pass it (e.g. `sm.tl.spatial_pca(adata)` works on dask data, then "
        "`use_rep='X_spatial_pca'`), or load the data: `adata.X = adata.X.compute()` (or "
        "`adata = adata.to_memory()`)."
    )
    raise ValueError(msg)


def _check_representation(adata, use_rep: str, n_pcs: int | None) -> None:
    """Checks of the representation before any work: present, numeric, finite (NaN gives no cosine similarity)."""
    if use_rep == "X" or (use_rep == "X_pca" and use_rep not in adata.obsm):
        get_matrix(adata)  # numeric, finite (a ValueError naming adata.X otherwise)
        if use_rep == "X_pca" and min(n_pcs or 50, adata.n_obs - 1, adata.n_vars - 1) < 1:
            msg = (
                f"Cannot compute a PCA of a {adata.n_obs} x {adata.n_vars} matrix (needs at least 2 spots and 2 "
                "genes); pass `use_rep='X'`."
            )
            raise ValueError(msg)
        return
    if use_rep not in adata.obsm:
        msg = (
            f"Representation {use_rep!r} not found in `adata.obsm` (available: {list(adata.obsm.keys())}); "
            "pass `use_rep='X_pca'` (computed when missing) or `use_rep='X'`."
        )
        raise KeyError(msg)
    rep = adata.obsm[use_rep]
    rep = rep.to_numpy() if hasattr(rep, "to_numpy") else rep
    rep = rep.toarray() if hasattr(rep, "toarray") else np.asarray(rep)
    if rep.ndim != 2 or not (np.issubdtype(rep.dtype, np.number) or rep.dtype == bool):
        msg = (
            f"Expected `adata.obsm[{use_rep!r}]` to be a numeric (n_obs, n_dims) array, "
            f"found dtype {rep.dtype}, shape {rep.shape}."
        )
        raise TypeError(msg)
    bad = ~np.isfinite(rep[:, :n_pcs] if n_pcs is not None else rep).all(axis=1)
    if bad.any():
        shown = ", ".join(str(s) for s in adata.obs_names[bad][:5])
        msg = (
            f"`adata.obsm[{use_rep!r}]` contains NaN or inf in {int(bad.sum())} spot(s) (e.g. {shown}); their cosine "
            "similarity is undefined. Drop them (`adata = adata[np.isfinite(adata.obsm[use_rep]).all(axis=1)]"
            ".copy()`) or recompute the representation."
        )
        raise ValueError(msg)


def _representation(adata, use_rep: str, n_pcs: int | None, seed: int | None) -> np.ndarray:
    """``adata.obsm[use_rep][:, :n_pcs]``, ``adata.X`` for ``'X'``, or PCA of ``adata.X`` computed here."""
    import scipy.sparse as sp

    if use_rep == "X":  # a sparse X stays sparse (CSR)
        X = adata.X
        return sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    if use_rep in adata.obsm:
        X = adata.obsm[use_rep]
        X = X.to_numpy() if hasattr(X, "to_numpy") else X
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        return X if n_pcs is None else X[:, :n_pcs]
    from sklearn.decomposition import PCA

    n_comps = min(n_pcs or 50, adata.n_obs - 1, adata.n_vars - 1)
    logger.info("    computing %d principal components of adata.X (not stored)", n_comps)
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    # centred PCA as scanpy's sc.pp.pca; ARPACK centres a sparse X implicitly (never densified)
    pca = PCA(n_components=n_comps, svd_solver="arpack", random_state=seed or 0)
    return np.asarray(pca.fit_transform(X), dtype=np.float64)


@accepts_random_state
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
    over spots. A spot whose representation is the zero vector has similarity 0 with every spot; NaN or inf in
    the representation is an error (the similarity is undefined there).

    Parameters
    ----------
    adata
        AnnData with coordinates in ``adata.obsm[spatial_key]``.
    use_rep
        Key in ``adata.obsm`` (its first ``n_pcs`` columns are used), or ``'X'`` for ``adata.X`` (kept sparse
        when it is sparse; ``n_pcs`` does not apply). When
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
        Also accepted as ``random_state`` (scanpy's name, used in the recorded params).
        Seed of the shuffles (and of the PCA when it is computed); recorded as ``random_state``.
    key_added
        Entry name in ``adata.uns['corr_decay']``.
    copy
        Return a copy of ``adata`` with the result instead of writing to ``adata``.

    Returns
    -------
    ``None`` (or the changed copy); writes (replacing) ``adata.uns['corr_decay'][key_added]``, a dict with
    ``'quantiles'`` (``DataFrame``: ``Q10 .. Q90, k``), ``'similarity_cdf'`` (``DataFrame``: ``quantile,
    observed, shuffled``, 101 rows), ``'decay_rate'`` (NaN for a degenerate fit), ``'decay_fit'``,
    ``'decay_degenerate'``, ``'decay_note'`` (see :func:`corr_decay`) and ``'params'`` (``'kind'`` = ``'data'``).

    **Dask-backed data.** A representation in ``adata.obsm`` is all this function reads, so a dask-backed
    ``adata.X`` needs nothing more when ``use_rep`` names one (e.g. the scores of ``sm.tl.spatial_pca``, which runs
    on dask data). ``use_rep='X'``, or ``'X_pca'`` computed here from ``X``, needs ``adata.X`` in memory: a
    dask-backed ``X`` is refused before any work, with what to do (``adata.X = adata.X.compute()``, or
    ``adata = adata.to_memory()``).

    Raises
    ------
    TypeError, ValueError
        A bad argument, or NaN/inf in the representation (checked before any work), or ``use_rep`` reading a
        dask-backed ``adata.X``.
    KeyError
        Missing coordinates or representation.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=10, pattern="gp", seed=0)
    >>> sm.tl.similarity_decay(adata, use_rep="X", max_k=30, n_null=5)
    >>> res = adata.uns["corr_decay"]["data"]
    >>> res["quantiles"].shape, res["similarity_cdf"].shape
    ((31, 6), (101, 3))
    >>> bool(res["decay_rate"] > 0)
    True
    """
    from .._core.decay import knn_indices, similarity_cdf_table, similarity_decay_quantiles

    check_adata(adata, copy=copy)
    key_added = check_key(key_added, "key_added")
    check_key(use_rep, "use_rep")
    check_key(spatial_key, "spatial_key")
    n_pcs = check_int(n_pcs, "n_pcs", low=1, allow_none=True, example="20")
    topk = check_bool(topk, "topk")
    cdf_k = check_int(cdf_k, "cdf_k", low=1, example="6")
    n_null = check_int(n_null, "n_null", low=1, example="100")
    seed = check_random_state(seed, "seed")
    coords = get_coords(adata, spatial_key)
    n = adata.n_obs
    min_k, max_k = _check_k_range(n, min_k, max_k)
    if cdf_k >= n:
        msg = f"Expected `cdf_k` ({cdf_k}) < the number of spots ({n}); use e.g. cdf_k={max(1, min(6, n - 1))}."
        raise ValueError(msg)
    _check_in_memory(adata, use_rep)
    _check_representation(adata, use_rep, n_pcs)

    start = time.perf_counter()
    logger.info("computing similarity decay of %r", use_rep)
    X = _representation(adata, use_rep, n_pcs, seed)
    nbrs = knn_indices(coords, max(max_k, cdf_k))
    df = similarity_decay_quantiles(X, nbrs, min_k=min_k, max_k=max_k, topk=topk)
    cdf = similarity_cdf_table(X, nbrs, k=cdf_k, n_null=n_null, seed=seed)
    params = {
        "kind": "data",
        "use_rep": use_rep,
        "n_pcs": n_pcs,
        "spatial_key": spatial_key,
        "min_k": min_k,
        "max_k": max_k,
        "topk": topk,
        "cdf_k": cdf_k,
        "n_null": n_null,
        "random_state": seed,
        "key_added": key_added,
    }
    entry = {"quantiles": df, "similarity_cdf": cdf, **_decay_fields(key_added, _fit(df))}
    return _save_curve(adata, key_added, params, entry, copy=copy, start=start)


def _check_keys(keys, name: str = "keys") -> list[str] | None:
    if keys is None:
        return None
    items = [keys] if isinstance(keys, str) else keys
    if not isinstance(items, Sequence | np.ndarray | pd.Index) or isinstance(items, bytes):
        msg = f"Expected `{name}` to be a string, a list of strings or None, found {type(keys).__name__}."
        raise TypeError(msg)
    items = list(items)
    for k in items:
        if not isinstance(k, str):
            msg = f"Expected `{name}` to hold entry names (strings), found {type(k).__name__} `{k!r}`."
            raise TypeError(msg)
    if not items:
        msg = f"Expected at least one name in `{name}`, found an empty list (pass None for all curves)."
        raise ValueError(msg)
    return items


def _entries(adata, keys) -> list[str]:
    store = adata.uns.get(K.CORR_DECAY)
    if not isinstance(store, Mapping) or not store:
        msg = "No decay curves in `adata.uns['corr_decay']`. Please run `sm.tl.corr_decay` first."
        raise KeyError(msg)
    names = list(store.keys()) if keys is None else keys
    missing = [k for k in names if k not in store]
    if missing:
        msg = (
            f"Decay curve(s) {missing} not found in `adata.uns['corr_decay']` (available: {list(store.keys())}). "
            "Please run `sm.tl.corr_decay` (or `sm.tl.similarity_decay`) first."
        )
        raise KeyError(msg)
    for k in names:
        entry = store[k]
        q = entry.get("quantiles") if isinstance(entry, Mapping) else None
        if not isinstance(q, pd.DataFrame) or "k" not in q.columns:
            msg = (
                f"`adata.uns['corr_decay'][{k!r}]` has no decay table ('quantiles' with a column 'k'). "
                "Please run `sm.tl.corr_decay` (or `sm.tl.similarity_decay`) again."
            )
            raise KeyError(msg)
    return names


def fit_decay(adata, keys: str | Sequence[str] | None = None, *, quantile: str = "Q50") -> pd.DataFrame:
    r"""One number per decay curve: how fast it falls (the rate of an exponential fitted to it).

    Use it to compare the curves of :func:`corr_decay` (priors) and :func:`similarity_decay` (the data) by one
    number each: pick the prior whose rate ``beta`` is closest to the data's (:func:`scan_rho` does this over a
    grid of ``rho``). It reads the stored curves only.

    A fit is *degenerate* — no decay rate, ``beta`` is NaN, a warning says why — when the curve is flat or
    rising, too short (fewer than 3 points), decays too slowly to identify over its range (a near-straight line
    fitted as a huge slow exponential: ``beta`` near 0 with ``alpha`` and ``theta`` large and of opposite sign),
    or is fitted poorly (:math:`R^2 < 0.5`).

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
    ``pandas.DataFrame`` indexed by entry name, columns ``alpha, beta, theta`` (the fit; ``beta`` NaN when
    degenerate), ``degenerate`` (bool) and ``note`` (why, ``''`` for a usable fit). Also replaces
    ``adata.uns['corr_decay'][name]``'s ``'decay_rate'``, ``'decay_fit'``, ``'decay_degenerate'`` and
    ``'decay_note'`` for each entry (everything else of the entry is kept).

    Notes
    -----
    Fits :math:`y(k) = \alpha e^{-\beta k} + \theta` by least squares to the ``quantile`` column over
    :math:`k \ge 1` of each curve (:math:`k = 0` is 1 for every curve and is left out).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.similarity_decay(adata, max_k=30)  # the data's curve, entry 'data'
    >>> sm.tl.corr_decay(adata, prior="icar", rho=0.99, max_k=30)  # a prior's curve
    >>> sm.tl.fit_decay(adata).loc[["data", "icar_rho0.99"], "beta"].round(2).tolist()
    [0.02, 0.07]
    """
    from .._core.decay import QUANTILE_COLUMNS

    check_adata(adata)
    keys = _check_keys(keys)
    quantile = check_choice(quantile, "quantile", QUANTILE_COLUMNS)
    names = _entries(adata, keys)
    store = adata.uns[K.CORR_DECAY]
    rows, fields = {}, {}
    for name in names:  # a loop over curves, not spots
        fit = _fit(store[name]["quantiles"], quantile)
        fields[name] = _decay_fields(name, fit)
        rows[name] = {
            "alpha": fit[0],
            "beta": float("nan") if fit[3] else fit[1],
            "theta": fit[2],
            "degenerate": bool(fit[3]),
            "note": fit[3],
        }
    start = time.perf_counter()
    for name in names:
        old = dict(store[name])
        params = old.pop("params", None)
        entry = {**old, **fields[name]}
        _save_curve(adata, name, dict(params) if isinstance(params, Mapping) else None, entry, copy=False, start=start)
        store = adata.uns[K.CORR_DECAY]
    return pd.DataFrame.from_dict(rows, orient="index", columns=["alpha", "beta", "theta", "degenerate", "note"])


@accepts_random_state
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
    r"""Find the ``rho`` whose prior correlation decays like the data's similarity: try a grid, rank by error.

    Use it after :func:`similarity_decay` to pick ``rho`` for :func:`smoother.tl.smooth` and the other fitting
    functions when there is no better reason for a value.

    For each ``rho`` it computes the curve of :func:`corr_decay` (same prior builder, same ``k`` range as the data
    curve ``data_key``; written to ``adata.uns['corr_decay']`` under the default names once all are computed, so
    :func:`smoother.pl.corr_decay` can overlay them) and compares its median curve with the data's over
    ``k >= 1``: ``mae`` is the mean absolute difference of the medians (see Notes), ``rate_diff`` the difference
    of the fitted decay rates (:func:`fit_decay`). Values of ``rho`` that do not give a proper prior on this graph
    are skipped with a warning. A degenerate decay-rate fit (see :func:`fit_decay`) gives ``decay_rate`` and
    ``rate_diff`` NaN and ``degenerate=True``; ``best`` depends on ``mae`` only.

    Parameters
    ----------
    adata
        AnnData with the data curve ``adata.uns['corr_decay'][data_key]`` (from :func:`similarity_decay`), a
        spatial graph in ``adata.obsp[connectivity_key]`` and coordinates in ``adata.obsm[spatial_key]``.
    prior
        ``'sma'``, ``'sar'``, ``'isar'``, ``'car'`` or ``'icar'``.
    rhos
        The values of ``rho`` to try, each in ``[0, 1]``.
    data_key
        Entry name of the data curve.
    standardize, connectivity_key, spatial_key, n_sample
        As in :func:`corr_decay`.
    seed
        Seed of the spot sample of :func:`corr_decay`; also accepted as ``random_state``.

    Returns
    -------
    ``pandas.DataFrame`` with columns ``rho, name, decay_rate, rate_diff, mae, degenerate, best`` (``best`` marks
    the smallest ``mae``); the data curve's decay rate (NaN when its fit is degenerate) is in its
    ``attrs['data_decay_rate']``.

    Raises
    ------
    TypeError, ValueError, KeyError
        A bad argument, a missing data curve, graph or coordinates (checked before any work); spots without a
        neighbour under 'icar' (improper at every ``rho``); no ``rho`` of the grid gives a proper prior.

    Notes
    -----
    With :math:`m_k` the data's median similarity and :math:`r_k(\rho)` the prior's median correlation at the
    ``k``-th neighbour, :math:`\mathrm{mae}(\rho) = \frac{1}{K} \sum_{k=1}^{K} |r_k(\rho) - m_k|`.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.similarity_decay(adata, max_k=30)
    >>> res = sm.tl.scan_rho(adata, prior="icar", rhos=[0.9, 0.99, 0.999])
    >>> res[["name", "mae", "best"]].round(2)
                name   mae   best
    0    icar_rho0.9  0.54  False
    1   icar_rho0.99  0.29  False
    2  icar_rho0.999  0.09   True
    >>> sorted(adata.uns["corr_decay"])  # the curves, ready for sm.pl.corr_decay(adata)
    ['data', 'icar_rho0.9', 'icar_rho0.99', 'icar_rho0.999']
    """
    from .._core.linalg import NotPositiveDefiniteError

    check_adata(adata)
    prior = check_prior(prior)
    if isinstance(rhos, str | bytes) or not isinstance(rhos, Sequence | np.ndarray):
        msg = f"Expected `rhos` to be a list of numbers in [0, 1], found {type(rhos).__name__} `{rhos!r}`."
        raise TypeError(msg)
    rhos = [check_rho(r, prior, name=f"rhos[{i}]") for i, r in enumerate(list(rhos))]
    if not rhos:
        msg = "Expected at least one value in `rhos`, e.g. rhos=[0.9, 0.99]."
        raise ValueError(msg)
    data_key = check_key(data_key, "data_key")
    standardize = check_bool(standardize, "standardize")
    check_key(spatial_key, "spatial_key")
    n_sample = check_int(n_sample, "n_sample", low=1, allow_none=True, example="5000")
    seed = check_random_state(seed, "seed")
    store = adata.uns.get(K.CORR_DECAY)
    if not isinstance(store, Mapping) or data_key not in store:
        msg = (
            f"Data curve {data_key!r} not found in `adata.uns['corr_decay']`. "
            "Please run `sm.tl.similarity_decay` first."
        )
        raise KeyError(msg)
    _entries(adata, [data_key])
    data = store[data_key]["quantiles"]
    min_k, max_k = int(data["k"].min()), int(data["k"].max())
    W = get_graph(adata, connectivity_key)
    coords = get_coords(adata, spatial_key)
    _check_k_range(adata.n_obs, min_k, max_k, n_sample)
    proper = [r for r in rhos if not (prior in ("icar", "isar") and r >= 1.0)]
    for rho in rhos:
        if rho not in proper:
            warnings.warn(f"Skipping rho = {rho:g}: the '{prior}' prior is singular there.", UserWarning, stacklevel=2)
    if not proper:
        msg = f"No value in `rhos` gives a proper '{prior}' prior; use values below 1, e.g. rhos=[0.9, 0.99]."
        raise ValueError(msg)
    W = _check_proper(W, prior, proper[0], obs_names=adata.obs_names, connectivity_key=connectivity_key)

    start = time.perf_counter()
    data_fit = _fit(data)
    data_rate = float("nan") if data_fit[3] else data_fit[1]
    if data_fit[3]:
        warnings.warn(
            f"The decay-rate fit of the data curve {data_key!r} is degenerate: {data_fit[3]}. `rate_diff` is NaN; "
            "compare the curves by `mae`.",
            UserWarning,
            stacklevel=2,
        )
    rows, results = [], []
    for rho in proper:  # a loop over a handful of rho values
        name = default_name(prior, rho, standardize)
        try:
            params, entry = _prior_entry(
                adata,
                W,
                coords,
                prior=prior,
                rho=rho,
                standardize=standardize,
                min_k=min_k,
                max_k=max_k,
                n_sample=n_sample,
                seed=seed,
                connectivity_key=connectivity_key,
                name=name,
            )
        except NotPositiveDefiniteError as e:
            warnings.warn(f"Skipping rho = {rho:g}: {e}", UserWarning, stacklevel=2)
            continue
        params["spatial_key"] = spatial_key
        results.append((name, params, entry))
        q = entry["quantiles"]
        mask = (q["k"].to_numpy() >= 1) if max_k >= 1 else np.ones(len(q), bool)
        mae = float(np.mean(np.abs(q["Q50"].to_numpy()[mask] - data["Q50"].to_numpy()[mask])))
        rate = float(entry["decay_rate"])
        rows.append(
            {
                "rho": rho,
                "name": name,
                "decay_rate": rate,
                "rate_diff": rate - data_rate,
                "mae": mae,
                "degenerate": bool(entry["decay_degenerate"]),
            }
        )
    if not rows:
        msg = f"No value in `rhos` gives a proper '{prior}' prior on this graph (see the warnings for the range)."
        raise ValueError(msg)
    for name, params, entry in results:
        _save_curve(adata, name, params, entry, copy=False, start=start)
    out = pd.DataFrame(rows)
    out["best"] = out["mae"] == out["mae"].min()
    out.attrs["data_decay_rate"] = data_rate
    best = out.loc[out["best"], "rho"].iloc[0]
    logger.info("    best match to %r: %s with rho = %g", data_key, prior, best)
    return out
