"""Spatial graphs from coordinates: arrays in, scipy CSR out.

All builders are vectorized (scikit-learn's KD-tree neighbour search, no Python loop over spots).
Conventions shared with the classic API:

- no self edges, except that a spot left without any neighbour gets a self edge of weight 1, so that no row of
  the weight matrix is empty (:func:`fill_isolated`);
- ``row_scale=True`` divides each row by its sum (the result is then asymmetric in general);
- the distances matrix has exactly the off-diagonal edges of the connectivities, an edge between two spots at
  the same position being an explicit zero.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from .._validation import check_coords, check_int, check_real

Symmetrize = Literal["mutual", "union", "none"]


def fill_isolated(W: sp.spmatrix) -> sp.csr_matrix:
    """Give every spot whose row of ``W`` sums to zero a self edge of weight 1."""
    W = sp.csr_matrix(W, dtype=np.float64)
    rowsum = np.asarray(W.sum(axis=1)).ravel()
    iso = np.flatnonzero(rowsum == 0)
    if iso.size:
        n = W.shape[0]
        W = (W + sp.csr_matrix((np.ones(iso.size), (iso, iso)), shape=(n, n))).tocsr()
    return W


def row_normalize(W: sp.spmatrix) -> sp.csr_matrix:
    """Scale each row of ``W`` to sum to 1 (rows summing to 0 are left at 0)."""
    W = sp.csr_matrix(W, dtype=np.float64)
    rowsum = np.asarray(W.sum(axis=1)).ravel()
    inv = np.divide(1.0, rowsum, out=np.zeros_like(rowsum), where=rowsum != 0)
    return sp.diags(inv).dot(W).tocsr()


def _check_spread(coords: np.ndarray) -> np.ndarray:
    """``ValueError`` when two or more spots all sit at one point: no graph can describe their positions."""
    if coords.shape[0] > 1 and float(np.ptp(coords, axis=0).max()) == 0.0:
        msg = (
            f"All {coords.shape[0]} spots sit at the same point {coords[0].tolist()}; a spatial graph needs the "
            "spot positions (check the coordinates passed)."
        )
        raise ValueError(msg)
    return coords


def _knn_indices(coords: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of the ``k`` nearest *other* spots of every spot, shape ``(n, k)``."""
    from scipy.spatial import cKDTree

    n = coords.shape[0]
    dist, idx = cKDTree(coords).query(coords, k=k + 1)
    dist, idx = np.asarray(dist).reshape(n, k + 1), np.asarray(idx).reshape(n, k + 1)
    is_self = idx == np.arange(n)[:, None]
    # duplicated coordinates can push the spot itself out of its own list: then drop the farthest instead
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return idx[keep].reshape(n, k), dist[keep].reshape(n, k)


def knn_graph(
    coords,
    k: int = 6,
    *,
    symmetrize: Symmetrize = "mutual",
    row_scale: bool = False,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binary k-nearest-neighbour graph.

    Parameters
    ----------
    coords
        Spot coordinates, shape ``(n_spots, 2)`` or ``(n_spots, 3)``.
    k
        Number of nearest neighbours of each spot (the spot itself excluded).
    symmetrize
        ``'mutual'`` keeps an edge only when each spot is among the other's ``k`` nearest (the classic
        ``symmetric=True``); ``'union'`` keeps it when either is (squidpy's symmetric kNN); ``'none'`` keeps
        the directed kNN relation (row ``i`` lists the neighbours of ``i``).
    row_scale
        Divide every row by its sum.

    Returns
    -------
    connectivities
        CSR ``(n_spots, n_spots)`` weights (1 on edges; self edge 1 for isolated spots; then row-scaled).
    distances
        CSR ``(n_spots, n_spots)`` euclidean lengths of the same edges (no self entries). Spots at identical
        coordinates are neighbours at distance 0, stored as an explicit zero, so both matrices list the same edges.
    """
    coords = _check_spread(check_coords(coords))
    n = coords.shape[0]
    k = check_int(k, "k", low=1, example="6")
    if n < k + 1:
        msg = f"Need at least k + 1 = {k + 1} spots for a {k}-nearest-neighbour graph, found {n}; lower `k`."
        raise ValueError(msg)
    if symmetrize not in ("mutual", "union", "none"):
        msg = f"Expected `symmetrize` in ['mutual', 'union', 'none'], found `{symmetrize!r}`."
        raise ValueError(msg)
    idx, _ = _knn_indices(coords, int(k))
    rows = np.repeat(np.arange(n), k)
    A = sp.csr_matrix((np.ones(n * k), (rows, idx.ravel())), shape=(n, n))
    if symmetrize == "mutual":
        A = A.multiply(A.T).tocsr()
    elif symmetrize == "union":
        A = A.maximum(A.T).tocsr()
    return _finish_graph(A, coords, row_scale)


def radius_graph(
    coords,
    radius: float,
    *,
    bandwidth: float | None = None,
    row_scale: bool = False,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Graph of all pairs closer than ``radius``, with Gaussian weights.

    The weight of an edge of length ``d`` is ``exp(-d**2 / (2 * bandwidth**2))`` (1 when ``bandwidth`` is None).

    Parameters
    ----------
    coords
        Spot coordinates, shape ``(n_spots, 2)`` or ``(n_spots, 3)``.
    radius
        Distance cutoff, in the unit of ``coords`` (pairs with ``d <= radius`` are joined).
    bandwidth
        Width of the Gaussian kernel, same unit; ``None`` gives binary weights.
    row_scale
        Divide every row by its sum.

    Returns
    -------
    connectivities, distances
        CSR ``(n_spots, n_spots)`` matrices, as in :func:`knn_graph`.
    """
    from scipy.spatial import cKDTree

    coords = _check_spread(check_coords(coords))
    radius = check_real(radius, "radius", low=0.0, low_open=True, example="1.5")
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True, allow_none=True, example="1.0")
    n = coords.shape[0]
    tree = cKDTree(coords)
    pairs = tree.sparse_distance_matrix(tree, float(radius), output_type="ndarray")  # every pair, zeros included
    rows, cols = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    d = pairs["v"].astype(np.float64)
    off = rows != cols
    rows, cols, d = rows[off], cols[off], d[off]
    if bandwidth is None:
        w = np.ones_like(d)
    else:
        w = np.exp(-(d**2) / (2.0 * float(bandwidth) ** 2))
    W = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    return _finish_graph(W, coords, row_scale)


def _edge_distances(coords: np.ndarray, W: sp.csr_matrix) -> sp.csr_matrix:
    """Euclidean length of every off-diagonal edge of ``W``, on exactly the sparsity pattern of ``W``.

    Spots at identical coordinates give an edge of length 0, stored as an explicit zero (not dropped), so the
    distances and connectivities always list the same edges.
    """
    C = W.tocoo()
    off = C.row != C.col
    r, c = C.row[off], C.col[off]
    d = np.sqrt(((coords[r] - coords[c]) ** 2).sum(axis=1)) if r.size else np.zeros(0)
    D = sp.csr_matrix((d, (r, c)), shape=W.shape)
    D.sort_indices()
    return D


def _finish_graph(W: sp.csr_matrix, coords: np.ndarray, row_scale: bool) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Shared tail of the graph builders: drop zero weights, measure the kept edges, give isolated spots a self
    edge, optionally scale rows to sum 1, sort indices."""
    W.eliminate_zeros()
    D = _edge_distances(coords, W)
    W = fill_isolated(W)
    if row_scale:
        W = row_normalize(W)
    W.sort_indices()
    return W, D
