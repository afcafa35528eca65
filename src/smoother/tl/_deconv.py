r"""Spatially regularized cell-type deconvolution on AnnData (``sm.tl.deconvolve``).

The math lives in :mod:`smoother._core.deconv`; this module checks every argument before any work, matches genes
by name, builds the reference signatures, calls the solver and writes the results with the one result writer
(:func:`smoother._anndata.save_result`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import check_adata, get_graph, get_matrix, get_prior_operator, save_result
from .._core import deconv as core
from .._core.precision import DENSE_WARN
from .._settings import log_finish, log_start, logger
from .._validation import (
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_key,
    check_lambda,
    check_prior,
    check_random_state,
    check_real,
    check_rho,
    check_unique_names,
)

__all__ = ["count_signatures", "deconvolve", "reference_signatures"]

_MODEL_ALIASES = {
    "lr": "lr",
    "linear": "lr",
    "linearregression": "lr",
    "nnls": "nnls",
    "nusvr": "nusvr",
    "svr": "nusvr",
    "dwls": "dwls",
    "lognorm": "lognorm",
    "lognormreg": "lognorm",
    "log-normal": "lognorm",
    "poisson": "poisson",
    "counts": "poisson",
    "nb": "nb",
    "negbinom": "nb",
    "negativebinomial": "nb",
}
_COUNT_MODELS = ("poisson", "nb")
_MODELS = ("poisson", "nb", "nnls", "lr", "dwls", "nusvr", "lognorm")
_NONNEG_MODELS = ("dwls", "lognorm")  # classic models whose loss needs non-negative values
#: The default model of :func:`deconvolve` and its default spatial strength, measured through this function on the
#: five DLPFC generators of benchmarks/deconv_generators.py (RMSE of proportions, NB lambda=0 -> 'auto'):
#: nb_mixture 0.056 -> 0.048, cell_sum 0.063 -> 0.062, missing_type 0.174 -> 0.172, rare_type 0.058 -> 0.049,
#: flash_model 0.0035 -> 0.0035 ('auto' is never worse than lambda=0; FlashDeconv 0.2.0 at its defaults: 0.051,
#: 0.071, 0.175, 0.051). A fixed lambda=1e-3 was worse than lambda=0 on cell_sum (0.072 vs 0.065, earlier core);
#: Poisson was 0.10-0.12 where NB was 0.06-0.07.
DEFAULT_MODEL = "nb"
DEFAULT_LAMBDA_COUNTS = "auto"
DEFAULT_LAMBDA_CLASSIC = 1.0
_MIN_CELLS = 10  # a reference type with fewer cells is warned about
_FEW_GENES = 20
_N_FOLDS = 5
_CHUNK = 8192  # reference cells read at a time (backed references are never loaded whole)


# ----------------------------------------------------------------------------------------------------------------
# argument checks (no work)
# ----------------------------------------------------------------------------------------------------------------
def _check_model(model) -> str:
    if not isinstance(model, str):
        msg = f"Expected `model` to be one of {list(_MODELS)}, found {type(model).__name__} `{model!r}`."
        raise TypeError(msg)
    key = model.lower().replace("_", "")
    if key not in _MODEL_ALIASES:
        msg = f"Unknown model {model!r} (argument `model`): expected one of {list(_MODELS)}, e.g. model='nnls'."
        raise ValueError(msg)
    return _MODEL_ALIASES[key]


def _check_model_kwargs(model_kwargs, mdl: str) -> dict:
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping):
        msg = f"Expected `model_kwargs` to be a dict or None, found {type(model_kwargs).__name__}."
        raise TypeError(msg)
    mkw = dict(model_kwargs)
    allowed = {
        "nusvr": {"C", "nu", "loss_mode"},
        "dwls": {"max_weights"},
        "lognorm": {"epsilon"},
        "poisson": {"platform_effect", "n_genes"},
        "nb": {"platform_effect", "n_genes", "dispersion"},
    }.get(mdl, set())
    if set(mkw) - allowed:
        msg = (
            f"Unknown `model_kwargs` {sorted(map(str, set(mkw) - allowed))} for model {mdl!r}; "
            f"allowed: {sorted(allowed)}."
        )
        raise ValueError(msg)
    if "C" in mkw:
        mkw["C"] = check_real(mkw["C"], "model_kwargs['C']", low=0.0, low_open=True, example="1.0")
    if "nu" in mkw:
        mkw["nu"] = check_real(mkw["nu"], "model_kwargs['nu']", low=0.0, high=1.0, low_open=True, example="0.1")
    if "loss_mode" in mkw:
        mkw["loss_mode"] = check_choice(mkw["loss_mode"], "model_kwargs['loss_mode']", ("l2", "l1"))
    if "max_weights" in mkw:
        mkw["max_weights"] = check_real(mkw["max_weights"], "model_kwargs['max_weights']", low=1.0, example="8")
    if "epsilon" in mkw:
        mkw["epsilon"] = check_real(mkw["epsilon"], "model_kwargs['epsilon']", low=0.0, low_open=True, example="1")
    if "platform_effect" in mkw:
        mkw["platform_effect"] = check_bool(mkw["platform_effect"], "model_kwargs['platform_effect']")
    if "n_genes" in mkw:
        mkw["n_genes"] = check_int(mkw["n_genes"], "model_kwargs['n_genes']", low=1, allow_none=True, example="500")
    if "dispersion" in mkw:
        mkw["dispersion"] = check_real(
            mkw["dispersion"], "model_kwargs['dispersion']", low=0.0, strings=("auto",), example="0.1"
        )
    return mkw


def _check_grid(auto_grid) -> np.ndarray | None:
    if auto_grid is None:
        return None
    if isinstance(auto_grid, str) or np.ndim(auto_grid) != 1:
        msg = f"Expected `auto_grid` to be a 1D list of numbers >= 0 (e.g. auto_grid=[0, 1, 10]), found {auto_grid!r}."
        raise TypeError(msg)
    vals = [check_lambda(v, "auto_grid") for v in list(auto_grid)]
    if not vals:
        msg = "Expected `auto_grid` to hold at least one value (e.g. auto_grid=[0, 1, 10]), found an empty list."
        raise ValueError(msg)
    return np.asarray(vals, dtype=np.float64)


def _check_genes(genes):
    if genes is None:
        return None
    if isinstance(genes, str):
        genes = [genes]
    arr = np.asarray(genes)
    if arr.ndim != 1:
        msg = f"Expected `genes` to be a list of gene names or a boolean mask, found shape {arr.shape}."
        raise TypeError(msg)
    if arr.dtype != bool:
        arr = arr.astype(str)
        check_unique_names(arr, "The names in `genes`")
    return arr


def _check_top(top_loss, betti_priors, lambda_top_loss, lambda_topo):
    lam_top = check_lambda(lambda_top_loss, "lambda_top_loss")
    lam_topo = check_lambda(lambda_topo, "lambda_topo")
    if top_loss is not None and betti_priors is not None:
        msg = "Pass either `top_loss` (a module) or `betti_priors` (to build one), not both."
        raise ValueError(msg)
    if top_loss is not None and not callable(top_loss):
        msg = (
            "Expected `top_loss` to be callable on the (n_types, n_spots) coefficients, "
            f"found {type(top_loss).__name__}."
        )
        raise TypeError(msg)
    if betti_priors is not None and not isinstance(betti_priors, dict):
        msg = f"Expected `betti_priors` to be a dict {{type: {{betti_k: expected number}}}}, found {betti_priors!r}."
        raise TypeError(msg)
    return lam_top, lam_topo


# ----------------------------------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------------------------------
def _reference_source(reference, layer):
    """The reference's matrix (possibly backed) and the name used in messages."""
    if layer is None:
        X, where = reference.X, "reference.X"
        if X is None:
            msg = f"`reference.X` is None; pass `reference_layer=` (available: {list(reference.layers.keys())})."
            raise ValueError(msg)
        return X, where
    if not isinstance(layer, str):
        msg = f"Expected `reference_layer` to be a string or None, found {type(layer).__name__} `{layer!r}`."
        raise TypeError(msg)
    if layer not in reference.layers:
        msg = (
            f"Layer {layer!r} (argument `reference_layer`) not found in `reference.layers`; "
            f"available: {list(reference.layers.keys())}."
        )
        raise KeyError(msg)
    return reference.layers[layer], f"reference.layers[{layer!r}]"


