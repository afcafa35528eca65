"""Spatially aware dimension reduction on AnnData: exact spatial PCA and the spatial VAE entry point."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import (
    check_adata,
    check_precision_args,
    get_coords,
    get_graph,
    get_matrix,
    get_prior_operator,
    save_result,
)
from .._settings import log_finish, log_start, progress_enabled
from .._validation import (
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_key,
    check_lambda,
    check_random_state,
    check_real,
)

_obsm_key = K.reduction_obsm_key
_varm_key = K.reduction_varm_key


class _Default:
    """Sentinel of an argument that was not given (scanpy's ``_empty``): ``mask_var`` then follows scanpy's default."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()


def _var_mask(adata, mask_var, use_highly_variable) -> tuple[Any, np.ndarray | None]:
    """Resolve ``mask_var`` / ``use_highly_variable`` as ``sc.pp.pca`` (scanpy >= 1.10) does.

    Returns the value recorded in ``params`` (a ``var`` column name, a boolean array or ``None``) and the boolean
    gene mask (``None``: every gene).
    """
    if use_highly_variable is not None:
        if not isinstance(use_highly_variable, (bool, np.bool_)):
            msg = (
                f"Expected `use_highly_variable` to be True, False or None, found "
                f"{type(use_highly_variable).__name__} `{use_highly_variable!r}` (e.g. mask_var='highly_variable')."
            )
            raise TypeError(msg)
        if mask_var is not _DEFAULT:
            msg = (
                "Pass either `mask_var` or the deprecated `use_highly_variable`, not both: "
                "`use_highly_variable=True` is `mask_var='highly_variable'`, `use_highly_variable=False` is "
                "`mask_var=None`."
            )
            raise ValueError(msg)
        warnings.warn(
            "`use_highly_variable` is deprecated (as in scanpy >= 1.10); use `mask_var='highly_variable'` "
            "(or `mask_var=None` for every gene).",
            FutureWarning,
            stacklevel=3,
        )
        mask_var = "highly_variable" if use_highly_variable else None
    elif mask_var is _DEFAULT:
        mask_var = "highly_variable" if "highly_variable" in adata.var.columns else None
    if mask_var is None:
        return None, None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            hint = " run `sc.pp.highly_variable_genes(adata)` first or" if mask_var == "highly_variable" else ""
            msg = (
                f"`mask_var={mask_var!r}` but `adata.var[{mask_var!r}]` does not exist (columns: "
                f"{list(adata.var.columns)[:10]});{hint} pass `mask_var=None` to use every gene."
            )
            raise KeyError(msg)
        col = adata.var[mask_var]
        if col.isna().any():
            msg = f"`adata.var[{mask_var!r}]` (`mask_var`) contains missing values; it must be True/False per gene."
            raise ValueError(msg)
        where = f"`adata.var[{mask_var!r}]` (`mask_var`)"
        values = col.to_numpy(dtype=bool) if pd.api.types.is_bool_dtype(col.dtype) else np.asarray(col)
    else:
        if hasattr(mask_var, "to_numpy"):
            mask_var = mask_var.to_numpy()
        values = np.asarray(mask_var)
        where = "`mask_var`"
        if values.shape != (adata.n_vars,):
            msg = f"{where} must be a boolean array of length n_vars = {adata.n_vars}, found shape {values.shape}."
            raise ValueError(msg)
    if values.dtype != bool:
        msg = (
            f"{where} must be boolean (True for the genes to use), found dtype {values.dtype}; "
            "e.g. mask_var='highly_variable'."
        )
        raise TypeError(msg)
    if not values.any():
        msg = f"{where} selects no gene; pass `mask_var=None` to use every gene."
        raise ValueError(msg)
    return (mask_var if isinstance(mask_var, str) else values.copy()), values.astype(bool, copy=True)


def _total_sum_of_squares(X, mean: np.ndarray | None) -> float:
    if sp.issparse(X):
        ss = float(X.multiply(X).sum(dtype=np.float64))
    else:
        ss = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    if mean is not None:
        ss -= X.shape[0] * float(mean @ mean)
    return ss


def _prior_args(lambda_spatial, prior, rho, standardize) -> tuple[float, str, float, bool]:
    """The checked ``(lambda_spatial, prior, rho, standardize)`` shared by the reduction entry points."""
    lam = check_lambda(lambda_spatial)
    prior, rho = check_precision_args(prior, rho)
    return lam, prior, rho, check_bool(standardize, "standardize")


def _common_params(lam, prior, rho, standardize, connectivity_key, layer, key_added) -> dict[str, Any]:
    """The ``uns[key]['params']`` entries shared by the reduction entry points (the package's vocabulary)."""
    return {
        "lambda_spatial": lam,
        "prior": prior,
        "rho": rho,
        "standardize": standardize,
        "connectivity_key": connectivity_key,
        "layer": layer,
        "key_added": key_added,
    }


def _precision(W, prior: str, rho: float, standardize: bool):
    """The prior's precision as the fitting functions use it (:func:`get_prior_operator`); SMA as an operator."""
    from .._core.spca import sma_precision

    op = get_prior_operator(W, prior, rho, standardize)
    return op.Q if op.Q is not None else sma_precision(op.B)


def _dask_matrix(adata, layer, mask, *, prior: str, solver: str):
    """The dask array behind ``X`` / ``layer`` (gene subset applied lazily), or ``None`` for in-memory data.

    Checks what the dask path cannot do before any work: non-numeric data, the SMA prior (a dense operator) and
    the implicit eigensolvers (they need many passes over the data).
    """
    from .._core.blockwise import is_dask

    if layer is None:
        raw = adata.X
    elif isinstance(layer, str) and layer in adata.layers:
        raw = adata.layers[layer]
    else:
        return None  # get_matrix raises the usual error
    if not is_dask(raw):
        return None
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    dtype = np.dtype(raw.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype.kind == "b") or np.issubdtype(dtype, np.complexfloating):
        msg = f"Expected {where} to be real numbers, found dtype {dtype}."
        raise TypeError(msg)
    if prior == "sma":
        msg = (
            f"`prior='sma'` needs the data in memory ({where} is a dask array): its precision is a dense operator "
            "with no row blocks. Use prior='icar' (or 'car', 'sar', 'isar'), or load the data with `.compute()` first."
        )
        raise ValueError(msg)
    if solver in ("arpack", "lobpcg"):
        msg = (
            f"`solver={solver!r}` needs the data in memory ({where} is a dask array): it passes over the data at every "
            "iteration. On dask input the genes x genes matrix is formed in one pass: use solver='auto' or 'dense'."
        )
        raise ValueError(msg)
    return raw if mask is None else raw[:, mask]


def _spatial_pca_dask(X, Q, n_comps: int, lam: float, zero_center: bool, layer):
    """:func:`smoother._core.spca.spatial_pca_dask` with the rechunking logged and bad values named."""
    from .._core.blockwise import coupled_blocks
    from .._core.spca import prepare_dask_rows, spatial_pca_dask
    from .._settings import logger

    X, notes = prepare_dask_rows(X)
    for note in notes:
        logger.info("    spatial_pca on dask input: rechunked %s", note)
    if X.dtype.kind in "biu":
        X = X.astype(np.float64)
    spread = coupled_blocks(Q, X.chunks[0])
    if spread > 8:
        logger.info(
            "    spatial_pca on dask input: the graph couples each block of spots to %.1f blocks on average; storing "
            "the spots in spatial order (e.g. sorted along obsm['spatial']) makes the pass cheaper",
            spread,
        )
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    try:
        return spatial_pca_dask(X, Q, n_comps, lam, zero_center=zero_center, dtype=dtype)
    except FloatingPointError:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        msg = f"{where} contains NaN or inf values; impute or drop them first (for missing spots use `sm.tl.impute`)."
        raise ValueError(msg) from None


def spatial_pca(
    adata,
    *,
    n_comps: int = 20,
    lambda_spatial: float = 0.1,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    standardize: bool = True,
    connectivity_key: str = K.DEFAULT_CONN,
    layer: str | None = None,
    mask_var: np.ndarray | str | None = _DEFAULT,
    use_highly_variable: bool | None = None,
    zero_center: bool = True,
    solver: Literal["auto", "dense", "arpack", "lobpcg"] = "auto",
    key_added: str = K.SPATIAL_PCA,
    copy: bool = False,
):
    r"""Spatially aware PCA: principal components that vary smoothly over the tissue, solved exactly.

    Use it instead of ``sc.pp.pca`` when the embedding should follow the tissue's spatial structure (layers,
    domains) rather than spot-level noise. Expects log-normalized expression (as ``sc.pp.pca``) and a spatial
    graph in ``adata.obsp[connectivity_key]`` (``sq.gr.spatial_neighbors`` or ``sm.pp.spatial_graph``).

    Parameters
    ----------
    adata
        AnnData with a spatial graph in ``adata.obsp[connectivity_key]``.
    n_comps
        Number of components; smaller than both the number of spots and the number of genes used.
    lambda_spatial
        Strength of the spatial penalty :math:`\lambda \ge 0` (the classic ``lambda_spatial_loss``; both terms
        of the classic loss are divided by the same ``n_comps * n_obs``, so the value carries over). ``0`` is
        ordinary PCA.
    prior
        Spatial prior whose precision :math:`Q` defines the spatial loss.
    rho
        Spatial autocorrelation of the prior, in ``[0, 1]``.
    standardize
        Rescale :math:`Q` to unit implied variance per spot.
    connectivity_key
        Key of the spatial graph in ``adata.obsp``.
    layer
        Layer to use instead of ``adata.X``.
    mask_var
        Genes to use, as in ``sc.pp.pca`` (scanpy >= 1.10): a boolean array over ``var_names`` or the name of a
        boolean ``adata.var`` column; ``None`` uses every gene. Not given: ``'highly_variable'`` when that column
        exists, else every gene. Loadings of the other genes are 0.
    use_highly_variable
        Deprecated alias (as in scanpy): ``True`` is ``mask_var='highly_variable'``, ``False`` is
        ``mask_var=None``. Giving both is an error.
    zero_center
        Centre the genes first (as ``sc.pp.pca``); ``False`` is the classic uncentred objective.
    solver
        Eigensolver: ``'auto'``, ``'dense'`` (form the ``n_genes x n_genes`` matrix), ``'arpack'`` or
        ``'lobpcg'`` (implicit, for very many genes).
    key_added
        Name of the result.
    copy
        Return a modified copy instead of writing to ``adata`` (which is then left untouched).

    Returns
    -------
    Returns ``None`` (or the changed copy when ``copy=True``) and sets

    - ``adata.obsm['X_' + key_added]``: ``(n_obs, n_comps)`` spatial PC scores :math:`H`;
    - ``adata.varm['spatial_PCs']`` (``adata.varm[key_added + '_PCs']`` for another ``key_added``):
      ``(n_vars, n_comps)`` loadings :math:`U`;
    - ``adata.uns[key_added]`` (replaced): ``objective``, ``variance``, ``spatial_loss`` (each ``(n_comps,)``
      and divided by ``n_obs``, with ``objective = variance - lambda_spatial * spatial_loss``),
      ``variance_ratio`` (share of the total sum of squares), ``n_negative`` (components with a negative
      objective), ``solver`` and ``params``.

    Warns
    -----
    UserWarning
        When some components have a negative objective (their spatial loss outweighs their variance at this
        ``lambda_spatial``); the warning names them. They are still the exact optimum and are returned.

    Raises
    ------
    TypeError, ValueError
        A wrong argument (the message names it), ``n_comps`` too large, NaN/inf in the data, a backed
        ``adata``. Nothing is computed and ``adata`` is unchanged.
    KeyError
        Missing graph, layer or ``mask_var`` column.

    Notes
    -----
    Finds orthonormal loadings :math:`U` (``n_genes x n_comps``) that maximise the projected variance minus
    ``lambda_spatial`` times the spatial loss of the projection :math:`H = X_c U`,

    .. math::

        \max_{U^T U = I} \mathrm{tr}(H^T H) - \lambda\, \mathrm{tr}(H^T Q H)
        = \mathrm{tr}\big(U^T X_c^T (I - \lambda Q) X_c U\big),

    where :math:`Q` is the precision matrix of the spatial prior and :math:`X_c` the (centred) data. This is the
    objective of the classic :class:`smoother.models.reduction.SpatialPCA`; by the Ky Fan theorem its exact
    maximiser is the top ``n_comps`` eigenvectors of the ``n_genes x n_genes`` matrix
    :math:`X_c^T (I - \lambda Q) X_c`, for every :math:`\lambda` — also when that matrix is indefinite and
    some of the top eigenvalues (the per-component objectives) are negative. No ``n_spots x n_spots`` matrix is
    formed and sparse data are never densified (centring is implicit).

    Unlike the classic ``SpatialPCA``, which works on the data as given (uncentred), this function centres the
    genes by default (``zero_center=True``, as ``sc.pp.pca``); ``zero_center=False`` reproduces the classic
    objective.

    **Dask input** (out of core): when ``X`` or ``layer`` is a :mod:`dask.array` (dense or scipy-sparse chunks,
    e.g. from :func:`anndata.experimental.read_elem_lazy`), one map-reduce pass over blocks of spots on the active
    dask scheduler accumulates :math:`X^T X`, :math:`X^T Q X` and the centring terms (the graph stays in memory;
    each task also reads the blocks its spots are coupled to), the eigen-solve runs in memory, and
    ``obsm['X_' + key_added]`` is a lazy dask array (computed or written chunk by chunk); loadings and ``uns`` are
    as above and equal the in-memory results. Chunks splitting the genes are rechunked (logged); sparse chunks are
    never densified. ``prior='sma'`` and ``solver='arpack'``/``'lobpcg'`` need in-memory data (an error says so);
    NaN/inf in dask data are found by the pass itself (``ValueError``, nothing written).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=30, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.spatial_pca(adata, n_comps=5, lambda_spatial=0.5)
    >>> adata.obsm["X_spatial_pca"].shape, adata.varm["spatial_PCs"].shape
    ((400, 5), (30, 5))
    """
    from .._core.spca import SOLVERS
    from .._core.spca import spatial_pca as _spca

    check_adata(adata, copy=copy)
    n_comps = check_int(n_comps, "n_comps", low=1, example="20")
    lam, prior, rho, standardize = _prior_args(lambda_spatial, prior, rho, standardize)
    zero_center = check_bool(zero_center, "zero_center")
    solver = check_choice(solver, "solver", SOLVERS)
    key_added = check_key(key_added, "key_added")
    mask_param, mask = _var_mask(adata, mask_var, use_highly_variable)
    n_genes = int(mask.sum()) if mask is not None else adata.n_vars
    limit = min(adata.n_obs, n_genes)
    if limit < 2:
        msg = (
            f"`n_comps`: spatial PCA needs at least 2 spots and 2 genes, but `adata` has {adata.n_obs} spot(s) and "
            f"{n_genes} gene(s) used."
        )
        raise ValueError(msg)
    if n_comps >= limit:
        msg = (
            f"Expected `n_comps` < min(n_obs, genes used) = min({adata.n_obs}, {n_genes}) = {limit}, "
            f"found {n_comps} (e.g. n_comps={limit - 1})."
        )
        raise ValueError(msg)
    W = get_graph(adata, connectivity_key)
    Xd = _dask_matrix(adata, layer, mask, prior=prior, solver=solver)
    X = None if Xd is not None else get_matrix(adata, layer, genes=mask)[0]

    start = log_start(f"computing spatial PCA ({n_comps} components, lambda_spatial={lam:g}, prior={prior!r})")
    Q = _precision(W, prior, rho, standardize)
    if Xd is not None:
        res = _spatial_pca_dask(Xd, Q, n_comps, lam, zero_center, layer)
        total = res.info["total_ss"]
        out_dtype = np.float32 if Xd.dtype == np.float32 else np.float64
    else:
        res = _spca(X, Q, n_comps, lam, zero_center=zero_center, solver=solver)
        total = _total_sum_of_squares(X, res.mean)
        out_dtype = np.float32 if X.dtype == np.float32 else np.float64
    n = adata.n_obs
    negative = np.asarray(res.info["negative"], dtype=int)
    if negative.size:
        which = ", ".join(str(i + 1) for i in negative)
        warnings.warn(
            f"Spatial PCs {which} (of {n_comps}) have a negative objective at lambda_spatial={lam:g}: their "
            "spatial loss outweighs their variance (objective per component in "
            f"`adata.uns[{key_added!r}]['objective']`). They are still the exact optimum and are returned; a "
            "smaller `lambda_spatial` or fewer `n_comps` keeps every component positive.",
            UserWarning,
            stacklevel=2,
        )

    loadings = np.zeros((adata.n_vars, n_comps), dtype=out_dtype)
    if mask is None:
        loadings[:] = res.loadings
    else:
        loadings[mask] = res.loadings
    params: dict[str, Any] = {
        "n_comps": n_comps,
        **_common_params(lam, prior, rho, standardize, connectivity_key, layer, key_added),
        "mask_var": mask_param,
        "use_highly_variable": isinstance(mask_param, str) and mask_param == "highly_variable",
        "zero_center": zero_center,
        "solver": solver,
    }
    out = save_result(
        adata,
        copy=copy,
        uns_key=key_added,
        params=params,
        uns={
            "objective": res.objective / n,
            "variance": res.variance / n,
            "spatial_loss": res.spatial_loss / n,
            "variance_ratio": res.variance / total if total > 0 else np.zeros(n_comps),
            "n_negative": int(negative.size),
            "solver": res.solver,
        },
        obsm={_obsm_key(key_added): res.scores if Xd is not None else res.scores.astype(out_dtype, copy=False)},
        varm={_varm_key(key_added): loadings},
    )
    log_finish(start)
    return out


@contextlib.contextmanager
def _quiet_trainer():
    """Silence lightning's and scvi-tools' info lines ("GPU available: ...") unless ``sm.settings.verbosity >= 2``."""
    from .._settings import settings

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    if settings.verbosity < 2:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old, strict=True):
            lg.setLevel(level)


