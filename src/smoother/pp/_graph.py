"""Spatial graphs on AnnData (squidpy's key layout) and their rescaling by expression, labels or histology."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import check_adata, check_bool, check_key, get_coords, get_graph, get_matrix, log_added, to_writable
from .._core.graph import fill_isolated, knn_graph, radius_graph, row_normalize
from .._settings import log_finish, log_start

__all__ = ["scale_by_expr", "scale_by_histology", "scale_by_identity", "spatial_graph"]


def spatial_graph(
    adata,
    *,
    method: Literal["knn", "radius"] = "knn",
    n_neighs: int = 6,
    mutual: bool = True,
    radius: float | None = None,
    bandwidth: float | None = None,
    spatial_key: str = K.SPATIAL_KEY,
    key_added: str = "spatial",
    copy: bool = False,
):
    r"""Build the spatial graph of the spots, stored like :func:`squidpy.gr.spatial_neighbors` stores it.

    Parameters
    ----------
    adata
        AnnData with spot coordinates in ``adata.obsm[spatial_key]``.
    method
        ``'knn'``: each spot's ``n_neighs`` nearest spots; ``'radius'``: all spots within ``radius``.
    n_neighs
        Neighbours per spot for ``'knn'`` (6 suits Visium's hexagonal lattice, 4 a square grid).
    mutual
        ``'knn'`` only. ``True`` keeps an edge when each spot is among the other's nearest (the classic
        smoother graph); ``False`` keeps it when either is (the symmetrized kNN graph). Both are symmetric.
    radius
        ``'radius'`` only: distance cutoff in the unit of the coordinates (required).
    bandwidth
        ``'radius'`` only: Gaussian edge weights :math:`\exp(-d^2 / 2 \sigma^2)`; ``None`` gives weight 1.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    key_added
        Prefix of the keys written (squidpy's convention).
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``adata.obsp['{key_added}_connectivities']`` — CSR ``(n_obs, n_obs)`` edge weights (1 for kNN); a spot
      without neighbours gets a self edge of weight 1, so no row is empty;
    - ``adata.obsp['{key_added}_distances']`` — CSR ``(n_obs, n_obs)`` euclidean edge lengths;
    - ``adata.uns['{key_added}_neighbors']`` — ``{'connectivities_key', 'distances_key', 'params'}``.
    """
    check_adata(adata)
    if method not in ("knn", "radius"):
        msg = f"Expected `method` to be 'knn' or 'radius', found {method!r}."
        raise ValueError(msg)
    check_key(key_added, "key_added")
    check_bool(mutual, "mutual")
    check_bool(copy, "copy")
    coords = get_coords(adata, spatial_key)
    if method == "radius" and radius is None:
        msg = "`method='radius'` needs `radius=` (a distance in the unit of the coordinates)."
        raise ValueError(msg)
    start = log_start(f"building a {method} spatial graph of {adata.n_obs} spots")
    if method == "knn":
        W, D = knn_graph(coords, n_neighs, symmetrize="mutual" if mutual else "union")
        params = {"method": "knn", "n_neighbors": int(n_neighs), "mutual": bool(mutual), "spatial_key": spatial_key}
    else:
        W, D = radius_graph(coords, radius, bandwidth=bandwidth)
        params = {
            "method": "radius",
            "radius": float(radius),
            "bandwidth": bandwidth,
            "spatial_key": spatial_key,
        }
    adata = adata.copy() if copy else adata
    ck, dk, nk = K.conn_key(key_added), K.dist_key(key_added), K.neighbors_key(key_added)
    adata.obsp[ck] = W
    adata.obsp[dk] = D
    adata.uns[nk] = {"connectivities_key": ck, "distances_key": dk, "params": to_writable(params)}
    log_added(f"adata.obsp[{ck!r}]", f"adata.obsp[{dk!r}]", f"adata.uns[{nk!r}]")
    log_finish(start)
    return adata if copy else None


# ----------------------------------------------------------------------------------------------------------------
# Rescaling edges by a similarity
# ----------------------------------------------------------------------------------------------------------------
def _edge_similarity(F: np.ndarray, rows: np.ndarray, cols: np.ndarray, metric: str, bandwidth: float | None):
    """Similarity of the feature rows ``F[rows]`` and ``F[cols]`` for every edge (no n x n matrix)."""
    if metric == "cosine":
        norms = np.linalg.norm(F, axis=1)
        norms[norms == 0] = 1.0
        s = np.einsum("ij,ij->i", F[rows], F[cols]) / (norms[rows] * norms[cols])
        return np.clip(s, 0.0, 1.0), None
    d = np.linalg.norm(F[rows] - F[cols], axis=1)
    if bandwidth is None:  # half the root-mean-square spread of the features around their mean
        spread = float(np.sqrt(((F - F.mean(axis=0)) ** 2).sum(axis=1).mean()))
        bandwidth = 0.5 * spread if spread > 0 else 1.0
    return np.exp(-(d**2) / (2.0 * bandwidth**2)), bandwidth


def _reduce(F: np.ndarray, n_pcs: int | None, seed: int = 0) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if n_pcs is None or n_pcs >= min(F.shape):
        return F - F.mean(axis=0) if n_pcs is not None else F
    from sklearn.decomposition import PCA

    return PCA(n_components=int(n_pcs), random_state=seed).fit_transform(F)


def _finish_scaling(
    adata,
    W: sp.csr_matrix,
    sim: np.ndarray,
    *,
    connectivity_key: str,
    key_added: str,
    row_scale: bool,
    copy: bool,
    params: dict,
    start,
):
    """Shared tail of the ``scale_by_*`` functions: rescale the edges of ``W`` by ``sim`` and write the result.

    ``params`` (the function's own parameters) gets ``connectivity_key`` and ``row_scale`` appended. Returns the
    copy with ``copy=True``, else ``None``.
    """
    adata = adata.copy() if copy else adata
    params = {**params, "connectivity_key": connectivity_key, "row_scale": row_scale}
    C = W.tocoo()
    keep = C.row != C.col  # self edges of isolated spots stay as they are
    data = C.data.copy()
    data[keep] = data[keep] * sim[keep]
    Ws = sp.csr_matrix((data, (C.row, C.col)), shape=W.shape)
    Ws.eliminate_zeros()
    Ws = fill_isolated(Ws)
    if row_scale:
        Ws = row_normalize(Ws)
    Ws.sort_indices()
    ck = K.conn_key(key_added)
    adata.obsp[ck] = Ws
    nk = K.neighbors_key(key_added)
    adata.uns[nk] = {"connectivities_key": ck, "params": to_writable(params)}
    log_added(f"adata.obsp[{ck!r}]", f"adata.uns[{nk!r}]")
    log_finish(start)
    return adata if copy else None


def _check_scale_args(adata, connectivity_key, key_added, row_scale, copy, metric: str | None = None):
    check_adata(adata)
    check_key(key_added, "key_added")
    check_bool(row_scale, "row_scale")
    check_bool(copy, "copy")
    W = get_graph(adata, connectivity_key)
    if metric is not None and metric not in ("cosine", "euclidean"):
        msg = f"Expected `metric` to be 'cosine' or 'euclidean', found {metric!r}."
        raise ValueError(msg)
    return W


#: Up to this many entries (spots x genes) a sparse X is densified for an exact centred PCA.
_DENSE_PCA_MAX_ENTRIES = 50_000_000


def scale_by_expr(
    adata,
    *,
    layer: str | None = None,
    metric: Literal["cosine", "euclidean"] = "cosine",
    n_pcs: int | None = 10,
    bandwidth: float | None = None,
    connectivity_key: str = K.DEFAULT_CONN,
    key_added: str = "smoother",
    row_scale: bool = False,
    copy: bool = False,
):
    r"""Rescale every edge of the spatial graph by the expression similarity of its two spots.

    Edges between transcriptionally different spots (e.g. across a tissue boundary) are weakened, so smoothing
    does not blur the boundary. The new weight of edge :math:`(i, j)` is :math:`w_{ij} s_{ij}` with

    - ``metric='cosine'``: :math:`s_{ij} = \max(0, \cos(z_i, z_j))`;
    - ``metric='euclidean'``: :math:`s_{ij} = \exp(-\lVert z_i - z_j\rVert^2 / 2\sigma^2)`, :math:`\sigma` =
      ``bandwidth`` or half the root-mean-square distance of the :math:`z_i` to their mean,

    where :math:`z_i` is spot ``i``'s expression projected on its first ``n_pcs`` principal components (``None``:
    the expression itself). Only the existing edges are evaluated (no ``n x n`` matrix).

    Parameters
    ----------
    adata
        AnnData with a spatial graph.
    layer
        Expression to use (``None``: ``adata.X``); normalized/log expression works best.
    metric
        ``'cosine'`` or ``'euclidean'``.
    n_pcs
        Number of principal components (``None``: no reduction).
    bandwidth
        Kernel width for ``'euclidean'``.
    connectivity_key
        Input graph in ``adata.obsp`` (left unchanged unless it equals the output key).
    key_added
        Output prefix: writes ``adata.obsp['{key_added}_connectivities']``.
    row_scale
        Divide every row of the result by its sum.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` (CSR ``(n_obs, n_obs)``; a spot
    left without edges gets a self edge of weight 1) and ``adata.uns['{key_added}_neighbors']['params']``.
    """
    W = _check_scale_args(adata, connectivity_key, key_added, row_scale, copy, metric)
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, (int, np.integer)) or n_pcs < 1):
        msg = f"Expected `n_pcs` to be a positive integer or None, found {n_pcs!r}."
        raise ValueError(msg)
    X, _ = get_matrix(adata, layer)
    start = log_start("scaling the spatial graph by expression similarity")
    # densify a sparse X only when PCA is skipped (n_pcs=None, the user's choice) or when it is small;
    # large sparse X (e.g. 10^6 spots x 2,000 genes) goes through TruncatedSVD and is never densified whole
    small = X.shape[0] * X.shape[1] <= _DENSE_PCA_MAX_ENTRIES
    Xd = X.toarray() if sp.issparse(X) and (n_pcs is None or small) else X
    if sp.issparse(Xd):
        from sklearn.decomposition import TruncatedSVD

        Z = TruncatedSVD(n_components=int(n_pcs), random_state=0).fit_transform(Xd)
    else:
        Z = _reduce(np.asarray(Xd, dtype=np.float64), n_pcs)
    C = W.tocoo()
    sim, bw = _edge_similarity(Z, C.row, C.col, metric, bandwidth)
    params = {
        "source": "expression",
        "layer": layer,
        "metric": metric,
        "n_pcs": n_pcs,
        "bandwidth": bw,
    }
    return _finish_scaling(
        adata,
        W,
        sim,
        connectivity_key=connectivity_key,
        key_added=key_added,
        row_scale=row_scale,
        copy=copy,
        params=params,
        start=start,
    )


def scale_by_identity(
    adata,
    groupby: str,
    *,
    boundary_connectivity: float = 0.0,
    connectivity_key: str = K.DEFAULT_CONN,
    key_added: str = "smoother",
    row_scale: bool = False,
    copy: bool = False,
):
    """Rescale edges between spots of different labels (e.g. annotated regions) to ``boundary_connectivity``.

    Parameters
    ----------
    adata
        AnnData with a spatial graph.
    groupby
        Column of ``adata.obs`` with the spot labels.
    boundary_connectivity
        Weight factor of edges joining different labels, in ``[0, 1]`` (0 cuts them).
    connectivity_key, key_added, row_scale, copy
        As in :func:`scale_by_expr`.

    Returns
    -------
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` and
    ``adata.uns['{key_added}_neighbors']['params']``.
    """
    W = _check_scale_args(adata, connectivity_key, key_added, row_scale, copy)
    if not isinstance(groupby, str) or groupby not in adata.obs:
        msg = f"Column {groupby!r} not found in `adata.obs` (available: {list(adata.obs.columns)})."
        raise KeyError(msg)
    b = float(boundary_connectivity)
    if not 0.0 <= b <= 1.0:
        msg = f"Expected `boundary_connectivity` in [0, 1], found {boundary_connectivity!r}."
        raise ValueError(msg)
    labels = adata.obs[groupby]
    if labels.isna().any():
        msg = f"`adata.obs[{groupby!r}]` has missing labels; fill them first."
        raise ValueError(msg)
    codes = np.unique(labels.astype(str).to_numpy(), return_inverse=True)[1]
    start = log_start(f"scaling the spatial graph by `adata.obs[{groupby!r}]`")
    C = W.tocoo()
    sim = np.where(codes[C.row] == codes[C.col], 1.0, b)
    params = {
        "source": "identity",
        "groupby": groupby,
        "boundary_connectivity": b,
    }
    return _finish_scaling(
        adata,
        W,
        sim,
        connectivity_key=connectivity_key,
        key_added=key_added,
        row_scale=row_scale,
        copy=copy,
        params=params,
        start=start,
    )


def _histology_features(image: np.ndarray, xy_img: np.ndarray, radius_px: float) -> np.ndarray:
    """Mean and standard deviation of every channel within the square patch of half-width ``radius_px``.

    Uses summed-area tables of the image and of its square, so the cost does not depend on the patch size.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    h, w, c = img.shape
    r = max(int(round(radius_px)), 0)
    col = np.clip(np.round(xy_img[:, 0]).astype(np.int64), 0, w - 1)  # x -> column
    row = np.clip(np.round(xy_img[:, 1]).astype(np.int64), 0, h - 1)  # y -> row
    r0, r1 = np.clip(row - r, 0, h), np.clip(row + r + 1, 0, h)
    c0, c1 = np.clip(col - r, 0, w), np.clip(col + r + 1, 0, w)
    area = ((r1 - r0) * (c1 - c0)).astype(np.float64)[:, None]
    feats = []
    for arr in (img, img * img):
        S = np.zeros((h + 1, w + 1, c))
        S[1:, 1:] = arr.cumsum(0).cumsum(1)
        feats.append((S[r1, c1] - S[r0, c1] - S[r1, c0] + S[r0, c0]) / area)
    mean, sq = feats
    sd = np.sqrt(np.clip(sq - mean**2, 0, None))
    return np.hstack([mean, sd])


def scale_by_histology(
    adata,
    *,
    library_id: str | None = None,
    img_key: str = "hires",
    spatial_key: str = K.SPATIAL_KEY,
    metric: Literal["cosine", "euclidean"] = "euclidean",
    n_pcs: int | None = None,
    bandwidth: float | None = None,
    connectivity_key: str = K.DEFAULT_CONN,
    key_added: str = "smoother",
    row_scale: bool = False,
    copy: bool = False,
):
    r"""Rescale every edge by the histology similarity of its two spots (Visium H&E image).

    Reads the image ``adata.uns['spatial'][library_id]['images'][img_key]`` (``H x W`` or ``H x W x C``) and the
    scale factors ``adata.uns['spatial'][library_id]['scalefactors']`` (``spot_diameter_fullres`` and
    ``tissue_{img_key}_scalef``) as scanpy/squidpy store Visium data; ``adata.obsm[spatial_key]`` holds
    full-resolution pixel coordinates ``(x, y)``. Each spot is described by the mean and standard deviation of
    every channel inside its footprint (a square of half-width the spot radius), standardized across spots,
    and edges are rescaled as in :func:`scale_by_expr` (default: Gaussian of the euclidean feature distance).

    Parameters
    ----------
    adata
        AnnData with a spatial graph and a Visium image.
    library_id
        Key in ``adata.uns['spatial']``; ``None`` works when there is exactly one.
    img_key
        ``'hires'`` or ``'lowres'``.
    spatial_key, metric, n_pcs, bandwidth, connectivity_key, key_added, row_scale, copy
        As in :func:`scale_by_expr`.

    Returns
    -------
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` and
    ``adata.uns['{key_added}_neighbors']['params']``.
    """
    W = _check_scale_args(adata, connectivity_key, key_added, row_scale, copy, metric)
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        msg = (
            "No histology in `adata.uns['spatial']`; load Visium data with `sc.read_visium` / "
            "`sq.read.visium`, which store `uns['spatial'][library_id]['images']` and `['scalefactors']`."
        )
        raise KeyError(msg)
    if library_id is None:
        if len(spatial) != 1:
            msg = f"`adata.uns['spatial']` holds several libraries {list(spatial)}; pass `library_id=`."
            raise ValueError(msg)
        library_id = next(iter(spatial))
    if library_id not in spatial:
        msg = f"Library {library_id!r} not found in `adata.uns['spatial']` (available: {list(spatial)})."
        raise KeyError(msg)
    lib = spatial[library_id]
    images, sf = lib.get("images", {}), lib.get("scalefactors", {})
    if img_key not in images:
        msg = f"Image {img_key!r} not found in `adata.uns['spatial'][{library_id!r}]['images']` ({list(images)})."
        raise KeyError(msg)
    sf_key = f"tissue_{img_key}_scalef"
    for k in ("spot_diameter_fullres", sf_key):
        if k not in sf:
            msg = f"Scale factor {k!r} not found in `adata.uns['spatial'][{library_id!r}]['scalefactors']`."
            raise KeyError(msg)
    coords = get_coords(adata, spatial_key)
    start = log_start("scaling the spatial graph by histology similarity")
    scale = float(sf[sf_key])
    F = _histology_features(np.asarray(images[img_key]), coords[:, :2] * scale, sf["spot_diameter_fullres"] / 2 * scale)
    sd = F.std(axis=0)
    F = (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    Z = _reduce(F, n_pcs)
    C = W.tocoo()
    sim, bw = _edge_similarity(Z, C.row, C.col, metric, bandwidth)
    params = {
        "source": "histology",
        "library_id": library_id,
        "img_key": img_key,
        "metric": metric,
        "n_pcs": n_pcs,
        "bandwidth": bw,
    }
    return _finish_scaling(
        adata,
        W,
        sim,
        connectivity_key=connectivity_key,
        key_added=key_added,
        row_scale=row_scale,
        copy=copy,
        params=params,
        start=start,
    )