def _reference_chunks(X, where: str):
    """Row blocks of the reference matrix as float64 (dense) or CSR, each validated (numeric, finite)."""
    n = X.shape[0]
    for start in range(0, n, _CHUNK):
        block = X[start : min(n, start + _CHUNK)]
        if hasattr(block, "to_numpy"):
            block = block.to_numpy()
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            vals = block.data
        else:
            block = np.asarray(block)
            vals = block
        if not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool) or np.iscomplexobj(vals):
            msg = f"Expected `{where}` to be real numbers, found dtype {vals.dtype}."
            raise TypeError(msg)
        vals = vals.astype(np.float64, copy=False)
        if not np.isfinite(vals).all():
            msg = f"`{where}` contains NaN or inf values; drop or fix those cells or genes of the reference."
            raise ValueError(msg)
        yield start, (block.astype(np.float64) if sp.issparse(block) else vals)


def _labels(reference, groupby):
    if groupby is None:
        msg = "A single-cell `reference` needs `groupby=`, the column of `reference.obs` with the cell types."
        raise ValueError(msg)
    check_key(groupby, "groupby")
    if groupby not in reference.obs.columns:
        msg = (
            f"Column {groupby!r} (argument `groupby`) not found in `reference.obs` "
            f"(available: {list(reference.obs.columns)})."
        )
        raise KeyError(msg)
    labels = reference.obs[groupby]
    if labels.isna().any():
        msg = f"`reference.obs[{groupby!r}]` has {int(labels.isna().sum())} missing label(s); drop those cells."
        raise ValueError(msg)
    cats = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else pd.Index(pd.unique(labels))
    names = [str(c) for c in cats]
    check_unique_names(names, f"The cell types of `reference.obs[{groupby!r}]` (as text)")
    codes = np.asarray(pd.Categorical(labels, categories=cats).codes)
    counts = np.bincount(codes, minlength=len(cats))
    if (counts == 0).any():
        empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
        msg = (
            f"Group(s) {empty} of `reference.obs[{groupby!r}]` have no cells; remove unused categories "
            "(`reference.obs[groupby] = reference.obs[groupby].cat.remove_unused_categories()`)."
        )
        raise ValueError(msg)
    return names, codes, counts


def _check_reference(reference, groupby, layer):
    """Cheap checks of the reference (no matrix is read): returns ``('anndata' | 'frame', labels info)``."""
    from anndata import AnnData

    if isinstance(reference, AnnData):
        check_adata(reference, name="reference", writes=False)
        if reference.n_obs == 0:
            msg = "The `reference` has no cells (reference.n_obs == 0)."
            raise ValueError(msg)
        if reference.n_vars == 0:
            msg = "The `reference` has no genes (reference.n_vars == 0)."
            raise ValueError(msg)
        check_unique_names(reference.var_names, "`reference.var_names`")
        _reference_source(reference, layer)
        return _labels(reference, groupby)
    if isinstance(reference, pd.DataFrame):
        if reference.shape[0] < 1 or reference.shape[1] < 1:
            msg = f"Expected a genes x types `reference` DataFrame, found shape {reference.shape}."
            raise ValueError(msg)
        check_unique_names(reference.index.astype(str), "The gene names (index) of the `reference` DataFrame")
        check_unique_names(reference.columns.astype(str), "The cell types (columns) of the `reference` DataFrame")
        return None
    msg = (
        "Expected `reference` to be an AnnData (single cells) or a genes x types DataFrame, "
        f"found {type(reference).__name__}."
    )
    raise TypeError(msg)


def reference_signatures(reference, groupby: str | None = None, *, layer: str | None = None) -> pd.DataFrame:
    """Reference signatures as a genes x types DataFrame.

    Parameters
    ----------
    reference
        A single-cell AnnData (signatures are the mean expression of each group of cells; a backed AnnData is
        read in blocks of cells) or a genes x types DataFrame (returned validated).
    groupby
        Column of ``reference.obs`` with the cell-type labels (AnnData only).
    layer
        Layer of the reference to average (default ``X``).

    Returns
    -------
    ``(n_genes, n_types)`` float64 DataFrame indexed by gene names, one column per group.

    Raises
    ------
    TypeError, ValueError, KeyError
        A wrong type, a bad value (NaN, duplicated gene names, empty groups) or a missing ``groupby``/``layer``;
        every message names the ``reference``.
    """
    info = _check_reference(reference, groupby, layer)
    if info is None:  # DataFrame
        try:
            vals = reference.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            msg = "Expected the `reference` DataFrame (genes x types) to be numeric."
            raise TypeError(msg) from e
        if not np.isfinite(vals).all():
            msg = "The `reference` DataFrame contains NaN or inf values; fill or drop those genes."
            raise ValueError(msg)
        return pd.DataFrame(vals, index=reference.index.astype(str), columns=[str(c) for c in reference.columns])
    names, codes, counts = info
    X, where = _reference_source(reference, layer)
    sums = np.zeros((len(names), reference.n_vars))
    for start, block in _reference_chunks(X, where):
        c = codes[start : start + block.shape[0]]
        ind = sp.csr_matrix((np.ones(len(c)), (c, np.arange(len(c)))), shape=(len(names), len(c)))
        part = ind @ block
        sums += part.toarray() if sp.issparse(part) else np.asarray(part)
    _warn_few_cells(names, counts)
    sig = (sums / counts[:, None]).T
    return pd.DataFrame(sig, index=pd.Index(np.asarray(reference.var_names).astype(str)), columns=names)


# ----------------------------------------------------------------------------------------------------------------
# sm.tl.deconvolve
# ----------------------------------------------------------------------------------------------------------------
def _warn_few_cells(names, counts) -> None:
    few = [f"{n} ({int(c)})" for n, c in zip(names, counts, strict=True) if c < _MIN_CELLS]
    if few:
        warnings.warn(
            f"Reference type(s) {few} have fewer than {_MIN_CELLS} cells; their signatures are noisy and their "
            "proportions uncertain. Add cells of these types or merge them with a related type.",
            UserWarning,
            stacklevel=3,
        )


