"""Spatially aware dimension reduction on AnnData: exact spatial PCA and the spatial VAE entry point."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import (
    check_adata,
    check_bool,
    check_key,
    check_lambda,
    check_precision_args,
    get_graph,
    get_matrix,
    get_precision,
    log_added,
    write_params,
)
from .._settings import log_finish, log_start

_obsm_key = K.reduction_obsm_key
_varm_key = K.reduction_varm_key


def _hv_mask(adata, use_highly_variable: bool | None) -> np.ndarray | None:
    if use_highly_variable is None:
        use_highly_variable = "highly_variable" in adata.var.columns
    elif not isinstance(use_highly_variable, (bool, np.bool_)):
        msg = f"Expected `use_highly_variable` to be True, False or None, found `{use_highly_variable!r}`."
        raise TypeError(msg)
    if not use_highly_variable:
        return None
    if "highly_variable" not in adata.var.columns:
        msg = (
            "`use_highly_variable=True` but `adata.var['highly_variable']` is missing; run "
            "`sc.pp.highly_variable_genes(adata)` first or pass `use_highly_variable=False`."
        )
        raise KeyError(msg)
    mask = np.asarray(adata.var["highly_variable"], dtype=bool)
    if not mask.any():
        msg = "`adata.var['highly_variable']` selects no gene; pass `use_highly_variable=False`."
        raise ValueError(msg)
    return mask


def _total_sum_of_squares(X, mean: np.ndarray | None) -> float:
    if sp.issparse(X):
        ss = float(X.multiply(X).sum())
    else:
        ss = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    if mean is not None:
        ss -= X.shape[0] * float(mean @ mean)
    return ss


def _check_common(adata, lambda_spatial, prior, rho, standardize, copy, key_added) -> tuple[float, str, float]:
    """Validate the arguments shared by the reduction entry points; return ``(lambda, prior, rho)``."""
    check_adata(adata)
    lam = check_lambda(lambda_spatial)
    prior, rho = check_precision_args(prior, rho)
    check_bool(standardize, "standardize")
    check_bool(copy, "copy")
    check_key(key_added, "key_added")
    return lam, prior, rho


def _common_params(lam, prior, rho, standardize, connectivity_key, layer) -> dict[str, Any]:
    """The ``uns[key]['params']`` entries shared by the reduction entry points."""
    return {
        "lambda_spatial": lam,
        "prior": prior,
        "rho": rho,
        "standardize": bool(standardize),
        "connectivity_key": connectivity_key,
        "layer": layer,
    }


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
    use_highly_variable: bool | None = None,
    zero_center: bool = True,
    solver: Literal["auto", "dense", "arpack", "lobpcg"] = "auto",
    key_added: str = K.SPATIAL_PCA,
    copy: bool = False,
):
    r"""Spatially aware PCA, solved exactly.

    Finds orthonormal loadings :math:`U` (``n_genes x n_comps``) that maximise the projected variance minus
    ``lambda_spatial`` times the spatial loss of the projection :math:`H = X_c U`,

    .. math::

        \max_{U^T U = I} \mathrm{tr}(H^T H) - \lambda\, \mathrm{tr}(H^T Q H)
        = \mathrm{tr}\big(U^T X_c^T (I - \lambda Q) X_c U\big),

    where :math:`Q` is the precision matrix of the spatial prior on the graph ``adata.obsp[connectivity_key]``
    and :math:`X_c` the (centred) data. This is the objective of the classic
    :class:`smoother.models.reduction.SpatialPCA`; its exact maximiser is the top ``n_comps`` eigenvectors of
    the ``n_genes x n_genes`` matrix :math:`X_c^T (I - \lambda Q) X_c`, computed directly (see
    :func:`smoother._core.spca.spatial_pca`) instead of by gradient descent. ``lambda_spatial = 0`` gives
    ordinary PCA (``sc.pp.pca`` up to signs).

    Unlike the classic ``SpatialPCA``, which works on the data as given (uncentred), this function centres the
    genes by default (``zero_center=True``, as ``sc.pp.pca``); pass ``zero_center=False`` to reproduce the
    classic objective. Sparse data are centred implicitly, never densified.

    Parameters
    ----------
    adata
        AnnData with a spatial graph in ``adata.obsp[connectivity_key]``.
    n_comps
        Number of components (smaller than the number of genes used).
    lambda_spatial
        Strength of the spatial penalty :math:`\lambda \ge 0` (the classic ``lambda_spatial_loss``; both terms
        of the classic loss are divided by the same ``n_comps * n_obs``, so the value carries over).
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
    use_highly_variable
        Use only genes with ``adata.var['highly_variable']``; ``None`` uses them when that column exists
        (as ``sc.pp.pca``). Loadings of the other genes are 0.
    zero_center
        Centre the genes first (as ``sc.pp.pca``); ``False`` is the classic uncentred objective.
    solver
        Eigensolver: ``'auto'``, ``'dense'`` (form the ``n_genes x n_genes`` matrix), ``'arpack'`` or
        ``'lobpcg'`` (implicit, for very many genes).
    key_added
        Name of the result.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns ``None`` (or the changed copy when ``copy=True``) and sets

    - ``adata.obsm['X_' + key_added]``: ``(n_obs, n_comps)`` spatial PC scores :math:`H`;
    - ``adata.varm['spatial_PCs']`` (``adata.varm[key_added + '_PCs']`` for another ``key_added``):
      ``(n_vars, n_comps)`` loadings :math:`U`;
    - ``adata.uns[key_added]``: ``objective``, ``variance``, ``spatial_loss`` (each ``(n_comps,)`` and divided
      by ``n_obs``, with ``objective = variance - lambda_spatial * spatial_loss``), ``variance_ratio`` (share of
      the total sum of squares), ``solver`` and ``params``.

    Raises
    ------
    ValueError
        ``n_comps`` not below the number of genes; NaN in the data; ``lambda_spatial`` so large that fewer than
        ``n_comps`` directions have a positive objective (the message names the largest ``lambda_spatial``
        that works). ``adata`` is unchanged.
    KeyError
        Missing graph, layer or ``highly_variable`` column.
    """
    from .._core.spca import spatial_pca as _spca

    lam, prior, rho = _check_common(adata, lambda_spatial, prior, rho, standardize, copy, key_added)
    check_bool(zero_center, "zero_center")
    if not isinstance(n_comps, (int, np.integer)) or isinstance(n_comps, bool) or n_comps < 1:
        msg = f"Expected `n_comps` to be a positive integer, found `{n_comps!r}`."
        raise ValueError(msg)
    mask = _hv_mask(adata, use_highly_variable)
    n_genes = int(mask.sum()) if mask is not None else adata.n_vars
    if n_comps >= n_genes:
        msg = (
            f"`n_comps` ({n_comps}) must be smaller than the number of genes used ({n_genes}); "
            f"use n_comps <= {n_genes - 1}."
        )
        raise ValueError(msg)
    W = get_graph(adata, connectivity_key)
    X, _ = get_matrix(adata, layer, genes=mask)

    start = log_start(f"computing spatial PCA ({n_comps} components, lambda_spatial={lam:g}, prior={prior!r})")
    Q = get_precision(adata, prior=prior, rho=rho, standardize=standardize, W=W)
    res = _spca(X, Q, int(n_comps), lam, zero_center=bool(zero_center), solver=solver)
    n = adata.n_obs
    total = _total_sum_of_squares(X, res.mean)

    if copy:
        adata = adata.copy()
    out_dtype = np.float32 if X.dtype == np.float32 else np.float64
    obsm_key, varm_key = _obsm_key(key_added), _varm_key(key_added)
    adata.obsm[obsm_key] = res.scores.astype(out_dtype, copy=False)
    loadings = np.zeros((adata.n_vars, n_comps), dtype=out_dtype)
    if mask is None:
        loadings[:] = res.loadings
    else:
        loadings[mask] = res.loadings
    adata.varm[varm_key] = loadings
    params: dict[str, Any] = {
        "n_comps": int(n_comps),
        **_common_params(lam, prior, rho, standardize, connectivity_key, layer),
        "use_highly_variable": mask is not None,
        "zero_center": bool(zero_center),
        "solver": solver,
    }
    write_params(
        adata,
        key_added,
        params,
        objective=res.objective / n,
        variance=res.variance / n,
        spatial_loss=res.spatial_loss / n,
        variance_ratio=res.variance / total if total > 0 else np.zeros(n_comps),
        solver=res.solver,
    )
    log_added(f"adata.obsm[{obsm_key!r}]", f"adata.varm[{varm_key!r}]", f"adata.uns[{key_added!r}]")
    log_finish(start)
    return adata if copy else None


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
    random_state: int | None = 0,
    key_added: str = K.SPATIAL_VAE,
    copy: bool = False,
    **model_kwargs,
):
    r"""Spatially aware scVI embedding (:class:`smoother.models.reduction.SpatialVAE`; needs scvi-tools).

    Trains an scVI model on the counts with the spatial loss
    :math:`\frac{\lambda}{|B|}\mathrm{tr}(M^T Q_{BB} M)` of the latent means :math:`M` of each batch
    :math:`B` added to its objective, where :math:`Q` is the prior's precision on the graph
    ``adata.obsp[connectivity_key]``. ``batch_size=None`` trains full batch (as the published package);
    an integer trains on spatial tiles of about that many contiguous spots (coordinates in
    ``adata.obsm[coords_key]``), each with the spatial loss on its own sub-graph.

    Parameters
    ----------
    adata
        AnnData with raw counts (``X`` or ``layer``) and a spatial graph.
    n_latent
        Dimension of the embedding.
    lambda_spatial
        Weight of the spatial loss.
    prior, rho, standardize, connectivity_key
        The spatial prior and its graph.
    layer
        Layer of counts instead of ``adata.X``.
    sp_loss_as_kl
        Replace the standard normal KL term by the KL to the spatial prior.
    batch_size
        ``None`` (full batch) or the approximate number of spots per spatial tile.
    max_epochs, lr
        Training length and learning rate.
    coords_key
        Coordinates used for the tiles.
    random_state
        Seed of the weights, the tiles and the batch order (the global torch RNG is restored afterwards).
    key_added
        Name of the result.
    copy
        Return a modified copy instead of writing to ``adata``.
    **model_kwargs
        Passed to ``SpatialVAE`` (e.g. ``n_hidden``, ``gene_likelihood``).

    Returns
    -------
    Returns ``None`` (or the changed copy) and sets ``adata.obsm['X_' + key_added]`` ``(n_obs, n_latent)`` and
    ``adata.uns[key_added]`` with ``params`` and the per-epoch ``history`` (``total_loss``, ``recon_loss``,
    ``spatial_loss``) and ``time_per_epoch``.
    """
    lam, prior, rho = _check_common(adata, lambda_spatial, prior, rho, standardize, copy, key_added)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2
    ):
        msg = f"Expected `batch_size` to be None or an integer >= 2, found `{batch_size!r}`."
        raise ValueError(msg)
    if batch_size is not None and coords_key not in adata.obsm:
        msg = f"`batch_size` tiles need coordinates in `adata.obsm[{coords_key!r}]`; or pass batch_size=None."
        raise KeyError(msg)
    W = get_graph(adata, connectivity_key)
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
    Q = get_precision(adata, prior=prior, rho=rho, standardize=standardize, W=W)
    work = ad.AnnData(X=X.astype(np.float32) if X.dtype != np.float32 else X)
    if coords_key in adata.obsm:
        work.obsm[coords_key] = np.asarray(adata.obsm[coords_key])
    with torch.random.fork_rng(devices=[]):
        if random_state is not None:
            torch.manual_seed(int(random_state))
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
            batch_size=batch_size,
            coords_key=coords_key,
            random_state=random_state,
            enable_progress_bar=False,
        )
        Z = model.get_latent_representation()
    if copy:
        adata = adata.copy()
    obsm_key = _obsm_key(key_added)
    adata.obsm[obsm_key] = np.asarray(Z, dtype=np.float32)
    params = {
        "n_latent": int(n_latent),
        **_common_params(lam, prior, rho, standardize, connectivity_key, layer),
        "sp_loss_as_kl": bool(sp_loss_as_kl),
        "batch_size": batch_size,
        "max_epochs": int(max_epochs),
        "lr": float(lr),
        "random_state": random_state,
    }
    logs = model.dr_logs
    write_params(
        adata,
        key_added,
        params,
        history={k: np.asarray(logs[k], dtype=np.float64) for k in ("total_loss", "recon_loss", "spatial_loss")},
        time_per_epoch=float(logs["time_per_epoch"]),
    )
    log_added(f"adata.obsm[{obsm_key!r}]", f"adata.uns[{key_added!r}]")
    log_finish(start)
    return adata if copy else None
