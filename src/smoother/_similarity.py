"""Feature and histology similarity between the two ends of each edge of a spatial graph (vectorized).

Used by :meth:`smoother.weights.SpatialWeightMatrix.scale_by_expr` / ``scale_by_histology``. Similarities are
only ever computed for the ``m`` edges of the graph (``O(m * dim)`` work), never for all pairs of spots.

Conventions (those of smoother-omics 1.1.0):

- ``reduce='pca'``: z-score every feature across spots (features constant across spots are dropped), then
  project on the top ``dim`` principal components (scikit-learn PCA);
  ``reduce='none'`` / ``'mean'``: use the features as they are.
- ``'cosine'`` similarity :math:`s = \\cos(x_i, x_j)`, clipped at 0 when ``nonneg``;
  ``'euclidean'``: features are divided by their largest absolute value, then
  :math:`s = \\exp(-d_{ij}^2 / (2 \\cdot 0.1^2))`.
"""

from __future__ import annotations

import numpy as np

METRICS = {"cosine": "cosine", "cos": "cosine", "euclidean": "euclidean", "eu": "euclidean"}
REDUCTIONS = ("pca", "mean", "none")
_BANDWIDTH = 0.1  # fixed Gaussian kernel width of the euclidean similarity (classic convention)
_EDGE_CHUNK = 1 << 16


def check_metric(dist_metric: str) -> str:
    """Canonical metric name; ``ValueError`` for an unknown one."""
    if not isinstance(dist_metric, str) or dist_metric.lower() not in METRICS:
        msg = f"Unknown `dist_metric` {dist_metric!r}: expected one of {sorted(METRICS)}."
        raise ValueError(msg)
    return METRICS[dist_metric.lower()]


def check_reduce(reduce: str) -> str:
    """Check the dimension reduction name."""
    if not isinstance(reduce, str) or reduce.lower() not in REDUCTIONS:
        msg = f"Unknown `reduce` {reduce!r}: expected one of {list(REDUCTIONS)}."
        raise ValueError(msg)
    return reduce.lower()


def check_dim(dim) -> int:
    """A positive integer number of components."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        msg = f"Expected `dim` to be a positive integer, found `{dim!r}`."
        raise ValueError(msg)
    return int(dim)


def pca_reduce(X: np.ndarray, dim: int) -> np.ndarray:
    """Z-score the columns of ``X`` (spots x features), drop constant ones, return the top ``dim`` PC scores.

    Returns an array of shape ``(n_spots, min(dim, n_kept_features, n_spots))``.
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0, ddof=1) if X.shape[0] > 1 else np.zeros(X.shape[1])
    keep = sd > 0
    if not keep.any():
        return np.zeros((X.shape[0], 1))
    Z = (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]
    n_comp = int(min(dim, Z.shape[1], Z.shape[0]))
    solver = "covariance_eigh" if Z.shape[1] <= 1000 else "randomized"
    return PCA(n_components=n_comp, svd_solver=solver, random_state=0).fit_transform(Z)


def reduce_features(X: np.ndarray, reduce: str, dim: int) -> np.ndarray:
    """Apply ``reduce`` to a spots x features matrix."""
    return pca_reduce(X, dim) if reduce == "pca" else np.asarray(X, dtype=np.float64)


def edge_similarity(
    F: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    dist_metric: str = "cosine",
    nonneg: bool = True,
) -> np.ndarray:
    """Similarity of ``F[rows[e]]`` and ``F[cols[e]]`` for every edge ``e`` (``F``: spots x features)."""
    metric = check_metric(dist_metric)
    F = np.asarray(F, dtype=np.float64)
    if metric == "euclidean":
        scale = np.abs(F).max() if F.size else 0.0
        if scale > 0:
            F = F / scale
    else:
        norms = np.linalg.norm(F, axis=1)
    out = np.empty(rows.shape[0], dtype=np.float64)
    for start in range(0, rows.shape[0], _EDGE_CHUNK):  # chunks over edges bound the memory, not a spot loop
        r = rows[start : start + _EDGE_CHUNK]
        c = cols[start : start + _EDGE_CHUNK]
        if metric == "euclidean":
            d2 = ((F[r] - F[c]) ** 2).sum(axis=1)
            out[start : start + r.shape[0]] = np.exp(-d2 / (2.0 * _BANDWIDTH**2))
        else:
            denom = np.maximum(norms[r] * norms[c], 1e-16)
            s = (F[r] * F[c]).sum(axis=1) / denom
            s[(norms[r] == 0) | (norms[c] == 0)] = 0.0
            out[start : start + r.shape[0]] = s
    if metric == "cosine" and nonneg:
        np.maximum(out, 0.0, out=out)
    return out