def count_signatures(reference, groupby: str | None = None, *, layer: str | None = None):
    """Signatures of the count models: the per-cell normalized mean expression of each type.

    Each cell's counts are divided by its total count, and the profiles are averaged over the cells of each type
    (cells without counts are left out), so deeply sequenced cells do not dominate. A genes x types DataFrame is
    taken as the signatures (non-negative; columns are rescaled by the model).

    Returns
    -------
    ``(signatures, info)``: the ``(n_genes, n_types)`` DataFrame and, for an AnnData reference, ``{'n_cells',
    'n_cells_without_counts', 'mean_library_size'}`` per type (``None`` for a DataFrame).

    Raises
    ------
    ValueError
        Negative or non-integer values in the reference (the count models need raw counts: pass
        ``reference_layer='counts'``), or a type whose cells have no counts.
    """
    info = _check_reference(reference, groupby, layer)
    if info is None:
        sig = reference_signatures(reference)
        if (sig.to_numpy() < 0).any():
            msg = "The `reference` DataFrame has negative values; the count models need non-negative signatures."
            raise ValueError(msg)
        return sig, None
    from .._core.deconv_counts import check_counts

    names, codes, _ = info
    X, where = _reference_source(reference, layer)
    K_ = len(names)
    sums = np.zeros((K_, reference.n_vars))
    n_cells = np.zeros(K_)
    n_zero = np.zeros(K_)
    lib = np.zeros(K_)
    for start, block in _reference_chunks(X, where):
        try:
            check_counts(block.astype(np.uint8) if block.dtype == bool else block, name=where)
        except ValueError as e:
            msg = (
                f"{_reason(e)}: the count models build the signatures from the reference's raw counts. Pass "
                "`reference_layer='counts'` (or the layer holding them), or use a classic model (e.g. model='nnls')."
            )
            raise ValueError(msg) from e
        c = codes[start : start + block.shape[0]]
        tot = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        ok = tot > 0
        inv = np.divide(1.0, tot, out=np.zeros_like(tot), where=ok)
        ind = sp.csr_matrix((inv, (c, np.arange(len(c)))), shape=(K_, len(c)))
        part = ind @ block
        sums += part.toarray() if sp.issparse(part) else np.asarray(part)
        n_cells += np.bincount(c[ok], minlength=K_)
        n_zero += np.bincount(c[~ok], minlength=K_)
        lib += np.bincount(c, weights=tot, minlength=K_)
    if (n_cells == 0).any():
        bad = [n for n, k in zip(names, n_cells, strict=True) if k == 0]
        msg = f"Every cell of reference type(s) {bad} has zero counts in `{where}`; drop these types or their cells."
        raise ValueError(msg)
    _warn_few_cells(names, n_cells)
    sig = (sums / n_cells[:, None]).T
    frame = pd.DataFrame(sig, index=pd.Index(np.asarray(reference.var_names).astype(str)), columns=names)
    return frame, {
        "n_cells": n_cells.astype(np.int64),
        "n_cells_without_counts": n_zero.astype(np.int64),
        "mean_library_size": lib / np.maximum(n_cells + n_zero, 1),
    }


def _check_count_data(Y, where: str, layer) -> None:
    from .._core.deconv_counts import check_counts

    try:
        check_counts(Y.astype(np.uint8) if Y.dtype == bool else Y, name=where)  # 0/1 counts are counts
    except ValueError as e:
        fix = (
            "Use model='nnls' for normalized data."
            if layer == "counts"
            else "Pass `layer='counts'` (or the layer holding the raw counts), or use model='nnls' for normalized data."
        )
        msg = f"{_reason(e)}: the count models (model='nb'/'poisson') need raw counts. {fix}"
        raise ValueError(msg) from e


def _reason(err: Exception) -> str:
    """The first clause of a :func:`check_counts` message (what is wrong, without its generic advice)."""
    return str(err).split(";")[0].rstrip(". ")


def _informative_genes(S, gene_names, types, n_genes, *, select: bool) -> np.ndarray | None:
    """The shared genes the count model uses: a boolean mask, or ``None`` for the core's default choice.

    Types without expression on the shared genes are an error; types without a marker gene are named in a warning
    (by :func:`smoother._core.deconv_counts.select_genes`) whatever the choice.
    """
    tot = S.sum(axis=0)
    if (tot <= 0).any():
        bad = [t for t, v in zip(types, tot, strict=True) if v <= 0]
        msg = (
            f"Reference type(s) {bad} have no expression on the {len(gene_names)} genes shared with `adata`; "
            "drop these types from the reference or use more genes."
        )
        raise ValueError(msg)
    from .._core.deconv_counts import select_genes

    mask = np.asarray(select_genes(S, list(gene_names), n_genes=n_genes, type_names=types), dtype=bool)
    if not select:
        return np.ones(S.shape[0], dtype=bool)
    return mask if n_genes is not None else None


