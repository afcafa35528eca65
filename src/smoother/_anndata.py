"""Small AnnData helpers shared by :mod:`smoother.pp` and :mod:`smoother.tl`.

Every ``sm.tl`` function follows the same pattern, and these helpers keep it uniform:

1. :func:`check_adata` — the input is an AnnData (a view is made actual, with scanpy's warning);
2. :func:`get_matrix` — the data matrix ``adata.X`` or ``adata.layers[layer]``, validated (numeric, finite),
   kept sparse when it is sparse;
3. :func:`get_graph` — the spatial graph ``adata.obsp[connectivity_key]`` as CSR, with a ``KeyError`` that names
   the function creating it (``sq.gr.spatial_neighbors`` / ``sm.pp.spatial_graph``);
4. :func:`get_precision` — the prior's precision matrix ``Q`` on that graph, with an error naming a valid ``rho``
   when ``Q`` is not positive definite;
5. the work, then :func:`write_params` — ``adata.uns[key]['params']`` in types AnnData can write — and
   :func:`log_added` for squidpy-style "added ``adata.layers['…']``" log lines.

All checks raise *before* anything is written, so a failed call leaves ``adata`` unchanged.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import _constants as K
from ._settings import logger
from ._validation import (
    check_bool,
    check_coords,
    check_key,
    check_lambda,
    check_prior,
    check_rho,
    view_to_actual,
)

__all__ = [
    "check_adata",
    "check_bool",
    "check_key",
    "check_lambda",
    "get_prior_operator",
    "save_result",
    "get_graph",
    "get_matrix",
    "get_precision",
    "log_added",
    "symmetrize_for_prior",
    "to_writable",
    "write_params",
]


def check_adata(adata: Any, *, name: str = "adata", copy: Any = False, writes: bool = True) -> None:
    """Check that ``adata`` is an :class:`~anndata.AnnData` (and ``copy`` a bool), changing nothing.

    Part of the contract of every public function: nothing is changed before the work succeeded. A view is made
    actual only when results are written (:func:`save_result`, scanpy's warning), never here.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData, or ``copy`` is not a bool.
    ValueError
        ``adata`` is backed (opened with ``backed='r'``) and the function writes results: ``copy=True`` cannot copy
        a backed object without a file name and in-place writes would not reach the file; the message says to
        call ``adata.to_memory()`` first.
    """
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        msg = f"Expected `{name}` to be an AnnData object, found {type(adata).__name__}."
        raise TypeError(msg)
    check_bool(copy, "copy")
    if writes and getattr(adata, "isbacked", False):
        msg = (
            f"`{name}` is backed by a file (backed mode); results cannot be written to it"
            f"{' and `copy=True` needs a file name' if copy else ''}. Load it first: `{name} = {name}.to_memory()`."
        )
        raise ValueError(msg)


def _layer_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(
    adata,
    layer: str | None = None,
    *,
    genes: Sequence[str] | np.ndarray | None = None,
    allow_nan: bool = False,
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """The data matrix of ``adata`` (``X`` or a layer), validated, without densifying or copying when possible.

    Parameters
    ----------
    adata
        The AnnData object.
    layer
        Key in ``adata.layers``; ``None`` uses ``adata.X``.
    genes
        Optional subset of ``adata.var_names`` (names) or a boolean mask over the genes.
    allow_nan
        Accept NaN entries (they are otherwise an error).

    Returns
    -------
    matrix
        ``(n_obs, n_genes)`` dense ``ndarray`` or scipy sparse CSR matrix (the stored object when no subset or
        conversion is needed — do not modify it in place). Integer and boolean data are returned as is; cast
        them where they are used.
    var_names
        ``(n_genes,)`` array of the selected gene names.

    Raises
    ------
    KeyError
        Unknown ``layer`` (the message lists the available layers) or unknown gene names.
    TypeError
        Non-numeric data.
    ValueError
        NaN or inf entries, or ``X`` is ``None``.
    """
    if layer is None:
        X = adata.X
        if X is None:
            msg = f"`adata.X` is None; pass `layer=` to use one of the layers {list(adata.layers.keys())}."
            raise ValueError(msg)
    else:
        if not isinstance(layer, str):
            msg = f"Expected `layer` to be a string or None, found {type(layer).__name__}."
            raise TypeError(msg)
        if layer not in adata.layers:
            msg = f"Layer {layer!r} not found in `adata.layers`; available layers: {list(adata.layers.keys())}."
            raise KeyError(msg)
        X = adata.layers[layer]
    var_names = np.asarray(adata.var_names)
    if genes is not None:
        mask = _gene_mask(adata, genes)
        X = X[:, np.flatnonzero(mask)] if hasattr(X, "compute") else X[:, mask]
        var_names = var_names[mask]
    if hasattr(X, "compute"):  # dask array: the selected genes are loaded (scipy-sparse chunks stay sparse)
        logger.info("    loading %d x %d values of a dask array into memory", X.shape[0], X.shape[1])
        X = X.compute()
    if sp.issparse(X):
        X = X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X)
        values = X.data
    else:
        if hasattr(X, "to_numpy"):  # DataFrame layer
            X = X.to_numpy()
        X = np.asarray(X)
        if X.ndim != 2:
            msg = f"Expected {_layer_name(layer)} to be 2D, found {X.ndim} dimensions."
            raise ValueError(msg)
        values = X
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        msg = f"Expected {_layer_name(layer)} to be numeric, found dtype {values.dtype}."
        raise TypeError(msg)
    if np.issubdtype(values.dtype, np.complexfloating):
        msg = f"Expected {_layer_name(layer)} to be real, found dtype {values.dtype}."
        raise TypeError(msg)
    if np.issubdtype(values.dtype, np.floating) and not allow_nan:
        finite = np.isfinite(values)
        if not finite.all():
            n_bad = int(values.size - finite.sum())
            msg = (
                f"{_layer_name(layer)} contains {n_bad} NaN or inf value(s); impute or drop them first "
                "(for missing spots use `sm.tl.impute`)."
            )
            raise ValueError(msg)
    return X, var_names


def _gene_mask(adata, genes) -> np.ndarray:
    genes = np.asarray(genes)
    if genes.dtype == bool:
        if genes.shape != (adata.n_vars,):
            msg = f"A boolean `genes` mask needs length n_vars = {adata.n_vars}, found shape {genes.shape}."
            raise ValueError(msg)
        return genes
    idx = adata.var_names.get_indexer(genes.astype(str))
    if (idx < 0).any():
        missing = list(genes[idx < 0][:5])
        msg = f"Genes {missing} not found in `adata.var_names`."
        raise KeyError(msg)
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[idx] = True
    return mask


def get_coords(adata, spatial_key: str = K.SPATIAL_KEY, *, min_spots: int = 1) -> np.ndarray:
    """Spot coordinates ``adata.obsm[spatial_key]`` as a checked float64 ``(n_obs, d)`` array (``d`` in {2, 3}).

    Raises ``KeyError`` naming the available keys when they are missing, and the errors of
    :func:`smoother._validation.check_coords` on NaN/inf or a bad shape.
    """
    if spatial_key not in adata.obsm:
        msg = (
            f"Spatial coordinates `adata.obsm[{spatial_key!r}]` not found (available: {list(adata.obsm.keys())}); "
            "store the (n_obs, 2) spot coordinates there (scanpy/squidpy readers do) or pass `spatial_key=`."
        )
        raise KeyError(msg)
    return check_coords(adata.obsm[spatial_key], name=f"adata.obsm[{spatial_key!r}]", min_spots=min_spots)


def get_graph(adata, connectivity_key: str = K.DEFAULT_CONN) -> sp.csr_matrix:
    """The spatial graph ``adata.obsp[connectivity_key]`` as CSR float64, shape ``(n_obs, n_obs)``.

    Raises
    ------
    KeyError
        The key is missing; the message names ``sm.pp.spatial_graph`` and ``sq.gr.spatial_neighbors_knn`` (and
        ``sm.pp.scale_by_*`` for the scaled key).
    ValueError
        Wrong shape, NaN/inf weights, or negative weights (which the priors would otherwise clip to 0 silently).
    """
    if not isinstance(connectivity_key, str):
        msg = f"Expected `connectivity_key` to be a string, found {type(connectivity_key).__name__}."
        raise TypeError(msg)
    if connectivity_key not in adata.obsp:
        base = connectivity_key[: -len("_connectivities")] if connectivity_key.endswith("_connectivities") else None
        fix = (
            f"`sm.pp.spatial_graph(adata, key_added={base!r})` or "
            f"`sq.gr.spatial_neighbors_knn(adata, key_added={base!r})`"
            if base and base != "spatial"
            else "`sm.pp.spatial_graph(adata)` or `sq.gr.spatial_neighbors_knn(adata)`"
        )
        if connectivity_key == K.SCALED_CONN:
            fix = "`sm.pp.scale_by_expr`, `sm.pp.scale_by_identity` or `sm.pp.scale_by_histology`"
        msg = (
            f"Spatial connectivity key {connectivity_key!r} not found in `adata.obsp` "
            f"(available: {list(adata.obsp.keys())}). Please run {fix} first."
        )
        raise KeyError(msg)
    W = adata.obsp[connectivity_key]
    W = sp.csr_matrix(W, dtype=np.float64) if sp.issparse(W) else sp.csr_matrix(np.asarray(W, dtype=np.float64))
    n = adata.n_obs
    if W.shape != (n, n):
        msg = (
            f"`adata.obsp[{connectivity_key!r}]` has shape {W.shape}, expected (n_obs, n_obs) = ({n}, {n}); "
            "rebuild the graph on these spots."
        )
        raise ValueError(msg)
    if W.nnz and not np.isfinite(W.data).all():
        msg = f"`adata.obsp[{connectivity_key!r}]` contains NaN or inf weights; rebuild it with `sm.pp.spatial_graph`."
        raise ValueError(msg)
    if W.nnz and (W.data < 0).any():
        n_neg = int((W.data < 0).sum())
        msg = (
            f"`adata.obsp[{connectivity_key!r}]` has {n_neg} negative weight(s); the spatial priors need non-negative "
            "edge weights (similarities, not distances or correlations). Rebuild the graph with `sm.pp.spatial_graph` "
            "or rescale it with `sm.pp.scale_by_expr`."
        )
        raise ValueError(msg)
    return W


def check_precision_args(prior: str, rho: Any) -> tuple[str, float]:
    """Validate ``prior`` and ``rho`` (cheap checks, no matrix work)."""
    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    return prior, rho


def get_precision(
    adata,
    *,
    prior: str = "icar",
    rho: float = 0.99,
    standardize: bool = False,
    connectivity_key: str = K.DEFAULT_CONN,
    W: sp.csr_matrix | None = None,
) -> sp.csr_matrix | np.ndarray:
    """The precision matrix ``Q`` of ``prior`` on the graph ``adata.obsp[connectivity_key]``.

    Parameters
    ----------
    adata
        The AnnData object holding the graph.
    prior, rho, standardize
        See :func:`smoother._core.precision.precision`.
    connectivity_key
        Key of the graph in ``adata.obsp``.
    W
        The graph, when the caller already read it with :func:`get_graph`.

    Returns
    -------
    Q
        CSR float64 ``(n_obs, n_obs)`` (dense ``ndarray`` for ``'sma'``).

    Raises
    ------
    ValueError
        Unknown prior, ``rho`` outside ``[0, 1]``, or ``standardize=True`` with a ``Q`` that is not positive
        definite (the message names a working ``rho``). Positive definiteness of ``Q`` itself is not required
        here: smoothing only needs ``I + lambda Q`` to be positive definite; callers that need ``Q^{-1}``
        check it themselves (e.g. with :func:`smoother._core.is_positive_definite` and
        :func:`smoother._core.precision.not_pd_message`).
    """
    import warnings

    from ._core.precision import not_pd_message, precision

    prior, rho = check_precision_args(prior, rho)
    if not isinstance(standardize, (bool, np.bool_)):
        msg = f"Expected `standardize` to be a bool, found `{standardize!r}`."
        raise TypeError(msg)
    if W is None:
        W = get_graph(adata, connectivity_key)
    W = symmetrize_for_prior(W, prior)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*singular.*", category=UserWarning)
        if standardize:
            warnings.filterwarnings("error", message=".*cannot be standardized.*", category=UserWarning)
        try:
            Q = precision(W, prior, rho, standardize=bool(standardize))
        except UserWarning as e:
            if "cannot be standardized" not in str(e):
                raise
            msg = not_pd_message(prior, rho, W) + " `standardize=True` needs a proper (positive definite) prior."
            raise ValueError(msg) from e
    return Q


def symmetrize_for_prior(W: sp.csr_matrix, prior: str) -> sp.csr_matrix:
    """For 'car'/'icar', replace an asymmetric graph by ``max(W, W^T)`` (logged at info level).

    CAR/ICAR need a symmetric weight matrix. squidpy's generic kNN graph is directed (row ``i`` lists the
    ``n_neighs`` nearest spots of ``i``); its symmetrization keeps an edge when either spot is among the other's
    nearest, like ``sm.pp.spatial_graph(mutual=False)``. 'sar', 'isar' and 'sma' take ``W`` as it is.
    """
    if prior not in ("car", "icar"):
        return W
    diff = W - W.T
    if diff.nnz == 0 or np.abs(diff.data).max() <= 1e-12 * max(1.0, np.abs(W.data).max()):
        return W
    logger.info("    the graph is not symmetric; using max(W, W.T) for the '%s' prior", prior)
    out = W.maximum(W.T).tocsr()
    out.sort_indices()
    return out


def to_writable(value: Any) -> Any:
    """Convert ``value`` to types AnnData can write to h5ad (lists not tuples, str keys, numpy scalars unwrapped).

    ``None`` stays ``None`` (anndata writes it to h5ad and zarr).
    """
    if value is None:
        return None
    import pandas as pd

    if isinstance(value, pd.DataFrame):  # anndata writes data frames in uns
        return value
    if isinstance(value, Mapping):
        return {str(k): to_writable(v) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [to_writable(v) for v in value.tolist()]
        return value
    if isinstance(value, (list, tuple)):
        items = [to_writable(v) for v in value]
        if items and all(isinstance(v, (int, float, bool)) for v in items) or all(isinstance(v, str) for v in items):
            return np.asarray(items) if items else np.asarray([], dtype=float)
        return {str(i): v for i, v in enumerate(items)}
    return str(value)


def write_params(adata, key: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Write ``adata.uns[key]['params'] = params`` (plus ``adata.uns[key][name] = value`` for ``extra``).

    Values are converted with :func:`to_writable` so the object can be saved with ``adata.write_h5ad``. Other
    entries of an existing ``adata.uns[key]`` dict are kept (overwritten when the same name is written).
    """
    entry = adata.uns.get(key)
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    entry["params"] = to_writable(dict(params))
    for name, value in extra.items():
        entry[name] = to_writable(value)
    adata.uns[key] = entry