def histology_features(coords: np.ndarray, image: np.ndarray, scale_factors: dict, *, padding: bool) -> np.ndarray:
    """Per-spot pixel features from an image, vectorized over spots.

    The patch of a spot is the ``2r x 2r`` square of pixels starting at ``trunc(x * s) - r`` along the first
    image axis and ``trunc(y * s) - r`` along the second, with ``s = scale_factors['tissue_hires_scalef']`` and
    ``r = int(scale_factors['spot_diameter_fullres'] / 2 * s)`` (``coords[:, 0]`` indexes the first image
    axis, as in smoother-omics 1.1.0).

    Parameters
    ----------
    padding
        ``True``: return the flattened patch (``4 r^2 C`` features); pixels outside the image are filled as
        ``numpy.pad(mode='mean')`` does (first with the mean of their column, then with the mean of their row).
        ``False``: return the mean colour over the pixels inside the image (``C`` features).

    Returns
    -------
    ndarray of shape ``(n_spots, n_features)``.
    """
    for key in ("spot_diameter_fullres", "tissue_hires_scalef"):
        if key not in scale_factors:
            msg = f"`scale_factors` lacks {key!r}; pass the dict of 10x Visium's scalefactors_json.json."
            raise KeyError(msg)
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        msg = f"Expected `image` of shape (height, width, channels), found shape {img.shape}."
        raise ValueError(msg)
    s = float(scale_factors["tissue_hires_scalef"])
    r = int(float(scale_factors["spot_diameter_fullres"]) / 2 * s)
    if r < 1:
        msg = "The spot radius on this image is below one pixel; check `scale_factors`."
        raise ValueError(msg)
    H, Wd, C = img.shape
    xs = np.trunc(coords[:, 0] * s).astype(np.int64) - r
    ys = np.trunc(coords[:, 1] * s).astype(np.int64) - r
    off = np.arange(2 * r)
    rx = xs[:, None] + off  # (n, 2r)
    ry = ys[:, None] + off
    vx = (rx >= 0) & (rx < H)
    vy = (ry >= 0) & (ry < Wd)
    if not (vx.any(axis=1) & vy.any(axis=1)).all():
        bad = int((~(vx.any(axis=1) & vy.any(axis=1))).sum())
        msg = f"{bad} spot(s) lie outside the image; check `coords` (full-resolution pixels) and `scale_factors`."
        raise ValueError(msg)
    patch = img[np.clip(rx, 0, H - 1)[:, :, None], np.clip(ry, 0, Wd - 1)[:, None, :], :].astype(np.float64)
    mx = vx[:, :, None, None].astype(np.float64)  # (n, 2r, 1, 1)
    my = vy[:, None, :, None].astype(np.float64)  # (n, 1, 2r, 1)
    if not padding:
        w = mx * my
        return (patch * w).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    # numpy.pad(mode='mean'), axis 0 first: invalid rows take the mean over valid rows of their column
    colmean = (patch * mx).sum(axis=1, keepdims=True) / mx.sum(axis=1, keepdims=True)
    patch = np.where(mx > 0, patch, colmean)
    # then axis 1: invalid columns take the mean over valid columns of their (now complete) row
    rowmean = (patch * my).sum(axis=2, keepdims=True) / my.sum(axis=2, keepdims=True)
    patch = np.where(my > 0, patch, rowmean)
    return patch.reshape(patch.shape[0], -1)