def deconvolve(
    adata,
    reference,
    *,
    groupby: str | None = None,
    model: Literal["poisson", "nb", "nnls", "lr", "dwls", "nusvr", "lognorm"] = DEFAULT_MODEL,
    lambda_spatial: float | Literal["auto"] | None = None,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    standardize: bool = False,
    connectivity_key: str = K.DEFAULT_CONN,
    layer: str | None = None,
    reference_layer: str | None = None,
    genes=None,
    bias: bool | None = None,
    backend: Literal["auto", "torch", "cvxpy"] = "auto",
    device: str = "cpu",
    model_kwargs: dict | None = None,
    top_loss=None,
    lambda_top_loss: float = 0.0,
    betti_priors: dict | None = None,
    lambda_topo: float = 0.0,
    tol: float = 1e-6,
    max_iter: int | None = None,
    lr: float = 1e-2,
    max_epochs: int = 1000,
    auto_grid: np.ndarray | list[float] | None = None,
    uncertainty: bool = False,
    random_state: int | None = 0,
    key_added: str = K.PROPS,
    copy: bool = False,
):
    r"""Estimate cell-type proportions (and abundances) per spot from a single-cell reference, with a spatial
    prior keeping neighbouring spots coherent.

    **Count models** (``model='nb'``, the default, or ``'poisson'``) explain the raw counts of each spot as

    .. math::

        y_{ng} \sim \mathrm{Poisson}\ \text{or}\ \mathrm{NB}\Big(\mu_{ng} = s_n\, r_g \sum_k S_{gk}\, z_{nk}\Big),
        \qquad z_{nk} \ge 0,

    with :math:`s_n` the spot's library size (its total count over the shared genes), :math:`S` the reference
    signatures (per-cell normalized mean profile of each type, columns summing to 1 over the shared genes),
    :math:`r_g` a per-gene platform effect between the reference and the spatial assay (estimated with
    ``model_kwargs={'platform_effect': True}``, else 1) and :math:`z_{nk}` the share of the spot's counts
    from type :math:`k`. They minimize the negative log-likelihood (identity link: convex for Poisson; the NB
    dispersion per gene is estimated and the fit is a majorization-minimization to a stationary point) on the
    informative genes of the reference (genes high in one type relative to the others, ranked by the
    information they carry about the mixture; recorded in ``uns[key_added]['genes']``), plus
    :math:`\frac{\lambda}{N}\sum_k z_{:k}^T Q z_{:k}`, solved by Newton (``lambda_spatial=0``) or sequential
    quadratic programming steps to a relative KKT residual ``tol``. ``'auto'`` scores the candidate strengths by
    the deviance of held-out genes (its criterion is recorded in ``uns[key_added]['lambda_auto']``).
    They need raw counts: non-integer or negative data are an error
    (pass ``layer='counts'`` when ``X`` holds normalized data, or use ``model='nnls'`` for normalized data).

    **Classic models** (``'nnls'``, ``'lr'``, ``'dwls'``, ``'nusvr'``, ``'lognorm'``; the published objectives
    of smoother-omics' ``smoother.models.deconv``) minimize, with :math:`G` genes, :math:`N` spots and
    :math:`K` types,

    .. math::

        \frac{1}{GN}\sum_{n,g} \ell(y_{ng},\, x_g^T z_n + b_n) + \frac{\lambda}{KN}\sum_k z_{:k}^T Q z_{:k}
        \;[+\; \lambda_{top}\,\mathrm{TopLoss}(Z)]

    over non-negative coefficients :math:`Z` (``'lr'`` and ``'nusvr'``: unconstrained) and per-spot
    intercepts :math:`b` (``bias=True``), with the signatures :math:`x_g` the plain mean of each group of cells,
    on every shared gene. LR, NNLS and DWLS are solved to optimality (accelerated projected gradient, stopped
    on the KKT residual); nu-SVR, log-normal regression and anything with a topological loss use a torch
    gradient loop.

    Every argument is checked before any work starts; an error leaves ``adata`` (and ``reference``) exactly as
    they were.

    Parameters
    ----------
    adata
        Spatial AnnData (spots x genes) with the graph in ``obsp[connectivity_key]``. Its ``obs_names`` and
        ``var_names`` must be unique.
    reference
        Single-cell AnnData (may be backed, it is only read; raw counts for the count models) or a genes x types
        DataFrame of signatures. Gene names must be unique.
    groupby
        Column of ``reference.obs`` with cell-type labels (AnnData reference).
    model
        ``'nb'`` (default: negative binomial, dispersion per gene estimated) or ``'poisson'`` (count models), or
        a classic model ``'nnls'``, ``'lr'``, ``'dwls'``, ``'nusvr'``, ``'lognorm'``. The defaults were chosen on
        the neutral benchmark ``benchmarks/deconv_suite.py`` (NB beats Poisson on overdispersed counts).
    lambda_spatial
        Strength :math:`\lambda \ge 0` of the spatial prior (0: none), or ``'auto'``. Default (``None``):
        ``'auto'`` for the count models, ``1.0`` for the classic models. ``'auto'`` always evaluates
        :math:`\lambda = 0` too, so it is never worse than no spatial prior by its own criterion (count models:
        negative log-likelihood of held-out genes; classic models: 5-fold cross-validation over genes); a choice at
        the largest candidate is warned about. The two families scale :math:`\lambda` differently.
    prior, rho, standardize
        Spatial prior and its parameters, built from ``obsp[connectivity_key]`` by the same code as in every
        ``sm.tl`` function (see :func:`smoother.tl.smooth`).
    connectivity_key
        Spatial graph in ``adata.obsp`` (read only when the spatial prior is used).
    layer
        Expression layer (default ``X``); raw counts for the count models.
    reference_layer
        Layer of the single-cell reference (default ``X``); raw counts for the count models.
    genes
        Restrict to these genes (names, or a boolean mask over ``adata.var_names``); genes are always matched
        by name with the reference. With a count model, given genes are all used (no marker selection).
    bias
        Classic models: fit a free per-spot intercept (default ``True``). The count models have none (their
        library size plays that role); ``bias=True`` with them is an error.
    backend
        Classic models: ``'auto'`` (exact solver where available), ``'torch'`` (gradient loop) or ``'cvxpy'``.
        Count models: ``'auto'`` only.
    device
        Torch device of the gradient loop (e.g. ``'cuda'``; checked before any work).
    model_kwargs
        Count models: ``platform_effect`` (bool; estimate :math:`r_g`), ``n_genes`` (number of informative genes),
        ``dispersion`` (``'nb'``: ``'auto'`` or a fixed :math:`\phi \ge 0`, variance :math:`\mu + \phi\mu^2`);
        unset, measured defaults apply (no platform effect; ``n_genes`` = all shared genes up to
        ``max(30 K, 300, 3e6 / n_spots)`` of the most informative ones; dispersion ``'auto'``).
        Classic models: ``C``, ``nu``,
        ``loss_mode`` (nu-SVR), ``max_weights`` (DWLS), ``epsilon`` (log-normal).
    top_loss, lambda_top_loss
        Classic models: topological loss module on the ``(n_types, n_spots)`` coefficients (e.g.
        ``smoother.losses.TopLoss``) and its strength.
    betti_priors, lambda_topo
        Classic models, alternative to ``top_loss``: build ``TopLoss(betti_priors, coords_xy)`` on the grid of
        ``obsm['spatial']``; keys of ``betti_priors`` may be type names or indices.
    tol, max_iter
        Relative KKT tolerance and iteration limit (default 200 Newton/SQP iterations for the count models,
        5000 for the exact classic solver).
    lr, max_epochs
        Learning rate and epoch limit of the gradient loop (classic torch models).
    uncertainty
        Count models (``'nb'``, ``'poisson'``): standard errors of the proportions from the curvature of the
        objective at the solution (Laplace approximation: the Fisher information of the likelihood per spot plus
        the spatial term, inverted on the active set — coefficients at 0 are held there — by selected inversion,
        never an ``nK x nK`` inverse; proportions by the delta method). Written to ``obsm[f'{key_added}_se']``,
        with ``obsm[f'{key_added}_at_zero']`` flagging estimates on the boundary (their interval is one-sided).
        Quadratic models (``'lr'``, ``'nnls'``, ``'dwls'``; exact fit, no topological loss): the same Laplace
        approximation with the least-squares loss read as a Gaussian likelihood, its variance estimated from the
        residuals (recorded as ``uns[key_added]['noise_var']``). ``'nusvr'``, ``'lognorm'``, the torch and cvxpy
        backends and topological losses give no uncertainty (a clear error).
    auto_grid
        Candidate values for ``lambda_spatial='auto'`` (0 is always added). Default: count models
        ``(0, 1e-4, 1e-3, 1e-2, 0.1, 1)``, refined around the best; classic models 13 values on a log grid scaled
        to the data.
    random_state
        Seed (gene folds and spot window of ``'auto'``, subsamples, Lanczos start).
    key_added
        Output keys.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy of ``adata`` (``copy=True``) with (a re-run replaces every one of them, and removes those
    the new call does not produce):

    ``obsm[key_added]``
        DataFrame ``(n_obs, n_types)`` of proportions (rows non-negative, summing to 1), columns = types.
    ``obsm[f'{key_added}_abundance']``
        DataFrame ``(n_obs, n_types)``. Count models: the expected counts of each type in the spot (library size
        times share; it keeps the spot's scale). Classic models: the non-negative coefficients, i.e. cell
        equivalents of each type's mean reference cell.
    ``obs[f'{key_added}_library_size']``
        Count models: the library size :math:`s_n` used.
    ``obs[f'{key_added}_bias']``
        Classic models with ``bias=True``: the per-spot intercept.
    ``var[f'{key_added}_gene_effect']``
        Count models: the platform effect :math:`r_g` of each informative gene (NaN for genes not used; 1 when
        it is not estimated).
    ``var[f'{key_added}_dispersion']``
        ``model='nb'``: the dispersion :math:`\phi_g` of each informative gene (NaN for genes not used).
    ``uns[key_added]``
        ``params``; ``objective``; ``convergence`` (``converged``, ``n_iter``, ``kkt_residual``, ``solver``,
        ``seconds``); ``genes`` (names used); ``types``; ``reference`` (cells per type, for an AnnData
        reference); ``lambda_auto`` (grid, criterion values, ``chosen``) with ``lambda_spatial='auto'``.

    Warns
    -----
    UserWarning
        A reference type with fewer than 10 cells or without marker genes (named); few shared genes; spots
        without counts; ``'auto'`` at the edge of its grid.

    Examples
    --------
    Simulated counts of 3 cell types in smooth zones, and a single-cell reference of the same genes:

    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(n_spots=200, n_types=3, n_genes=60, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.deconvolve(adata, ref, groupby="cell_type")  # count model 'nb', lambda_spatial='auto'
    >>> props = adata.obsm["props"]
    >>> props.shape, bool(np.allclose(props.sum(axis=1), 1.0))
    ((200, 3), True)
    >>> bool(np.abs(props.to_numpy() - adata.obsm["props_truth"].to_numpy()).mean() < 0.05)
    True
    """
    # ---------------- validation: nothing is read from large matrices, nothing is written ----------------
    check_adata(adata, copy=copy)
    mdl = _check_model(model)
    counts = mdl in _COUNT_MODELS
    if lambda_spatial is None:
        lambda_spatial = DEFAULT_LAMBDA_COUNTS if counts else DEFAULT_LAMBDA_CLASSIC
    lam = check_lambda(lambda_spatial, "lambda_spatial", allow_auto=True)
    prior = check_prior(prior)
    rho = check_rho(rho, prior)
    standardize = check_bool(standardize, "standardize")
    uncertainty = check_bool(uncertainty, "uncertainty")
    if uncertainty and not counts and mdl not in core.QUADRATIC_MODELS:
        msg = (
            f"`uncertainty=True` is available for the count models ('nb', 'poisson') and the quadratic models ('lr', "
            f"'nnls', 'dwls'); model={mdl!r} is fitted by gradient descent and gives no uncertainty. Pass "
            "uncertainty=False or use one of those models."
        )
        raise ValueError(msg)
    if bias is not None:
        bias = check_bool(bias, "bias")
    if counts and bias:
        msg = (
            f"`bias=True` is for the classic models; model={mdl!r} has no intercept (the spot's library size plays "
            "that role). Leave `bias` unset or use a classic model, e.g. model='nnls'."
        )
        raise ValueError(msg)
    bias = (True if bias is None else bias) and not counts
    key_added = check_key(key_added, "key_added")
    check_key(connectivity_key, "connectivity_key")
    backend = check_choice(backend, "backend", ("auto", "torch", "cvxpy"))
    # 'cpu' is always valid: no torch import (1.5 CPU s) for the count models and the exact solvers
    device = "cpu" if isinstance(device, str) and device == "cpu" else check_device(device)
    tol = check_real(tol, "tol", low=0.0, low_open=True, example="1e-6")
    lr = check_real(lr, "lr", low=0.0, low_open=True, example="0.01")
    if max_iter is None:
        max_iter = 200 if counts else 5000
    max_iter = check_int(max_iter, "max_iter", low=1, example="200" if counts else "5000")
    max_epochs = check_int(max_epochs, "max_epochs", low=1, example="1000")
    random_state = check_random_state(random_state)
    grid = _check_grid(auto_grid)
    genes = _check_genes(genes)
    mkw = _check_model_kwargs(model_kwargs, mdl)
    if lam == "auto" and not counts and mdl not in core.QUADRATIC_MODELS:
        msg = f"lambda_spatial='auto' is available for the models 'lr', 'nnls' and 'dwls', not {mdl!r}; pass a number."
        raise ValueError(msg)
    lam_top, lam_topo = _check_top(top_loss, betti_priors, lambda_top_loss, lambda_topo)
    use_top = (top_loss is not None and lam_top > 0) or (betti_priors is not None and lam_topo > 0)
    if counts and (use_top or backend != "auto"):
        what = "a topological loss" if use_top else f"backend={backend!r}"
        msg = f"model={mdl!r} (count model) does not support {what}; use a classic model, e.g. model='nnls'."
        raise ValueError(msg)
    if use_top and backend == "cvxpy":
        msg = "The topological loss needs backend='auto' or 'torch', not 'cvxpy'."
        raise ValueError(msg)
    if uncertainty and not counts and (use_top or backend != "auto"):
        what = "a topological loss (not quadratic)" if use_top else f"backend={backend!r}"
        msg = (
            f"`uncertainty=True` needs the exact quadratic fit (backend='auto', no topological loss); {what} gives "
            "no uncertainty. Pass uncertainty=False, or drop that option."
        )
        raise ValueError(msg)
    if backend == "cvxpy" and mdl == "lognorm":
        msg = "model='lognorm' is not convex and has no cvxpy backend; use backend='auto'."
        raise ValueError(msg)
    if adata.n_obs == 0:
        msg = "`adata` has no spots (adata.n_obs == 0)."
        raise ValueError(msg)
    check_unique_names(adata.obs_names, "`adata.obs_names`")
    check_unique_names(adata.var_names, "`adata.var_names`")
    _check_reference(reference, groupby, reference_layer)
    need_graph = lam == "auto" or lam > 0
    W = get_graph(adata, connectivity_key) if need_graph else None
    if betti_priors is not None and lam_topo > 0:
        _check_betti(adata, betti_priors, reference, groupby)
    genes = _dask_genes(adata, layer, genes, reference)
    Y, var_names = get_matrix(adata, layer, genes=genes)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if counts:
        _check_count_data(Y, where, layer)

    # ---------------- reading the data: signatures and shared genes (still nothing written) ----------------
    if counts:
        sig, ref_info = count_signatures(reference, groupby, layer=reference_layer)
    else:
        sig, ref_info = reference_signatures(reference, groupby, layer=reference_layer), None
    types = list(sig.columns)
    n_types = len(types)
    if (mdl in _NONNEG_MODELS or counts) and (sig.to_numpy() < 0).any():
        msg = f"model={mdl!r} needs non-negative (count-like) reference signatures; found negative values."
        raise ValueError(msg)
    ref_index = pd.Index(sig.index)
    shared_mask = pd.Index(var_names.astype(str)).isin(ref_index)
    n_shared = int(shared_mask.sum())
    if n_shared == 0:
        msg = (
            f"No genes are shared between `adata.var_names` ({len(var_names)} genes, e.g. {list(var_names[:3])}) "
            f"and the reference ({len(ref_index)} genes, e.g. {list(ref_index[:3])}); check that both use the "
            "same gene identifiers (symbols vs Ensembl IDs)."
        )
        raise ValueError(msg)
    if lam == "auto" and not counts and n_shared < 2 * _N_FOLDS:
        msg = f"lambda_spatial='auto' needs at least {2 * _N_FOLDS} shared genes, found {n_shared}; pass a number."
        raise ValueError(msg)
    gene_names = var_names[shared_mask].astype(str)
    if not shared_mask.all():
        Y = Y[:, np.flatnonzero(shared_mask)]
    if counts:  # the count models convert only the genes they use to floats (10^6 spots: GBs of copies saved)
        Y = sp.csr_matrix(Y) if sp.issparse(Y) else np.asarray(Y)
    else:
        Y = sp.csr_matrix(Y, dtype=np.float64) if sp.issparse(Y) else np.asarray(Y, dtype=np.float64)
    Xsig = sig.loc[gene_names].to_numpy()
    if mdl in _NONNEG_MODELS and Y.shape[0] and Y.min() < 0:
        msg = (
            f"model={mdl!r} needs non-negative (count-like) expression, but {where} has negative values; pass raw "
            "counts with `layer=` or use model='nnls'."
        )
        raise ValueError(msg)
    use = None
    if counts:
        use = _informative_genes(Xsig, gene_names, types, mkw.get("n_genes"), select=genes is None)
    Q = None
    if need_graph:
        op = get_prior_operator(W, prior, rho, standardize)
        if op.Q is None:  # 'sma': the precision (B B^T)^{-1} is dense by definition
            if adata.n_obs > DENSE_WARN:
                warnings.warn(
                    f"prior='sma' has a dense precision: inverting a {adata.n_obs} x {adata.n_obs} matrix; "
                    "use prior='icar' or 'car' (sparse) for large data.",
                    UserWarning,
                    stacklevel=2,
                )
        Q = op.Q if op.Q is not None else op.dense()
    top_module = top_loss if (top_loss is not None and lam_top > 0) else None
    lam_top_eff = lam_top
    if betti_priors is not None and lam_topo > 0:
        top_module = _build_toploss(adata, betti_priors, types)
        lam_top_eff = lam_topo
    n_used = n_shared if use is None else int(use.sum())
    if n_used < max(_FEW_GENES, 2 * n_types):
        warnings.warn(
            f"Only {n_used} genes are {'shared with the reference' if use is None else 'selected'}; "
            f"proportions of {n_types} types may be poorly determined.",
            UserWarning,
            stacklevel=2,
        )

    # ---------------- work ----------------
    start = log_start(f"deconvolving {adata.n_obs} spots into {n_types} types with {n_used} genes ({mdl})")
    params = {
        "model": mdl,
        "lambda_spatial": None,  # the value used, set below
        "lambda_spatial_requested": lambda_spatial if isinstance(lambda_spatial, str) else float(lambda_spatial),
        "prior": prior,
        "rho": rho,
        "standardize": standardize,
        "connectivity_key": connectivity_key if need_graph else None,
        "layer": layer,
        "reference_layer": reference_layer,
        "groupby": groupby,
        "bias": bias,
        "backend": backend,
        "device": device,
        "model_kwargs": mkw,
        "lambda_top_loss": float(lam_top_eff) if top_module is not None else 0.0,
        "tol": tol,
        "max_iter": max_iter,
        "random_state": random_state,
        "uncertainty": uncertainty,
        "key_added": key_added,
    }
    if counts:
        fit = _run_counts(Y, Xsig, use, Q, lam, mdl, mkw, grid, tol, max_iter, random_state)
        if uncertainty:
            fit["se"], fit["at_zero"] = _count_se(fit, Xsig, Q)
    else:
        fit = _run_classic(
            Xsig, Y, Q, lam, mdl, bias, backend, device, mkw, top_module, lam_top_eff, grid, random_state, tol,
            max_iter, lr, max_epochs,
        )  # fmt: skip
        if uncertainty:
            fit["se"], fit["at_zero"], fit["noise_var"] = _quadratic_se(fit, Xsig, Y, Q, mdl, bias, mkw)
    if fit["n_empty"]:
        warnings.warn(
            f"{fit['n_empty']} spot(s) have no {'counts on the genes used' if counts else 'positive coefficient'}; "
            "their proportions are set uniform.",
            UserWarning,
            stacklevel=2,
        )
    params["lambda_spatial"] = fit["lambda"]

    # ---------------- one write ----------------
    obs_index = adata.obs_names.copy()
    used_names = gene_names if fit["genes"] is None else gene_names[fit["genes"]]
    uns = {
        "objective": fit["objective"],
        "convergence": fit["convergence"],
        "genes": np.asarray(used_names, dtype=object).astype(str),
        "types": np.asarray(types, dtype=str),
    }
    if ref_info is not None:
        uns["reference"] = ref_info
    if fit["auto"] is not None:
        uns["lambda_auto"] = fit["auto"]
    if "noise_var" in fit:
        uns["noise_var"] = float(fit["noise_var"])
    var = {f"{key_added}_gene_effect": None, f"{key_added}_dispersion": None}
    if counts:
        pos = adata.var_names.get_indexer(used_names)
        for name, values in (("gene_effect", fit["gene_effect"]), ("dispersion", fit["dispersion"])):
            if values is not None:
                col = np.full(adata.n_vars, np.nan)
                col[pos] = values
                var[f"{key_added}_{name}"] = col
    out = save_result(
        adata,
        copy=copy,
        uns_key=key_added,
        params=params,
        uns=uns,
        obsm={
            key_added: pd.DataFrame(fit["props"], index=obs_index, columns=types),
            f"{key_added}_abundance": pd.DataFrame(fit["abundance"], index=obs_index, columns=types),
            f"{key_added}_se": None if "se" not in fit else pd.DataFrame(fit["se"], index=obs_index, columns=types),
            f"{key_added}_at_zero": (
                None if "at_zero" not in fit else pd.DataFrame(fit["at_zero"], index=obs_index, columns=types)
            ),
        },
        obs={
            f"{key_added}_bias": fit["bias"],
            f"{key_added}_library_size": fit["library_size"],
        },
        var=var,
    )
    log_finish(start)
    return out


