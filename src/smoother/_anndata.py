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
from ._validation import check_coords, check_nonneg_scalar, check_prior, check_rho, view_to_actual

__all__ = [
    "check_adata",
    "get_graph",
    "get_matrix",
    "get_precision",
    "log_added",
    "symmetrize_for_prior",
    "to_writable",
    "write_params",
]


def check_adata(adata: Any, *, name: str = "adata") -> None:
    """Raise ``TypeError`` unless ``adata`` is an :class:`~anndata.AnnData`; turn a view into an actual object.

    A view is copied in place with scanpy's warning "Received a view of an AnnData. Making a copy.", so results
    can be written to it.
    """
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        msg = f"Expected `{name}` to be an AnnData object, found {type(adata).__name__}."
        raise TypeError(msg)
    view_to_actual(adata)


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
            msg = "`adata.X` is None; pass `layer=` to use one of the layers " f"{list(adata.layers.keys())}."
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
        X = X[:, mask]
        var_names = var_names[mask]
    if sp.issparse(X):
        X = X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X)
        values = X.data
    else:
        if hasattr(X, "compute"):  # dask array
            X = X.compute()
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
        The key is missing; the message names ``sq.gr.spatial_neighbors`` and ``sm.pp.spatial_graph`` (and
        ``sm.pp.scale_by_*`` for the scaled key).
    ValueError
        Wrong shape, or NaN/inf weights.
    """
    if not isinstance(connectivity_key, str):
        msg = f"Expected `connectivity_key` to be a string, found {type(connectivity_key).__name__}."
        raise TypeError(msg)
    if connectivity_key not in adata.obsp:
        base = connectivity_key[: -len("_connectivities")] if connectivity_key.endswith("_connectivities") else None
        fix = (
            f"`sq.gr.spatial_neighbors(adata, key_added={base!r})` or `sm.pp.spatial_graph(adata, key_added={base!r})`"
            if base and base != "spatial"
            else "`sq.gr.spatial_neighbors(adata)` or `sm.pp.spatial_graph(adata)`"
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
        msg = f"`adata.obsp[{connectivity_key!r}]` contains NaN or inf weights."
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

    ``None`` becomes the string ``'None'`` (h5ad cannot store ``None``).
    """
    if value is None:
        return "None"
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


def check_bool(value: Any, name: str) -> bool:
    """A plain bool (``numpy.bool_`` accepted); ``TypeError`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"Expected `{name}` to be True or False, found `{value!r}`."
        raise TypeError(msg)
    return bool(value)


def check_key(value: Any, name: str) -> str:
    """A non-empty string key (``key_added`` etc.)."""
    if not isinstance(value, str) or not value:
        msg = f"Expected `{name}` to be a non-empty string, found `{value!r}`."
        raise TypeError(msg)
    return value


def check_lambda(value: Any, name: str = "lambda_spatial") -> float:
    """A finite penalty strength ``>= 0``."""
    return check_nonneg_scalar(value, name)