def log_added(*fields: str) -> None:
    """Log squidpy-style lines ``added adata.layers['smoothed']`` at info level (one per field)."""
    for field in fields:
        logger.info("    added %s", field)


# ----------------------------------------------------------------------------------------------------------------
# the prior every fitting and diagnostic function uses
# ----------------------------------------------------------------------------------------------------------------
def get_prior_operator(W: sp.csr_matrix, prior: str, rho: float, standardize: bool = False):
    """The prior on the graph ``W`` exactly as every ``sm.tl`` function uses it.

    ``smooth``, ``impute``, ``enhance``, ``deconvolve``, ``spatial_pca`` and ``corr_decay``/``scan_rho``/
    ``fit_decay`` all build their prior here, so a diagnostic describes the prior a fit uses: for 'car'/'icar' an
    asymmetric graph is symmetrized with ``max(W, W.T)`` (:func:`symmetrize_for_prior`).

    Returns
    -------
    :class:`smoother._core.smooth.PriorOperator` (``op.Q`` is the precision matrix).

    Raises
    ------
    ValueError
        The prior is improper in a way the caller cannot use (``standardize=True`` on an intrinsic prior at
        ``rho = 1``, or a 'car' precision that is not positive definite); the message names a ``rho`` that works.
    """
    from ._core import smooth as core
    from ._core.linalg import NotPositiveDefiniteError, SPDFactor
    from ._core.precision import not_pd_message

    W = symmetrize_for_prior(W, prior)
    if standardize and prior in ("icar", "isar") and rho >= 1.0:
        raise ValueError(not_pd_message(prior, rho) + " `standardize=True` needs a proper prior.")
    try:
        op = core.prior_operator(W, prior, rho, standardize=standardize)
    except NotPositiveDefiniteError as e:
        raise ValueError(not_pd_message(prior, rho, W)) from e
    if prior == "car":
        # Q = I - rho W can be indefinite (rho >= 1 / lambda_max(W)); Gershgorin first, then a factorization
        rowsum = np.asarray(abs(W).sum(axis=1)).ravel()
        if not (rho * rowsum.max() < 1.0):
            try:
                SPDFactor(op.Q)
            except NotPositiveDefiniteError as e:
                raise ValueError(not_pd_message(prior, rho, W)) from e
    return op