def _run_classic(
    Xsig, Y, Q, lam, mdl, bias, backend, device, mkw, top_module, lam_top, grid, random_state, tol, max_iter, lr,
    max_epochs,
) -> dict:  # fmt: skip
    auto_info = None
    if lam == "auto":
        lam, auto_info = _choose_lambda(Xsig, Y, Q, mdl, bias, mkw, grid, random_state, tol, max_iter)
    res = _solve(
        Xsig,
        Y,
        Q,
        float(lam),
        mdl,
        bias=bias,
        backend=backend,
        device=device,
        mkw=mkw,
        top_module=top_module,
        lam_top=lam_top,
        tol=tol,
        max_iter=max_iter,
        lr=lr,
        max_epochs=max_epochs,
    )
    props, n_empty = core.coef_to_props(res.coef)
    return {
        "coef": np.asarray(res.coef, dtype=np.float64),
        "genes": None,  # every shared gene
        "props": props,
        "abundance": np.clip(res.coef, 0.0, None),
        "bias": None if res.bias is None else np.asarray(res.bias, dtype=np.float64),
        "library_size": None,
        "gene_effect": None,
        "dispersion": None,
        "lambda": float(lam),
        "auto": auto_info,
        "n_empty": n_empty,
        "objective": {
            "model": res.model_loss,
            "spatial": res.spatial_loss,
            "topological": res.top_loss,
            "total": res.objective,
        },
        "convergence": {
            "converged": bool(res.converged),
            "n_iter": int(res.n_iter),
            "kkt_residual": float(res.kkt_residual),
            "solver": res.solver,
            "seconds": float(res.seconds),
        },
    }


