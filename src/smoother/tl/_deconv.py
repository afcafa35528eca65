r"""Spatially regularized cell-type deconvolution on AnnData (``sm.tl.deconvolve``).

The math lives in :mod:`smoother._core.deconv`; this module matches genes by name, builds the reference
signatures, validates everything before any work, calls the solver and writes the results.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import (
    check_adata,
    check_bool,
    check_key,
    check_precision_args,
    get_matrix,
    get_precision,
    write_params,
)
from .._core import deconv as core
from .._settings import log_finish, log_start
from .._validation import check_nonneg_scalar

__all__ = ["deconvolve", "reference_signatures"]

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
}
_COUNT_MODELS = ("dwls", "lognorm")  # models whose loss needs non-negative values
_FEW_GENES = 20


def _check_model(model) -> str:
    key = model.lower().replace("_", "") if isinstance(model, str) else None
    if key not in _MODEL_ALIASES:
        msg = f"Unknown model {model!r}: expected one of 'lr', 'nnls', 'nusvr', 'dwls', 'lognorm'."
        raise ValueError(msg)
    return _MODEL_ALIASES[key]


def _check_lambda(value) -> float | str:
    if isinstance(value, str):
        if value == "auto":
            return value
        msg = f"Expected `lambda_spatial` to be a number >= 0 or 'auto', found {value!r}."
        raise ValueError(msg)
    return check_nonneg_scalar(value, "lambda_spatial")


def reference_signatures(reference, groupby: str | None = None, *, layer: str | None = None) -> pd.DataFrame:
    """Reference signatures as a genes x types DataFrame.

    Parameters
    ----------
    reference
        A single-cell AnnData (signatures are the mean expression of each group of cells) or a genes x types
        DataFrame (returned validated).
    groupby
        Column of ``reference.obs`` with the cell-type labels (AnnData only).
    layer
        Layer of the reference to average (default ``X``).

    Returns
    -------
    ``(n_genes, n_types)`` float64 DataFrame indexed by gene names, one column per group.
    """
    from anndata import AnnData

    if isinstance(reference, AnnData):
        if groupby is None:
            msg = "A single-cell `reference` needs `groupby=`, the column of `reference.obs` with the cell types."
            raise ValueError(msg)
        if groupby not in reference.obs:
            msg = f"Column {groupby!r} not found in `reference.obs` (available: {list(reference.obs.columns)})."
            raise KeyError(msg)
        labels = reference.obs[groupby]
        if labels.isna().any():
            msg = f"`reference.obs[{groupby!r}]` has {int(labels.isna().sum())} missing label(s); drop those cells."
            raise ValueError(msg)
        cats = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else pd.Index(pd.unique(labels))
        codes = pd.Categorical(labels, categories=cats).codes
        counts = np.bincount(codes, minlength=len(cats))
        if (counts == 0).any():
            empty = [str(c) for c in np.asarray(cats)[counts == 0]]
            msg = (
                f"Group(s) {empty} of `reference.obs[{groupby!r}]` have no cells; remove unused categories "
                "(`reference.obs[groupby] = reference.obs[groupby].cat.remove_unused_categories()`)."
            )
            raise ValueError(msg)
        if len(cats) < 1:
            msg = "The reference has no cells."
            raise ValueError(msg)
        Xr, genes = get_matrix(reference, layer)
        ind = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(cats), len(codes)))
        sums = ind @ Xr.astype(np.float64)
        sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
        sig = (sums / counts[:, None]).T
        return pd.DataFrame(sig, index=pd.Index(genes.astype(str)), columns=[str(c) for c in cats])
    if isinstance(reference, pd.DataFrame):
        try:
            vals = reference.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            msg = "Expected the `reference` DataFrame (genes x types) to be numeric."
            raise TypeError(msg) from e
        if vals.ndim != 2 or vals.shape[1] < 1 or vals.shape[0] < 1:
            msg = f"Expected a genes x types `reference` DataFrame, found shape {reference.shape}."
            raise ValueError(msg)
        if not np.isfinite(vals).all():
            msg = "The `reference` DataFrame contains NaN or inf values; fill or drop those genes."
            raise ValueError(msg)
        if reference.index.has_duplicates:
            msg = "The `reference` DataFrame has duplicated gene names in its index."
            raise ValueError(msg)
        return pd.DataFrame(vals, index=reference.index.astype(str), columns=[str(c) for c in reference.columns])
    msg = (
        "Expected `reference` to be an AnnData (single cells) or a genes x types DataFrame, "
        f"found {type(reference).__name__}."
    )
    raise TypeError(msg)


def _check_top(top_loss, betti_priors, lambda_top_loss, lambda_topo):
    lam_top = check_nonneg_scalar(lambda_top_loss, "lambda_top_loss")
    lam_topo = check_nonneg_scalar(lambda_topo, "lambda_topo")
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
        msg = "Expected `betti_priors` to be a dict {type: {betti_k: expected number}}."
        raise TypeError(msg)
    return lam_top, lam_topo


def deconvolve(
    adata,
    reference,
    *,
    groupby: str | None = None,
    model: Literal["nnls", "lr", "dwls", "nusvr", "lognorm"] = "nnls",
    lambda_spatial: float | Literal["auto"] = 1.0,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    standardize: bool = False,
    connectivity_key: str = K.DEFAULT_CONN,
    layer: str | None = None,
    reference_layer: str | None = None,
    genes=None,
    bias: bool = True,
    backend: Literal["auto", "torch", "cvxpy"] = "auto",
    device: str = "cpu",
    model_kwargs: dict | None = None,
    top_loss=None,
    lambda_top_loss: float = 0.0,
    betti_priors: dict | None = None,
    lambda_topo: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 5000,
    lr: float = 1e-2,
    max_epochs: int = 1000,
    auto_grid: np.ndarray | list[float] | None = None,
    random_state: int = 0,
    key_added: str = K.PROPS,
    copy: bool = False,
):
    r"""Estimate cell-type proportions per spot, with a spatial prior keeping neighbouring spots coherent.

    Minimizes (classic smoother normalization, :math:`G` genes, :math:`N` spots, :math:`K` types)

    .. math::

        \frac{1}{GN}\sum_{n,g} \ell(y_{ng},\, x_g^T z_n + b_n) + \frac{\lambda}{KN}\sum_k z_{:k}^T Q z_{:k}
        \;[+\; \lambda_{top}\,\mathrm{TopLoss}(Z)]

    over non-negative coefficients :math:`Z` (``'lr'`` and ``'nusvr'``: unconstrained) and per-spot
    intercepts :math:`b` (``bias=True``), then normalizes each spot's non-negative coefficients to sum to 1.
    LR, NNLS and DWLS are solved to optimality (accelerated projected gradient, stopped on the KKT residual);
    nu-SVR, log-normal regression and anything with a topological loss use a torch gradient loop.

    Parameters
    ----------
    adata
        Spatial AnnData (spots x genes) with the graph in ``obsp[connectivity_key]``.
    reference
        Single-cell AnnData (signature = mean of each ``groupby`` group) or a genes x types DataFrame.
    groupby
        Column of ``reference.obs`` with cell-type labels (AnnData reference).
    model
        ``'nnls'``, ``'lr'``, ``'dwls'``, ``'nusvr'`` or ``'lognorm'`` (losses as in the classic
        ``smoother.models.deconv``).
    lambda_spatial
        Strength :math:`\lambda` of the spatial loss (0: none). ``'auto'`` chooses it by held-out genes:
        5-fold cross-validation over genes of the prediction error of held-out genes, on a log grid.
    prior, rho, standardize
        Spatial prior and its parameters (see :func:`smoother._core.precision.precision`).
    connectivity_key
        Spatial graph in ``adata.obsp``.
    layer
        Expression layer (default ``X``).
    reference_layer
        Layer of the single-cell reference to average (default ``X``).
    genes
        Restrict to these genes (names); genes are always matched by name with the reference.
    bias
        Fit a free per-spot intercept.
    backend
        ``'auto'`` (exact solver where available), ``'torch'`` (gradient loop for every model) or ``'cvxpy'``.
    device
        Torch device of the gradient loop (e.g. ``'cuda'``).
    model_kwargs
        ``C``, ``nu``, ``loss_mode`` (nu-SVR), ``max_weights`` (DWLS), ``epsilon`` (log-normal).
    top_loss, lambda_top_loss
        Topological loss module on the ``(n_types, n_spots)`` coefficients (e.g. ``smoother.losses.TopLoss``)
        and its strength.
    betti_priors, lambda_topo
        Alternative to ``top_loss``: build ``TopLoss(betti_priors, coords_xy)`` on the grid of
        ``obsm['spatial']``; keys of ``betti_priors`` may be type names or indices.
    tol, max_iter
        Relative KKT tolerance and iteration limit of the exact solver.
    lr, max_epochs
        Learning rate and epoch limit of the gradient loop.
    auto_grid
        Candidate values for ``lambda_spatial='auto'`` (default: 13 values on a log grid scaled to the data).
    random_state
        Seed (gene folds of ``'auto'``, Lanczos start).
    key_added
        Output keys.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy of ``adata`` (``copy=True``) with

    ``obsm[key_added]``
        DataFrame ``(n_obs, n_types)`` of proportions (rows non-negative, summing to 1), columns = types.
    ``uns[key_added]``
        ``params``; ``objective`` (``model``, ``spatial``, ``topological``, ``total``); ``convergence``
        (``converged``, ``n_iter``, ``kkt_residual``, ``solver``, ``seconds``); ``genes`` (names used);
        ``lambda_auto`` (grid and cross-validation error) when ``lambda_spatial='auto'``.
    """
    # ---------------- validation (nothing is written before this block ends) ----------------
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        msg = f"Expected `adata` to be an AnnData object, found {type(adata).__name__}."
        raise TypeError(msg)
    mdl = _check_model(model)
    lam = _check_lambda(lambda_spatial)
    prior, rho = check_precision_args(prior, rho)
    check_bool(standardize, "standardize")
    check_bool(bias, "bias")
    check_bool(copy, "copy")
    check_key(key_added, "key_added")
    if backend not in ("auto", "torch", "cvxpy"):
        msg = f"Unknown backend {backend!r}: expected 'auto', 'torch' or 'cvxpy'."
        raise ValueError(msg)
    if lam == "auto" and mdl not in core.QUADRATIC_MODELS:
        msg = f"lambda_spatial='auto' is available for the models 'lr', 'nnls' and 'dwls', not {mdl!r}; pass a number."
        raise ValueError(msg)
    lam_top, lam_topo = _check_top(top_loss, betti_priors, lambda_top_loss, lambda_topo)
    use_top = (top_loss is not None and lam_top > 0) or (betti_priors is not None and lam_topo > 0)
    if use_top and backend == "cvxpy":
        msg = "The topological loss needs backend='auto' or 'torch', not 'cvxpy'."
        raise ValueError(msg)
    if backend == "cvxpy" and mdl == "lognorm":
        msg = "model='lognorm' is not convex and has no cvxpy backend; use backend='auto'."
        raise ValueError(msg)
    for name, v in (("tol", tol), ("lr", lr)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            msg = f"Expected `{name}` > 0, found {v!r}."
            raise ValueError(msg)
    for name, v in (("max_iter", max_iter), ("max_epochs", max_epochs)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            msg = f"Expected `{name}` to be a positive integer, found {v!r}."
            raise ValueError(msg)
    mkw = dict(model_kwargs or {})
    allowed = {"nusvr": {"C", "nu", "loss_mode"}, "dwls": {"max_weights"}, "lognorm": {"epsilon"}}.get(mdl, set())
    if set(mkw) - allowed:
        msg = f"Unknown `model_kwargs` {sorted(set(mkw) - allowed)} for model {mdl!r}; allowed: {sorted(allowed)}."
        raise ValueError(msg)

    sig = reference_signatures(reference, groupby, layer=reference_layer)
    if mdl in _COUNT_MODELS and (sig.to_numpy() < 0).any():
        msg = f"model={mdl!r} needs non-negative (count-like) reference signatures; found negative values."
        raise ValueError(msg)
    was_view = adata.is_view
    if was_view:
        check_adata(adata)  # makes the view actual (scanpy's warning)
    Y, var_names = get_matrix(adata, layer, genes=genes)
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
    n_types = sig.shape[1]
    if n_shared < max(_FEW_GENES, 2 * n_types):
        warnings.warn(
            f"Only {n_shared} genes are shared with the reference; proportions of {n_types} types may be "
            "poorly determined.",
            UserWarning,
            stacklevel=2,
        )
    gene_names = var_names[shared_mask].astype(str)
    Y = Y[:, np.flatnonzero(shared_mask)]
    Y = Y.astype(np.float64) if sp.issparse(Y) else np.asarray(Y, dtype=np.float64)
    Xsig = sig.loc[gene_names].to_numpy()
    if mdl in _COUNT_MODELS:
        ymin = Y.min() if Y.shape[0] else 0.0
        if ymin < 0:
            msg = (
                f"model={mdl!r} needs non-negative (count-like) expression, but "
                f"{('adata.X' if layer is None else f'layer {layer!r}')} "
                "has negative values; pass raw counts with `layer=` or use model='nnls'."
            )
            raise ValueError(msg)
    need_graph = lam == "auto" or lam > 0
    Q = None
    if need_graph:
        Q = get_precision(adata, prior=prior, rho=rho, standardize=standardize, connectivity_key=connectivity_key)
    top_module = top_loss if (top_loss is not None and lam_top > 0) else None
    lam_top_eff = lam_top
    if betti_priors is not None and lam_topo > 0:
        top_module = _build_toploss(adata, betti_priors, list(sig.columns))
        lam_top_eff = lam_topo

    # ---------------- work ----------------
    start = log_start(f"deconvolving {adata.n_obs} spots into {n_types} types with {n_shared} genes ({mdl})")
    auto_info = None
    if lam == "auto":
        lam, auto_info = _choose_lambda(Xsig, Y, Q, mdl, bias, mkw, auto_grid, random_state, tol, max_iter)
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
        lam_top=lam_top_eff,
        tol=tol,
        max_iter=max_iter,
        lr=lr,
        max_epochs=max_epochs,
    )
    props, n_empty = core.coef_to_props(res.coef)
    if n_empty:
        warnings.warn(
            f"{n_empty} spot(s) have no positive coefficient; their proportions are set uniform.",
            UserWarning,
            stacklevel=2,
        )

    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = pd.DataFrame(props, index=adata.obs_names.copy(), columns=list(sig.columns))
    params = {
        "model": mdl,
        "lambda_spatial": float(lam),
        "lambda_spatial_requested": str(lambda_spatial) if isinstance(lambda_spatial, str) else float(lambda_spatial),
        "prior": prior,
        "rho": rho,
        "standardize": bool(standardize),
        "connectivity_key": connectivity_key,
        "layer": layer,
        "groupby": groupby,
        "bias": bool(bias),
        "backend": backend,
        "device": str(device),
        "model_kwargs": mkw,
        "lambda_top_loss": float(lam_top_eff) if top_module is not None else 0.0,
        "tol": float(tol),
        "max_iter": int(max_iter),
        "random_state": random_state,
    }
    extra = {
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
        "genes": np.asarray(gene_names, dtype=object).astype(str),
        "types": np.asarray(list(sig.columns), dtype=str),
    }
    if res.bias is not None:
        adata.obs[f"{key_added}_bias"] = res.bias
    if auto_info is not None:
        extra["lambda_auto"] = auto_info
    write_params(adata, key_added, params, **extra)
    log_finish(start, [f"adata.obsm[{key_added!r}]", f"adata.uns[{key_added!r}]"])
    return adata if copy else None


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


def _choose_lambda(X, Y, Q, mdl, bias, mkw, grid, random_state, tol, max_iter, n_folds: int = 5):
    """Pick lambda by K-fold cross-validation over genes: fit on the other genes, predict the held-out ones."""
    if mdl not in core.QUADRATIC_MODELS:
        msg = "lambda_spatial='auto' is available for the models 'lr', 'nnls' and 'dwls'."
        raise ValueError(msg)
    G = X.shape[0]
    if G < 2 * n_folds:
        msg = f"lambda_spatial='auto' needs at least {2 * n_folds} shared genes, found {G}."
        raise ValueError(msg)
    grid = _default_grid(X, Q, bias) if grid is None else np.sort(np.asarray(grid, dtype=np.float64))[::-1]
    grid = np.sort(grid)[::-1]  # strong to weak: warm starts move towards the data
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
    info = {"grid": grid, "cv_error": cv, "chosen": float(grid[best]), "n_folds": n_folds}
    return float(grid[best]), info


def _build_toploss(adata, betti_priors, types):
    if K.SPATIAL_KEY not in adata.obsm:
        msg = "`betti_priors` needs coordinates in `adata.obsm['spatial']` to build the topological loss."
        raise KeyError(msg)
    pri = {}
    for k, v in betti_priors.items():
        if isinstance(k, str):
            if k not in types:
                msg = f"`betti_priors` names type {k!r}, which is not in the reference types {types}."
                raise KeyError(msg)
            pri[types.index(k)] = v
        else:
            pri[int(k)] = v
    try:
        from .._core.persistence import coords_to_grid
        from ..losses import TopLoss

        return TopLoss(pri, coords_to_grid(np.asarray(adata.obsm[K.SPATIAL_KEY])[:, :2]))
    except (ImportError, NotImplementedError) as e:
        msg = f"The topological loss is not available in this installation ({e}); pass `top_loss=` a module instead."
        raise NotImplementedError(msg) from e
