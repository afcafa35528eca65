"""Spatial graphs on AnnData (squidpy's key layout) and their rescaling by expression, labels or histology.

Every function here keeps the package's contract: all arguments and data are checked before any work, an error
leaves ``adata`` exactly as it was, and the results are written at the end by one writer
(:func:`smoother._anndata.save_result`), which replaces ``adata.uns['{key_added}_neighbors']`` entirely.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp

from .. import _constants as K
from .._anndata import check_adata, get_coords, get_graph, get_matrix, save_result
from .._core.graph import fill_isolated, knn_graph, radius_graph, row_normalize
from .._settings import log_finish, log_start, logger
from .._validation import check_bool, check_choice, check_int, check_key, check_real

__all__ = ["scale_by_expr", "scale_by_histology", "scale_by_identity", "spatial_graph"]

_METRICS = ("cosine", "euclidean")


def _check_positions(coords: np.ndarray, obs_names, spatial_key: str) -> None:
    """All spots at one point: ``ValueError``. Some spots sharing coordinates: a warning with their count."""
    n = coords.shape[0]
    if n < 2:
        return
    if float(np.ptp(coords, axis=0).max()) == 0.0:
        msg = (
            f"All {n} spots of `adata.obsm[{spatial_key!r}]` sit at the same point {coords[0].tolist()}; a spatial "
            "graph needs the spot positions. Check `spatial_key` (it should hold the (n_obs, 2) spot coordinates)."
        )
        raise ValueError(msg)
    order = np.lexsort(coords.T[::-1])  # rows sorted lexicographically: equal rows are adjacent
    same = (np.diff(coords[order], axis=0) == 0).all(axis=1)
    shared = np.zeros(n, dtype=bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    n_shared = int(shared.sum())
    if n_shared:
        example = [str(x) for x in np.asarray(obs_names)[shared][:3]]
        warnings.warn(
            f"{n_shared} spots share their coordinates with another spot (e.g. {example}); they are joined as "
            "neighbours at distance 0 (an explicit 0 in the distances, weight 1). Drop or merge duplicated spots "
            "if they are not intended.",
            UserWarning,
            stacklevel=3,
        )


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

    The first step of every spatial analysis in smoother: the graph says which spots are neighbours, and every
    ``sm.tl`` function turns it into the spatial prior. Only the coordinates are used (no expression). A graph
    made by ``squidpy.gr.spatial_neighbors`` works as well; this function spares the squidpy dependency.

    Parameters
    ----------
    adata
        AnnData with spot coordinates in ``adata.obsm[spatial_key]``.
    method
        ``'knn'``: each spot's ``n_neighs`` nearest spots; ``'radius'``: all spots within ``radius``.
    n_neighs
        Neighbours per spot for ``'knn'`` (6 suits Visium's hexagonal lattice, 4 a square grid); at most
        ``n_obs - 1``.
    mutual
        ``'knn'`` only. ``True`` keeps an edge when each spot is among the other's nearest (the classic
        smoother graph); ``False`` keeps it when either is (the symmetrized kNN graph). Both are symmetric.
    radius
        ``'radius'`` only: distance cutoff in the unit of the coordinates (required, ``> 0``).
    bandwidth
        ``'radius'`` only: Gaussian edge weights :math:`\exp(-d^2 / 2 \sigma^2)` with :math:`\sigma` =
        ``bandwidth > 0``; ``None`` gives weight 1.
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
    - ``adata.obsp['{key_added}_distances']`` — CSR ``(n_obs, n_obs)`` euclidean edge lengths, on the same edges;
    - ``adata.uns['{key_added}_neighbors']`` — ``{'connectivities_key', 'distances_key', 'params'}``, replaced
      as a whole.

    Raises
    ------
    KeyError
        ``adata.obsm[spatial_key]`` is missing.
    ValueError
        No spot, fewer than ``n_neighs + 1`` spots for ``'knn'``, NaN/inf coordinates, or all spots at one point.

    Notes
    -----
    Spots at identical coordinates (e.g. duplicated rows) trigger a warning with their count; they are
    neighbours of each other at distance 0 (an explicit zero in the distances) with weight 1 (``'knn'``: when
    among the ``n_neighs`` nearest). Observation names play no role: the graph follows the order of the rows, so
    non-unique ``obs_names`` give the same graph.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(100, layout="square", n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata, n_neighs=4)
    >>> adata.obsp["spatial_connectivities"].shape, adata.uns["spatial_neighbors"]["params"]["n_neighs"]
    ((100, 100), 4)
    """
    check_adata(adata, copy=copy)
    method = check_choice(method, "method", ("knn", "radius"))
    n_neighs = check_int(n_neighs, "n_neighs", low=1, example="6")
    check_bool(mutual, "mutual")
    radius = check_real(radius, "radius", low=0.0, low_open=True, allow_none=True, example="1.5")
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True, allow_none=True, example="1.0")
    check_key(spatial_key, "spatial_key")
    check_key(key_added, "key_added")
    if method == "radius" and radius is None:
        msg = "`method='radius'` needs `radius=` (a distance in the unit of the coordinates, e.g. radius=1.5)."
        raise ValueError(msg)
    coords = get_coords(adata, spatial_key)
    n = coords.shape[0]
    if method == "knn" and n_neighs > n - 1:
        if n < 2:
            msg = f"A k-nearest-neighbour graph needs at least 2 spots, found {n}."
        else:
            msg = (
                f"Expected `n_neighs` <= n_obs - 1 = {n - 1} (each spot has {n - 1} other spot(s)), "
                f"found {n_neighs} (e.g. n_neighs={min(6, n - 1)})."
            )
        raise ValueError(msg)
    _check_positions(coords, adata.obs_names, spatial_key)

    start = log_start(f"building a {method} spatial graph of {n} spots")
    if method == "knn":
        W, D = knn_graph(coords, n_neighs, symmetrize="mutual" if mutual else "union")
    else:
        W, D = radius_graph(coords, radius, bandwidth=bandwidth)
    ck, dk, nk = K.conn_key(key_added), K.dist_key(key_added), K.neighbors_key(key_added)
    params = {
        "method": method,
        "n_neighs": n_neighs if method == "knn" else None,
        "mutual": bool(mutual) if method == "knn" else None,
        "radius": radius if method == "radius" else None,
        "bandwidth": bandwidth if method == "radius" else None,
        "spatial_key": spatial_key,
        "key_added": key_added,
    }
    out = save_result(
        adata,
        copy=copy,
        uns_key=nk,
        params=params,
        uns={"connectivities_key": ck, "distances_key": dk},
        obsp={ck: W, dk: D},
    )
    log_finish(start)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rescaling edges by a similarity