def _run_counts(Y, S, use, Q, lam, mdl, mkw, grid, tol, max_iter, random_state) -> dict:
    from .._core import deconv_counts as dc

    options = {k: mkw[k] for k in ("dispersion", "platform_effect") if k in mkw}  # else the core's defaults
    res = dc.fit_counts(
        Y,
        S,
        Q=Q,
        lambda_spatial=lam,
        likelihood=mdl,
        genes=use,
        tol=tol,
        max_iter=max_iter,
        random_state=random_state,
        auto_grid=grid,
        check=False,
        **options,
    )
    auto = None
    if res.auto is not None:
        a = dict(res.auto)
        auto = {
            "grid": np.asarray(a.pop("grid"), dtype=np.float64),
            "score": np.asarray(a.pop("scores"), dtype=np.float64),
            "chosen": float(res.lambda_spatial),
        }
        auto.update({str(k): v for k, v in a.items() if np.ndim(v) == 0})  # criterion, folds, ...
        g, best = auto["grid"], int(np.argmin(auto["score"]))
        if len(g) > 2 and g[best] == g.max() and g[best] > 0:
            warnings.warn(
                f"lambda_spatial='auto' chose the largest candidate {g[best]:.3g}; the best strength may be larger. "
                f"Pass `auto_grid=` with larger values, e.g. auto_grid=np.geomspace({g[best]:.3g}, "
                f"{1e3 * g[best]:.3g}, 7).",
                UserWarning,
                stacklevel=3,
            )
    return {
        "result": res,
        "genes": np.asarray(res.genes, dtype=bool),
        "props": res.proportions,
        "abundance": res.abundance,
        "bias": None,
        "library_size": np.asarray(res.library_size, dtype=np.float64),
        "gene_effect": np.asarray(res.gene_effect, dtype=np.float64),
        "dispersion": None if res.dispersion is None else np.asarray(res.dispersion, dtype=np.float64),
        "lambda": float(res.lambda_spatial),
        "auto": auto,
        "n_empty": int(res.n_empty),
        "objective": {k: float(v) for k, v in res.objective.items()},
        "convergence": {
            "converged": bool(res.converged),
            "n_iter": int(res.n_iter),
            "kkt_residual": float(res.kkt_residual),
            "solver": f"counts-{mdl}-{'sqp' if res.lambda_spatial > 0 else 'newton'}",
            "seconds": float(res.seconds),
        },
    }