# ----------------------------------------------------------------------------------------------------------------
# the one result writer
# ----------------------------------------------------------------------------------------------------------------
_SLOTS = ("layers", "obs", "var", "obsm", "varm", "obsp", "varp")


def target_adata(adata, copy: bool):
    """The object results go to: a copy with ``copy=True`` (the input is never touched, a view stays a view),
    else ``adata`` itself, a view made actual with scanpy's warning."""
    if copy:
        return adata.copy()
    view_to_actual(adata)
    return adata


def save_result(
    adata,
    *,
    copy: bool = False,
    uns_key: str | tuple[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    uns: Mapping[str, Any] | None = None,
    **slots: Mapping[str, Any],
):
    """Write the results of one call — the only writer of ``sm.pp``/``sm.tl`` (in the spirit of squidpy's
    ``_save_data``).

    Call it once, after all the work succeeded, so that an error leaves ``adata`` unchanged.

    Parameters
    ----------
    adata
        The user's AnnData.
    copy
        Write to a copy and return it (``adata`` itself is never touched, a view stays a view). Otherwise a view is
        made actual with scanpy's warning and ``None`` is returned.
    uns_key
        ``adata.uns[uns_key]`` receives ``{'params': params, **uns}``, *replacing* any previous entry, so nothing
        stale survives a re-run with other options. A pair ``(outer, name)`` replaces ``adata.uns[outer][name]``
        only (e.g. ``('corr_decay', 'icar_rho0.99')``).
    params
        The call's parameters, in the shared vocabulary (``lambda_spatial``, ``random_state``, ...; ``None`` stays
        ``None``).
    uns
        Further entries of ``adata.uns[uns_key]``.
    layers, obs, var, obsm, varm, obsp, varp
        ``{key: value}`` to write into that slot. A value ``None`` *removes* the key if present: list every key
        the function may write, with ``None`` for those this call does not produce, and a re-run never leaves a
        stale column behind.

    Returns
    -------
    The modified copy with ``copy=True``, else ``None``. Every key written or removed is logged at info level.
    """
    unknown = set(slots) - set(_SLOTS)
    if unknown:  # programming error of ours
        raise TypeError(f"save_result got unknown slot(s) {sorted(unknown)}")
    out = target_adata(adata, copy)
    for slot in _SLOTS:
        for key, value in (slots.get(slot) or {}).items():
            container = getattr(out, slot)
            present = key in (container.columns if slot in ("obs", "var") else container)
            if value is None:
                if present:
                    del container[key]
                    logger.info("    removed adata.%s[%r] (stale result of an earlier call)", slot, key)
                continue
            container[key] = value
            logger.info("    added adata.%s[%r]", slot, key)
    if uns_key is not None:
        entry = {} if params is None else {"params": to_writable(dict(params))}
        for name, value in (uns or {}).items():
            entry[str(name)] = to_writable(value)
        if isinstance(uns_key, tuple):
            outer, inner = uns_key
            store = out.uns.get(outer)
            store = dict(store) if isinstance(store, Mapping) else {}
            store[inner] = entry
            out.uns[outer] = store
            logger.info("    added adata.uns[%r][%r]", outer, inner)
        else:
            out.uns[uns_key] = entry
            logger.info("    added adata.uns[%r]", uns_key)
    return out if copy else None