# ----------------------------------------------------------------------------------------------------------------
_EDGE_CHUNK = 1 << 17  # edges per block: bounds the (edges x features) temporaries, never a loop over spots
#: A feature vector counts as zero when its norm is at most this times (largest |input value|) * sqrt(n_features):
#: far above the round-off of centring and projecting, far below any real difference between spots.
_ZERO_RTOL = 1e-12


def _zero_tol(max_abs: float, n_features: int) -> float:
    return _ZERO_RTOL * max_abs * np.sqrt(max(n_features, 1))


def _edge_dots(Z, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    if sp.issparse(Z):
        return np.asarray(Z[r].multiply(Z[c]).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", Z[r], Z[c])


def _edge_sqdist(Z, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    diff = Z[r] - Z[c]
    if sp.issparse(diff):
        return np.asarray(diff.multiply(diff).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", diff, diff)


def _row_sqnorms(Z) -> np.ndarray:
    if sp.issparse(Z):
        return np.asarray(Z.multiply(Z).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", Z, Z)


def _edge_similarity(
    Z, rows: np.ndarray, cols: np.ndarray, metric: str, bandwidth: float | None, zero_tol: float
) -> tuple[np.ndarray, float | None, np.ndarray]:
    """Similarity of the feature rows ``Z[rows]`` and ``Z[cols]`` for every edge (no n x n matrix).

    ``Z`` is a dense array or a CSR matrix (spots x features). Returns the similarities, the bandwidth used
    (``'euclidean'``) and the boolean mask of spots whose feature vector is zero (norm at most
    ``zero_tol``): cosine similarity is undefined for them and is set to 1 on their edges.
    """
    m = rows.shape[0]
    out = np.empty(m, dtype=np.float64)
    n = Z.shape[0]
    if metric == "cosine":
        norms = np.sqrt(_row_sqnorms(Z))
        zero = norms <= zero_tol
        safe = np.where(zero, 1.0, norms)
        for s0 in range(0, m, _EDGE_CHUNK):
            r, c = rows[s0 : s0 + _EDGE_CHUNK], cols[s0 : s0 + _EDGE_CHUNK]
            out[s0 : s0 + r.size] = _edge_dots(Z, r, c) / (safe[r] * safe[c])
        np.clip(out, 0.0, 1.0, out=out)
        out[zero[rows] | zero[cols]] = 1.0
        return out, None, zero
    if bandwidth is None:  # half the root-mean-square distance of the features to their mean
        mean_sq = float(_row_sqnorms(Z).mean()) if n else 0.0
        centre = np.asarray(Z.mean(axis=0)).ravel()
        spread = float(np.sqrt(max(mean_sq - float(centre @ centre), 0.0)))
        bandwidth = 0.5 * spread if spread > zero_tol else 1.0
    for s0 in range(0, m, _EDGE_CHUNK):
        r, c = rows[s0 : s0 + _EDGE_CHUNK], cols[s0 : s0 + _EDGE_CHUNK]
        out[s0 : s0 + r.size] = np.exp(-np.maximum(_edge_sqdist(Z, r, c), 0.0) / (2.0 * bandwidth**2))
    return out, float(bandwidth), np.zeros(n, dtype=bool)


def _reduce(F: np.ndarray, n_pcs: int | None, seed: int = 0) -> np.ndarray:
    """``None``: the features as they are; else the centred features projected on their top ``n_pcs`` PCs
    (the centred features themselves when ``n_pcs >= min(n_spots, n_features)``)."""
    F = np.asarray(F, dtype=np.float64)
    if n_pcs is None:
        return F
    centred = F - F.mean(axis=0)
    if n_pcs >= min(F.shape):
        return centred
    if not F.size or np.abs(centred).max() <= _zero_tol(np.abs(F).max(), F.shape[1]):  # constant: no direction
        return np.zeros((F.shape[0], int(n_pcs)))
    from sklearn.decomposition import PCA

    return PCA(n_components=int(n_pcs), random_state=seed).fit_transform(F)


def _warn_zero_vectors(zero: np.ndarray, rows: np.ndarray, cols: np.ndarray, what: str) -> int:
    """Warn (with their count) about spots with a zero feature vector that have edges; return the count."""
    off = rows != cols
    on_edges = np.zeros(zero.shape[0], dtype=bool)
    on_edges[rows[off]] = True
    on_edges[cols[off]] = True
    n_zero = int((zero & on_edges).sum())
    if n_zero:
        warnings.warn(
            f"{n_zero} spot(s) have a zero {what} vector (e.g. all-zero or constant expression, or a profile equal "
            "to the mean after centring); cosine similarity is undefined for them, so their edges keep their weight "
            "(similarity 1). Remove empty spots first, or use metric='euclidean'.",
            UserWarning,
            stacklevel=3,
        )
    return n_zero


def _rescale(W: sp.csr_matrix, sim: np.ndarray, *, row_scale: bool, hint: str) -> tuple[sp.csr_matrix, int]:
    """Multiply the off-diagonal edges of ``W`` by ``sim`` (one value per stored entry of ``W``, COO order).

    Spots left without any edge get a self edge of weight 1 (and a warning with their count, which is returned).
    """
    C = W.tocoo()
    off = C.row != C.col  # self edges of isolated spots stay as they are
    data = C.data.copy()
    data[off] = data[off] * sim[off]
    Ws = sp.csr_matrix((data, (C.row, C.col)), shape=W.shape)
    Ws.eliminate_zeros()
    had = np.zeros(W.shape[0], dtype=bool)
    had[C.row[off & (C.data != 0)]] = True
    Cs = Ws.tocoo()
    has = np.zeros(W.shape[0], dtype=bool)
    has[Cs.row[Cs.row != Cs.col]] = True
    n_lost = int((had & ~has).sum())
    if n_lost:
        warnings.warn(
            f"{n_lost} spot(s) lost every edge (similarity 0 to all their neighbours) and keep only a self edge of "
            f"weight 1, so spatial smoothing leaves them unchanged. {hint}",
            UserWarning,
            stacklevel=3,
        )
    Ws = fill_isolated(Ws)
    if row_scale:
        Ws = row_normalize(Ws)
    Ws.sort_indices()
    return Ws, n_lost


def _check_scale_common(adata, connectivity_key, key_added, row_scale, copy) -> None:
    check_adata(adata, copy=copy)
    check_key(connectivity_key, "connectivity_key")
    check_key(key_added, "key_added")
    check_bool(row_scale, "row_scale")


def _save_scaled(adata, Ws, *, copy, key_added, params, uns, start):
    """Write the rescaled graph and ``uns['{key_added}_neighbors']`` (replaced as a whole) with the one writer."""
    ck, nk = K.conn_key(key_added), K.neighbors_key(key_added)
    out = save_result(adata, copy=copy, uns_key=nk, params=params, uns={"connectivities_key": ck, **uns}, obsp={ck: Ws})
    log_finish(start)
    return out


#: Up to this many entries (spots x genes) a sparse X is densified for an exact centred PCA.
_DENSE_PCA_MAX_ENTRIES = 50_000_000


def _expression_features(X, n_pcs: int | None):
    """Features of each spot for :func:`scale_by_expr` and the norm below which a feature vector counts as zero.

    ``n_pcs=None`` keeps the expression as it is (a sparse X stays sparse); otherwise the top ``n_pcs`` PCs of the
    centred expression (a sparse X above ``_DENSE_PCA_MAX_ENTRIES`` entries goes through TruncatedSVD, uncentred,
    and is never densified).
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        tol = _zero_tol(float(np.abs(X.data).max()) if X.nnz else 0.0, X.shape[1])
        if n_pcs is None:
            return X, tol
        small = X.shape[0] * X.shape[1] <= _DENSE_PCA_MAX_ENTRIES
        if small or X.shape[1] < 3:
            return _reduce(X.toarray(), n_pcs), tol
        from sklearn.decomposition import TruncatedSVD

        n_comp = min(int(n_pcs), X.shape[1] - 1)
        return TruncatedSVD(n_components=n_comp, random_state=0).fit_transform(X), tol
    F = np.asarray(X, dtype=np.float64)
    tol = _zero_tol(float(np.abs(F).max()) if F.size else 0.0, F.shape[1])
    return _reduce(F, n_pcs), tol


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
    does not blur the boundary. Use it before :func:`smoother.tl.smooth` (with
    ``connectivity_key='smoother'``) when the tissue has sharp borders and no annotation of them; the input is
    log-normalized expression (raw counts work, but library size then counts as a difference between spots).

    Only the existing edges are evaluated (no ``n x n`` matrix); the formula of the new weights is in Notes.

    Parameters
    ----------
    adata
        AnnData with a spatial graph.
    layer
        Expression to use (``None``: ``adata.X``); normalized/log expression works best.
    metric
        ``'cosine'`` or ``'euclidean'``.
    n_pcs
        Number of principal components (``None``: no reduction; at least ``min(n_obs, n_vars)``: the centred
        expression without reduction).
    bandwidth
        Kernel width ``> 0`` for ``'euclidean'`` (``None``: the default given in Notes).
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
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` (CSR ``(n_obs, n_obs)``) and
    ``adata.uns['{key_added}_neighbors']`` (replaced as a whole): ``connectivities_key``, ``params``,
    ``n_zero_spots`` (spots with a zero feature vector, cosine only) and ``n_isolated`` (spots left without edges).

    Notes
    -----
    The new weight of edge :math:`(i, j)` is :math:`w_{ij} s_{ij}` with

    - ``metric='cosine'``: :math:`s_{ij} = \max(0, \cos(z_i, z_j))`; when :math:`z_i` or :math:`z_j` is the
      zero vector (an all-zero or constant profile; with PCA, a profile equal to the mean) the cosine is
      undefined and :math:`s_{ij} = 1`: the edge keeps its weight, and a warning gives the number of such spots;
    - ``metric='euclidean'``: :math:`s_{ij} = \exp(-\lVert z_i - z_j\rVert^2 / 2\sigma^2)`, :math:`\sigma` =
      ``bandwidth`` or half the root-mean-square distance of the :math:`z_i` to their mean (1 when all
      :math:`z_i` are equal),

    where :math:`z_i` is spot ``i``'s expression projected on its first ``n_pcs`` principal components (``None``:
    the expression itself, kept sparse when it is sparse). Only the existing edges are evaluated (no ``n x n``
    matrix). A spot whose every edge gets similarity 0 keeps only a self edge of weight 1 (with a warning).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="zones", n_genes=20, noise_level=0.3, seed=0)
    >>> sm.pp.spatial_graph(adata, n_neighs=6)
    >>> sm.pp.scale_by_expr(adata, n_pcs=5)  # -> adata.obsp["smoother_connectivities"]
    >>> W = adata.obsp["smoother_connectivities"].tocoo()
    >>> zone = adata.obs["zone"].to_numpy()
    >>> bool(W.data[zone[W.row] != zone[W.col]].mean() < W.data[zone[W.row] == zone[W.col]].mean())
    True
    """
    _check_scale_common(adata, connectivity_key, key_added, row_scale, copy)
    metric = check_choice(metric, "metric", _METRICS)
    n_pcs = check_int(n_pcs, "n_pcs", low=1, allow_none=True, example="10")
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True, allow_none=True, example="1.0")
    if adata.n_obs == 0:
        msg = "`adata` has no spots (n_obs = 0); there is no graph to rescale."
        raise ValueError(msg)
    W = get_graph(adata, connectivity_key)
    X, _ = get_matrix(adata, layer)
    if X.shape[1] == 0:
        msg = f"`adata` has no genes (n_vars = 0): `scale_by_expr` needs expression in {layer or 'adata.X'!s}."
        raise ValueError(msg)

    start = log_start("scaling the spatial graph by expression similarity")
    Z, zero_tol = _expression_features(X, n_pcs)
    C = W.tocoo()
    sim, bw, zero = _edge_similarity(Z, C.row, C.col, metric, bandwidth, zero_tol)
    n_zero = _warn_zero_vectors(zero, C.row, C.col, "expression") if metric == "cosine" else 0
    hint = "Use fewer `n_pcs`, metric='euclidean', or check the spot's expression."
    Ws, n_lost = _rescale(W, sim, row_scale=row_scale, hint=hint)
    params = {
        "source": "expression",
        "layer": layer,
        "metric": metric,
        "n_pcs": n_pcs,
        "bandwidth": bw,
        "connectivity_key": connectivity_key,
        "key_added": key_added,
        "row_scale": row_scale,
    }
    uns = {"n_zero_spots": n_zero, "n_isolated": n_lost}
    return _save_scaled(adata, Ws, copy=copy, key_added=key_added, params=params, uns=uns, start=start)


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
    r"""Rescale edges between spots of different labels (e.g. annotated regions) to ``boundary_connectivity``.

    Use it when the regions are known (a pathologist's annotation, cortical layers, clusters) and smoothing must
    not mix them: the prior then acts within each region and only weakly (or not at all) across its border.

    Parameters
    ----------
    adata
        AnnData with a spatial graph.
    groupby
        Column of ``adata.obs`` with the spot labels (no missing values).
    boundary_connectivity
        Weight factor of edges joining different labels, in ``[0, 1]`` (0 cuts them).
    connectivity_key, key_added, row_scale, copy
        As in :func:`scale_by_expr`.

    Returns
    -------
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` and
    ``adata.uns['{key_added}_neighbors']`` (``connectivities_key``, ``params``, ``n_isolated``: spots left without
    edges, which keep a self edge of weight 1, with a warning).

    Notes
    -----
    The new weight of edge :math:`(i, j)` is :math:`w_{ij}` when both spots carry the same label and
    :math:`b\, w_{ij}` otherwise, :math:`b` = ``boundary_connectivity``.

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="zones", n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata, n_neighs=6)
    >>> sm.pp.scale_by_identity(adata, "zone", boundary_connectivity=0.1)
    >>> np.unique(adata.obsp["smoother_connectivities"].data).tolist()
    [0.1, 1.0]
    """
    _check_scale_common(adata, connectivity_key, key_added, row_scale, copy)
    check_key(groupby, "groupby")
    b = check_real(boundary_connectivity, "boundary_connectivity", low=0.0, high=1.0, example="0.0")
    if groupby not in adata.obs.columns:
        msg = f"Column {groupby!r} not found in `adata.obs` (available: {list(adata.obs.columns)})."
        raise KeyError(msg)
    labels = adata.obs[groupby]
    if labels.isna().any():
        msg = f"`adata.obs[{groupby!r}]` has {int(labels.isna().sum())} missing label(s); fill or drop them first."
        raise ValueError(msg)
    W = get_graph(adata, connectivity_key)

    start = log_start(f"scaling the spatial graph by `adata.obs[{groupby!r}]`")
    codes = np.unique(labels.astype(str).to_numpy(), return_inverse=True)[1].ravel()
    C = W.tocoo()
    sim = np.where(codes[C.row] == codes[C.col], 1.0, b)
    hint = "Their neighbours all carry other labels; raise `boundary_connectivity` to keep them connected."
    Ws, n_lost = _rescale(W, sim, row_scale=row_scale, hint=hint)
    params = {
        "source": "identity",
        "groupby": groupby,
        "boundary_connectivity": b,
        "connectivity_key": connectivity_key,
        "key_added": key_added,
        "row_scale": row_scale,
    }
    return _save_scaled(
        adata, Ws, copy=copy, key_added=key_added, params=params, uns={"n_isolated": n_lost}, start=start
    )


def _check_image(image, where: str) -> tuple[np.ndarray, int]:
    """The image as float64 ``(H, W, C)`` and its number of NaN pixel values; inf or a non-numeric image raise."""
    img = np.asarray(image)
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool) or np.issubdtype(img.dtype, np.complexfloating):
        msg = f"Expected the image {where} to be a numeric array, found dtype {img.dtype}."
        raise TypeError(msg)
    if img.ndim not in (2, 3) or min(img.shape[:2], default=0) == 0:
        msg = f"Expected the image {where} of shape (height, width) or (height, width, channels), found {img.shape}."
        raise ValueError(msg)
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    if np.isinf(img).any():
        msg = f"The image {where} contains {int(np.isinf(img).sum())} inf value(s); replace them (e.g. by NaN)."
        raise ValueError(msg)
    n_nan = int(np.isnan(img).sum())
    if n_nan == img.size:
        msg = f"The image {where} is all NaN."
        raise ValueError(msg)
    return img, n_nan


def _histology_features(img: np.ndarray, xy_img: np.ndarray, radius_px: float, where: str) -> np.ndarray:
    """Mean and standard deviation of every channel within the square patch of half-width ``radius_px``.

    NaN pixels are left out of both statistics. Uses summed-area tables (of the image, its square and, when there
    are NaN pixels, of the valid-pixel mask), so the cost does not depend on the patch size.
    """
    h, w, c = img.shape
    r = max(int(round(radius_px)), 0)
    col = np.round(xy_img[:, 0]).astype(np.int64)  # x -> column
    row = np.round(xy_img[:, 1]).astype(np.int64)  # y -> row
    outside = (col < 0) | (col >= w) | (row < 0) | (row >= h)
    if outside.any():
        msg = (
            f"{int(outside.sum())} spot(s) lie outside the image {where} ({h} x {w} pixels); check that "
            "`adata.obsm[spatial_key]` holds full-resolution pixel coordinates (x, y) and the scale factors."
        )
        raise ValueError(msg)
    r0, r1 = np.clip(row - r, 0, h), np.clip(row + r + 1, 0, h)
    c0, c1 = np.clip(col - r, 0, w), np.clip(col + r + 1, 0, w)

    def box_sum(arr):
        S = np.zeros((h + 1, w + 1, c))
        S[1:, 1:] = arr.cumsum(0).cumsum(1)
        return S[r1, c1] - S[r0, c1] - S[r1, c0] + S[r0, c0]

    nan = np.isnan(img)
    if nan.any():
        count = box_sum((~nan).astype(np.float64))
        img = np.where(nan, 0.0, img)
        empty = (count == 0).any(axis=1)
        if empty.any():
            msg = (
                f"{int(empty.sum())} spot(s) have only NaN pixels (in some channel) in their footprint on the image "
                f"{where}; drop those spots or fill the image there."
            )
            raise ValueError(msg)
    else:
        count = np.broadcast_to(((r1 - r0) * (c1 - c0)).astype(np.float64)[:, None], (len(row), c))
    mean = box_sum(img) / count
    sq = box_sum(img * img) / count
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

    Use it when the image shows tissue borders that expression alone does not resolve (e.g. few counts per
    spot): edges between spots that look different on the stain are weakened, so smoothing respects them.

    Reads the image ``adata.uns['spatial'][library_id]['images'][img_key]`` (``H x W`` or ``H x W x C``) and the
    scale factors ``adata.uns['spatial'][library_id]['scalefactors']`` (``spot_diameter_fullres`` and
    ``tissue_{img_key}_scalef``) as scanpy/squidpy store Visium data; ``adata.obsm[spatial_key]`` holds
    full-resolution pixel coordinates ``(x, y)``. Each spot is described by the mean and standard deviation of
    every channel inside its footprint (a square of half-width the spot radius), standardized across spots,
    and edges are rescaled as in :func:`scale_by_expr` (default: Gaussian of the euclidean feature distance).

    NaN pixels (e.g. a masked background) are left out of each spot's mean and standard deviation; a spot whose
    footprint holds no finite pixel, an inf pixel, or a spot centre outside the image raise ``ValueError``.

    Parameters
    ----------
    adata
        AnnData with a spatial graph and a Visium image.
    library_id
        Key in ``adata.uns['spatial']``; ``None`` works when there is exactly one.
    img_key
        ``'hires'`` or ``'lowres'`` (any key of the library's images with a matching ``tissue_{img_key}_scalef``).
    spatial_key, metric, n_pcs, bandwidth, connectivity_key, key_added, row_scale, copy
        As in :func:`scale_by_expr`.

    Returns
    -------
    ``None`` or the copy. Writes ``adata.obsp['{key_added}_connectivities']`` and
    ``adata.uns['{key_added}_neighbors']`` (``connectivities_key``, ``params``, ``n_nan_pixels``, ``n_zero_spots``,
    ``n_isolated``), replaced as a whole.

    Examples
    --------
    A synthetic "H&E" image, dark on the left and bright on the right, cuts the edges that cross its boundary:

    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(100, layout="square", n_genes=5, spacing=10.0, seed=0)
    >>> img = np.zeros((100, 100, 3))
    >>> img[:, 45:] = 1.0  # rows are y, columns are x (full-resolution pixels here)
    >>> img += np.random.default_rng(0).normal(0, 0.05, img.shape)
    >>> scalefactors = {"spot_diameter_fullres": 8.0, "tissue_hires_scalef": 1.0}
    >>> adata.uns["spatial"] = {"slide": {"images": {"hires": img}, "scalefactors": scalefactors}}
    >>> sm.pp.spatial_graph(adata, n_neighs=4)
    >>> sm.pp.scale_by_histology(adata)  # -> adata.obsp["smoother_connectivities"]
    >>> W = adata.obsp["smoother_connectivities"].tocoo()
    >>> bright = adata.obsm["spatial"][:, 0] > 45
    >>> cross = bright[W.row] != bright[W.col]
    >>> bool(W.data[cross].mean() < 0.1 * W.data[~cross].mean())
    True
    """
    _check_scale_common(adata, connectivity_key, key_added, row_scale, copy)
    if library_id is not None:
        check_key(library_id, "library_id")
    check_key(img_key, "img_key")
    check_key(spatial_key, "spatial_key")
    metric = check_choice(metric, "metric", _METRICS)
    n_pcs = check_int(n_pcs, "n_pcs", low=1, allow_none=True, example="10")
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True, allow_none=True, example="1.0")
    if adata.n_obs == 0:
        msg = "`adata` has no spots (n_obs = 0); there is no graph to rescale."
        raise ValueError(msg)
    spatial = adata.uns.get("spatial")
    if not hasattr(spatial, "keys") or not len(spatial):
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
    where = f"`adata.uns['spatial'][{library_id!r}]['scalefactors']`"
    for k in ("spot_diameter_fullres", sf_key):
        if k not in sf:
            msg = f"Scale factor {k!r} not found in {where}."
            raise KeyError(msg)
    scale = check_real(sf[sf_key], f"{where}[{sf_key!r}]", low=0.0, low_open=True, example="0.15")
    diameter = check_real(sf["spot_diameter_fullres"], f"{where}['spot_diameter_fullres']", low=0.0, example="90.0")
    img_where = f"`adata.uns['spatial'][{library_id!r}]['images'][{img_key!r}]`"
    img, n_nan = _check_image(images[img_key], img_where)
    coords = get_coords(adata, spatial_key)
    W = get_graph(adata, connectivity_key)

    start = log_start("scaling the spatial graph by histology similarity")
    if n_nan:
        logger.info("    %d NaN pixel value(s) in %s are left out of the spot features", n_nan, img_where)
    F = _histology_features(img, coords[:, :2] * scale, diameter / 2 * scale, img_where)
    sd = F.std(axis=0)
    F = (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    Z = _reduce(F, n_pcs)
    C = W.tocoo()
    sim, bw, zero = _edge_similarity(Z, C.row, C.col, metric, bandwidth, _zero_tol(1.0, F.shape[1]))
    n_zero = _warn_zero_vectors(zero, C.row, C.col, "histology feature") if metric == "cosine" else 0
    hint = "Use metric='euclidean' or a larger `bandwidth`."
    Ws, n_lost = _rescale(W, sim, row_scale=row_scale, hint=hint)
    params = {
        "source": "histology",
        "library_id": library_id,
        "img_key": img_key,
        "spatial_key": spatial_key,
        "metric": metric,
        "n_pcs": n_pcs,
        "bandwidth": bw,
        "connectivity_key": connectivity_key,
        "key_added": key_added,
        "row_scale": row_scale,
    }
    uns = {"n_nan_pixels": n_nan, "n_zero_spots": n_zero, "n_isolated": n_lost}
    return _save_scaled(adata, Ws, copy=copy, key_added=key_added, params=params, uns=uns, start=start)