def _count_se(fit: dict, S, Q) -> tuple[np.ndarray, np.ndarray]:
    """Laplace standard errors of the proportions of a count-model fit, and the boundary flags ``(n, K)``."""
    from .._core.uncertainty import count_fisher_blocks, laplace_block_cov, proportion_se

    res = fit["result"]
    S = np.asarray(S, dtype=np.float64)
    S = (S / S.sum(axis=0))[res.genes]
    z = np.clip(np.asarray(res.shares, dtype=np.float64), 0.0, None)
    H = count_fisher_blocks(S, res.library_size, res.gene_effect, res.dispersion, z)
    scale = max(np.max(z, axis=1, keepdims=True).max(), 1e-300)
    active = z > 1e-8 * scale
    lam = float(res.lambda_spatial)
    sbar = float(np.mean(res.library_size)) if np.mean(res.library_size) > 0 else 1.0
    cov = laplace_block_cov(H, Q if lam > 0 else None, lam * sbar, active)
    return proportion_se(z, cov), ~active


def _quadratic_se(fit: dict, X, Y, Q, mdl: str, bias: bool, mkw: dict) -> tuple[np.ndarray, np.ndarray, float]:
    r"""Laplace standard errors of the proportions of a quadratic-model fit, the boundary flags, and sigma^2.

    The least-squares loss is the Gaussian likelihood :math:`y_{ng} \sim N(x_g^T z_n + b_n, \sigma^2 / w_{ng})`
    (``w`` the DWLS weights, else 1) and the spatial term its prior, so the negative log-posterior is
    :math:`GN F(Z) / (2\sigma^2)` and its Hessian :math:`\sigma^{-2}[\mathrm{blockdiag}(H_n) + (\lambda G/K)
    Q \otimes I_K]` (:math:`H_n` with the free intercept profiled out). :math:`\sigma^2` is the weighted residual
    sum of squares over :math:`GN` minus the free coefficients (and intercepts). The inverse is taken on the free
    coefficients (active set), per-spot blocks only (selected inversion), then the delta method to proportions.
    """
    from .._core.uncertainty import laplace_block_cov, proportion_se

    data = core.quadratic_data(
        X, Y, bias=bias, weights="dwls" if mdl == "dwls" else None, max_weights=mkw.get("max_weights", 8.0)
    )
    z = fit["coef"]
    n, K = z.shape
    G = X.shape[0]
    if mdl == "lr":
        active = np.ones_like(z, dtype=bool)
    else:
        scale = max(float(np.max(z)) if z.size else 0.0, 1e-300)
        active = z > 1e-8 * scale
    wrss = max(float(fit["objective"]["model"]) / data.scale, 0.0)
    dof = max(G * n - int(active.sum()) - (n if bias else 0), 1)
    sigma2 = wrss / dof
    H = data.H if data.per_spot else np.broadcast_to(data.H, (n, K, K))
    lam = float(fit["lambda"])
    cov = laplace_block_cov(H, Q if lam > 0 else None, lam * G / (2.0 * K), active)
    return proportion_se(z, sigma2 * cov), ~active, sigma2