def _accelerator(device: str) -> tuple[str, Any]:
    """Lightning's ``(accelerator, devices)`` for a checked torch device name."""
    if device == "cpu":
        return "cpu", "auto"
    if device.startswith("cuda"):
        return "gpu", [int(device.split(":")[1])] if ":" in device else "auto"
    return "mps", "auto"


def spatial_vae(
    adata,
    *,
    n_latent: int = 10,
    lambda_spatial: float = 0.1,
    prior: Literal["sma", "sar", "isar", "car", "icar"] = "icar",
    rho: float = 0.99,
    standardize: bool = True,
    connectivity_key: str = K.DEFAULT_CONN,
    layer: str | None = None,
    sp_loss_as_kl: bool = False,
    batch_size: int | None = None,
    max_epochs: int = 400,
    lr: float = 0.01,
    coords_key: str = K.SPATIAL_KEY,
    device: str = "cpu",
    random_state: int | None = 0,
    key_added: str = K.SPATIAL_VAE,
    copy: bool = False,
    **model_kwargs,
):
    r"""Spatially aware scVI embedding of counts (needs scvi-tools: ``pip install 'smoother[scvi]'``).

    Use it for a non-linear embedding of raw counts in which neighbouring spots are encouraged to lie close
    together; for log-normalized data and an exact, deterministic answer use :func:`spatial_pca`.

    Parameters
    ----------
    adata
        AnnData with raw counts (``X`` or ``layer``) and a spatial graph.
    n_latent
        Dimension of the embedding.
    lambda_spatial
        Weight of the spatial loss (``>= 0``).
    prior, rho, standardize, connectivity_key
        The spatial prior and its graph.
    layer
        Layer of counts instead of ``adata.X``.
    sp_loss_as_kl
        Replace the standard normal KL term by the KL to the spatial prior.
    batch_size
        ``None`` (full batch) or the approximate number of spots per spatial tile (``>= 2``).
    max_epochs, lr
        Training length (``>= 1``) and learning rate (``> 0``).
    coords_key
        Coordinates used for the tiles (``adata.obsm[coords_key]``; needed when ``batch_size`` is set).
    device
        Torch device to train on: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``; checked before training.
    random_state
        Seed of the weights, the tiles and the batch order (the global torch RNG is restored afterwards).
    key_added
        Name of the result.
    copy
        Return a modified copy instead of writing to ``adata`` (which is then left untouched).
    **model_kwargs
        Passed to :class:`smoother.models.reduction.SpatialVAE` (e.g. ``n_hidden``, ``gene_likelihood``).

    Returns
    -------
    Returns ``None`` (or the changed copy) and sets ``adata.obsm['X_' + key_added]`` ``(n_obs, n_latent)`` and
    ``adata.uns[key_added]`` (replaced) with ``params``, the per-epoch ``history`` (``total_loss``,
    ``recon_loss``, ``spatial_loss``) and ``time_per_epoch``.

    Raises
    ------
    TypeError, ValueError
        A wrong argument (the message names it; ``device='cuda'`` without CUDA included), negative values in the
        data, fewer than 2 spots, a backed ``adata``. Nothing is trained and ``adata`` is unchanged.
    KeyError
        Missing graph, layer or coordinates.
    ImportError
        scvi-tools is not installed.

    Notes
    -----
    Trains an scVI model on the counts with the spatial loss
    :math:`\frac{\lambda}{|B|}\mathrm{tr}(M^T Q_{BB} M)` of the latent means :math:`M` of each batch
    :math:`B` added to its objective, where :math:`Q` is the prior's precision on the graph
    ``adata.obsp[connectivity_key]``. ``batch_size=None`` trains full batch (as the published package);
    an integer trains on spatial tiles of about that many contiguous spots, each with the spatial loss on its
    own sub-graph.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=100, n_genes=20, noise="poisson", seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.spatial_vae(adata, n_latent=3, max_epochs=2, n_hidden=16)
    >>> adata.obsm["X_spatial_vae"].shape
    (100, 3)
    """
    check_adata(adata, copy=copy)
    n_latent = check_int(n_latent, "n_latent", low=1, example="10")
    lam, prior, rho, standardize = _prior_args(lambda_spatial, prior, rho, standardize)
    sp_loss_as_kl = check_bool(sp_loss_as_kl, "sp_loss_as_kl")
    batch_size = check_int(batch_size, "batch_size", low=2, allow_none=True, example="256")
    max_epochs = check_int(max_epochs, "max_epochs", low=1, example="400")
    lr = check_real(lr, "lr", low=0.0, low_open=True, example="0.01")
    coords_key = check_key(coords_key, "coords_key")
    device = check_device(device)
    random_state = check_random_state(random_state)
    key_added = check_key(key_added, "key_added")
    if sp_loss_as_kl and lam == 0:
        msg = "`sp_loss_as_kl=True` replaces the KL term by the spatial prior's and needs `lambda_spatial` > 0."
        raise ValueError(msg)
    if adata.n_obs < 2 or adata.n_vars < 1:
        msg = f"`adata`: a spatial VAE needs at least 2 spots and 1 gene, found {adata.n_obs} x {adata.n_vars}."
        raise ValueError(msg)
    W = get_graph(adata, connectivity_key)
    coords = get_coords(adata, coords_key) if batch_size is not None else None
    X, _ = get_matrix(adata, layer)
    vals = X.data if sp.issparse(X) else X
    if vals.size and (vals.min() < 0):
        msg = "SpatialVAE models counts, but the data have negative values; pass the raw counts (`layer=`)."
        raise ValueError(msg)
    try:
        import scvi  # noqa: F401
    except ImportError as e:
        msg = "`sm.tl.spatial_vae` needs scvi-tools: `pip install 'smoother[scvi]'`."
        raise ImportError(msg) from e
    import anndata as ad
    import torch

    from ..models.reduction import SpatialVAE

    start = log_start(f"training SpatialVAE ({n_latent} latent, lambda_spatial={lam:g}, batch_size={batch_size})")
    Q = _precision(W, prior, rho, standardize)
    if not sp.issparse(Q):  # SMA: the VAE's loss needs the entries of Q_BB, and SMA's precision is dense
        from .._core.precision import DENSE_WARN

        if adata.n_obs > DENSE_WARN:
            warnings.warn(
                f"prior='sma' on {adata.n_obs} spots needs the dense {adata.n_obs} x {adata.n_obs} precision; "
                "consider 'icar', 'car' or 'sar', whose precision is sparse.",
                UserWarning,
                stacklevel=2,
            )
        Q = Q @ np.eye(adata.n_obs)
    work = ad.AnnData(X=X.astype(np.float32) if X.dtype != np.float32 else X)
    if coords is not None:
        work.obsm[coords_key] = coords
    accelerator, devices = _accelerator(device)
    with torch.random.fork_rng(devices=[]), _quiet_trainer():
        if random_state is not None:
            torch.manual_seed(random_state)
        SpatialVAE.setup_anndata(work)
        model = SpatialVAE(
            work,
            spatial_loss=Q,
            lambda_spatial_loss=lam,
            sp_loss_as_kl=sp_loss_as_kl,
            n_latent=n_latent,
            **model_kwargs,
        )
        model.train(
            max_epochs=max_epochs,
            lr=lr,
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            coords_key=coords_key,
            random_state=random_state,
            enable_progress_bar=progress_enabled(),
        )
        Z = model.get_latent_representation()
    params = {
        "n_latent": n_latent,
        **_common_params(lam, prior, rho, standardize, connectivity_key, layer, key_added),
        "sp_loss_as_kl": sp_loss_as_kl,
        "batch_size": batch_size,
        "max_epochs": max_epochs,
        "lr": lr,
        "coords_key": coords_key,
        "device": device,
        "random_state": random_state,
    }
    logs = model.dr_logs
    out = save_result(
        adata,
        copy=copy,
        uns_key=key_added,
        params=params,
        uns={
            "history": {k: np.asarray(logs[k], dtype=np.float64) for k in ("total_loss", "recon_loss", "spatial_loss")},
            "time_per_epoch": float(logs["time_per_epoch"]),
        },
        obsm={_obsm_key(key_added): np.asarray(Z, dtype=np.float32)},
    )
    log_finish(start)
    return out