# ----------------------------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------------------------
def _solve(
    X,
    Y,
    Q,
    lam,
    mdl,
    *,
    bias,
    backend,
    device,
    mkw,
    top_module,
    lam_top,
    tol,
    max_iter,
    lr,
    max_epochs,
    z0=None,
    show_progress=None,
):
    if backend == "cvxpy":
        from ..models.deconv import _solve_cvxpy

        Yd = Y.toarray() if sp.issparse(Y) else Y
        return _solve_cvxpy(
            mdl, X, Yd, Q=Q, lam=lam, confidences=1.0, bias=bias, nonneg=mdl not in ("lr", "nusvr"), **mkw
        )
    exact = mdl in core.QUADRATIC_MODELS and backend == "auto"
    if exact and top_module is None:
        data = core.quadratic_data(
            X, Y, bias=bias, weights="dwls" if mdl == "dwls" else None, max_weights=mkw.get("max_weights", 8.0)
        )
        spatial = core.SpatialTerm(Q, lam, 1.0, X.shape[1], Y.shape[0])
        return core.solve_quadratic(
            data, spatial, nonneg=mdl != "lr", tol=tol, max_iter=max_iter, z0=z0, show_progress=show_progress
        )
    z0b = None, None
    if exact:  # start the topological fit from the exact spatial optimum
        r0 = core.deconvolve_quadratic(
            X,
            Y,
            model=mdl,
            Q=Q,
            lam=lam,
            bias=bias,
            tol=tol,
            max_iter=max_iter,
            max_weights=mkw.get("max_weights", 8.0),
            show_progress=False,
        )
        z0b = r0.coef, r0.bias
    smooth = mdl == "nusvr" and top_module is None
    return core.solve_torch(
        X,
        Y,
        model=mdl,
        Q=Q,
        lam=lam,
        bias=bias,
        top_loss=top_module,
        lam_top=lam_top,
        model_kwargs=mkw,
        z0=z0b[0],
        b0=z0b[1],
        optimizer="lbfgs" if smooth else "adam",
        lr=1.0 if smooth else lr,
        max_epochs=max_epochs,
        device=device,
    )


def _default_grid(X, Q, bias) -> np.ndarray:
    r"""Log grid around the strength where the data and spatial curvatures of a coefficient balance.

    Per coefficient the data term curves by :math:`2 H_{kk} / (GN)` and the spatial term by
    :math:`2 \lambda Q_{nn} / (KN)`; they are equal at :math:`\lambda_0 = \mathrm{tr}(H) / (G\,\overline{Q_{nn}})`.
    """
    Xc = X - X.mean(axis=0) if bias else X
    dq = Q.diagonal() if sp.issparse(Q) else np.diag(Q)
    lam0 = float(np.sum(Xc * Xc)) / (X.shape[0] * max(float(np.mean(dq)), 1e-12))
    return lam0 * np.logspace(-3, 3, 13)


def _choose_lambda(X, Y, Q, mdl, bias, mkw, grid, random_state, tol, max_iter, n_folds: int = _N_FOLDS):
    """Pick lambda by K-fold cross-validation over genes: fit on the other genes, predict the held-out ones.

    The candidate 0 is always evaluated, so the choice is never worse than no spatial loss by this criterion.
    A choice at the largest candidate is warned about (the optimum may lie beyond the grid).
    """
    G = X.shape[0]
    grid = _default_grid(X, Q, bias) if grid is None else grid
    grid = np.unique(np.concatenate([np.asarray(grid, dtype=np.float64), [0.0]]))[::-1]  # strong to weak
    rng = np.random.default_rng(random_state)
    folds = np.array_split(rng.permutation(G), n_folds)
    err = np.zeros((len(grid), n_folds))
    Yc = Y.tocsc() if sp.issparse(Y) else Y
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(G), test)
        Ytr, Yte = Yc[:, train], Yc[:, test]
        Yte = Yte.toarray() if sp.issparse(Yte) else Yte
        data = core.quadratic_data(
            X[train], Ytr, bias=bias, weights="dwls" if mdl == "dwls" else None, max_weights=mkw.get("max_weights", 8.0)
        )
        z = None
        for i, lam in enumerate(grid):
            spatial = core.SpatialTerm(Q, lam, 1.0, X.shape[1], Y.shape[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", core.ConvergenceWarning)
                r = core.solve_quadratic(
                    data, spatial, nonneg=mdl != "lr", tol=max(tol, 1e-5), max_iter=max_iter, z0=z, show_progress=False
                )
            z = r.coef
            pred = z @ X[test].T
            if r.bias is not None:
                pred += r.bias[:, None]
            err[i, f] = float(np.mean((Yte - pred) ** 2))
    cv = err.mean(axis=1)
    best = int(np.argmin(cv))
    if best == 0 and grid[0] > 0 and len(grid) > 2:
        warnings.warn(
            f"lambda_spatial='auto' chose the largest candidate {grid[0]:.3g}; the best strength may be larger. "
            f"Pass `auto_grid=` with larger values, e.g. auto_grid=np.geomspace({grid[0]:.3g}, {1e3 * grid[0]:.3g}, 7)"
            ".",
            UserWarning,
            stacklevel=3,
        )
    info = {"grid": grid, "cv_error": cv, "chosen": float(grid[best]), "n_folds": n_folds}
    return float(grid[best]), info


def _check_betti(adata, betti_priors, reference, groupby) -> None:
    if K.SPATIAL_KEY not in adata.obsm:
        msg = "`betti_priors` needs coordinates in `adata.obsm['spatial']` to build the topological loss."
        raise KeyError(msg)
    from anndata import AnnData

    if isinstance(reference, AnnData):
        labels = reference.obs[groupby]
        cats = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else pd.unique(labels)
        types = [str(c) for c in cats]
    else:
        types = [str(c) for c in reference.columns]
    for k in betti_priors:
        if isinstance(k, str) and k not in types:
            msg = f"`betti_priors` names type {k!r}, which is not in the reference types {types}."
            raise KeyError(msg)
        if not isinstance(k, str) and (isinstance(k, bool) or not isinstance(k, int | np.integer)):
            msg = f"Keys of `betti_priors` are type names or indices, found {k!r}."
            raise TypeError(msg)
        if not isinstance(k, str) and not 0 <= int(k) < len(types):
            msg = f"`betti_priors` index {k} is out of range for {len(types)} reference types."
            raise ValueError(msg)


def _build_toploss(adata, betti_priors, types):
    pri = {}
    for k, v in betti_priors.items():
        pri[types.index(k) if isinstance(k, str) else int(k)] = v
    try:
        from .._core.persistence import coords_to_grid
        from ..losses import TopLoss

        return TopLoss(pri, coords_to_grid(np.asarray(adata.obsm[K.SPATIAL_KEY])[:, :2]))
    except (ImportError, NotImplementedError) as e:
        msg = f"The topological loss is not available in this installation ({e}); pass `top_loss=` a module instead."
        raise NotImplementedError(msg) from e


def _dask_genes(adata, layer, genes, reference):
    """Dask-backed data: load only the genes shared with the reference (sparse chunks stay sparse).

    Deconvolution sees the data only through the genes it shares with the reference, so a dask-backed matrix is
    reduced to those columns before anything is loaded; the solve then runs in memory on ``n_obs x n_shared``
    (sparse counts of a Visium HD capture area fit easily). ``genes`` given by the user are kept.
    """
    from anndata import AnnData

    from .._core.blockwise import is_dask

    X = adata.X if layer is None else adata.layers[layer] if layer in adata.layers else None
    if genes is not None or X is None or not is_dask(X):
        return genes
    ref_genes = reference.var_names if isinstance(reference, AnnData) else pd.Index(reference.index)
    shared = adata.var_names[adata.var_names.isin(ref_genes.astype(str))]
    if len(shared) == 0:
        return None  # the shared-gene check below names the problem
    logger.info("    dask input: %d genes shared with the reference are loaded into memory", len(shared))
    return np.asarray(shared)
