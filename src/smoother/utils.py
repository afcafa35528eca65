"""Classic utilities of smoother-omics: data-driven dependency checks for the correlation-decay plots.

Classic orientation: ``features`` are ``num_feature x num_spot`` and ``coords`` ``num_spot x 2``. All functions are
vectorized over spots and share the engine of :mod:`smoother.tl` (``smoother._core.decay``); k-th neighbours are
scikit-learn Euclidean nearest neighbours (``k = 0``: the spot itself).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._core import decay as _decay
from ._validation import _torch_to_scipy, check_coords

__all__ = [
    "estimate_decay_rate",
    "get_neighbor_quantile_value_by_k",
    "normalize_minmax",
    "quantile_feature_similarity_decay",
    "quantile_feature_similarity_neighbor",
]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def normalize_minmax(x, min_zero: bool = True, return_scale: bool = False):
    """Scale data to ``[0, 1]`` (or ``[-1, 1]``).

    Parameters
    ----------
    x
        2D array or tensor.
    min_zero
        Subtract each column's minimum first (columns then start at 0).
    return_scale
        Also return the scale (the largest absolute value after the shift), by which the data were divided.

    Returns
    -------
    ``torch.Tensor`` of the shape of ``x`` (and the scale, a 0-d tensor, with ``return_scale``).
    """
    import torch

    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    x_norm = x - x.min(dim=0, keepdim=True).values if min_zero else x.clone()
    scale = x_norm.abs().max()
    x_norm = x_norm / scale
    if return_scale:
        return x_norm, scale
    return x_norm


def _reduce(features, reduce: str, dim: int) -> np.ndarray:
    """Spots x dims representation: PCA of the standardized features (constant features dropped), or as is."""
    if reduce not in ("pca", "none"):
        msg = f"Expected `reduce` to be 'pca' or 'none', found `{reduce!r}`."
        raise ValueError(msg)
    X = _to_numpy(features).T  # spots x features
    if reduce == "none":
        return X
    sd = X.std(axis=0, ddof=1)
    keep = sd > 0
    Z = (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]
    q = int(min(dim, Z.shape[1], Z.shape[0]))
    if q < 1:
        msg = "No non-constant feature to run a PCA on; pass `reduce='none'`."
        raise ValueError(msg)
    U, S, _ = np.linalg.svd(Z, full_matrices=False) if min(Z.shape) <= 500 else _randomized(Z, q)
    return U[:, :q] * S[:q]


def _randomized(Z, q):
    from sklearn.utils.extmath import randomized_svd

    U, S, Vt = randomized_svd(Z, q, random_state=0)
    return U, S, Vt


def _check_features(features, coords):
    coords = check_coords(coords)
    n_spot = _to_numpy(features).shape[1] if not sp.issparse(features) else features.shape[1]
    if n_spot != coords.shape[0]:
        msg = f"`features` has {n_spot} spots (columns) but `coords` has {coords.shape[0]} rows."
        raise ValueError(msg)
    return coords


def quantile_feature_similarity_decay(
    features, coords, max_k: int = 50, topk: bool = False, reduce: str = "pca", dim: int = 20
) -> pd.DataFrame:
    """Quantiles of the cosine similarity of features between ``k``-th nearest spatial neighbours.

    Parameters
    ----------
    features
        ``num_feature x num_spot``.
    coords
        ``num_spot x 2``.
    max_k
        Largest neighbourhood degree.
    topk
        Pool all neighbours ``0..k`` for degree ``k`` instead of the ``k``-th only.
    reduce
        ``'pca'`` (``dim`` principal components of the standardized features) or ``'none'``.
    dim
        Number of principal components.

    Returns
    -------
    ``pandas.DataFrame`` with one row per ``k = 0..max_k`` and columns ``Q10, Q25, Q50, Q75, Q90, k``.
    """
    coords = _check_features(features, coords)
    _decay.check_decay_args(coords.shape[0], 0, max_k, None)
    X = _reduce(features, reduce, dim)
    nbrs = _decay.knn_indices(coords, max_k)
    return _decay.similarity_decay_quantiles(X, nbrs, min_k=0, max_k=max_k, topk=topk)


def quantile_feature_similarity_neighbor(
    features, coords, k: int, reduce: str = "pca", dim: int = 20, n_null: int = 100, seed: int = 0
) -> pd.DataFrame:
    """Quantiles of the cosine similarity between each spot and its ``k`` nearest neighbours, and of a null.

    The null shuffles both ends of those neighbour pairs independently, ``n_null`` times (at most 2,000,000 null
    pairs in all), with ``seed``.

    Returns
    -------
    Long ``pandas.DataFrame`` with columns ``Quantile`` (0, 0.01, ..., 1), ``Data`` (``'Observed'`` or
    ``'Shuffled'``) and ``CumulativeDensity`` (the similarity at that quantile), 202 rows.
    """
    coords = _check_features(features, coords)
    _decay.check_decay_args(coords.shape[0], 0, k, None)
    X = _reduce(features, reduce, dim)
    nbrs = _decay.knn_indices(coords, k)
    wide = _decay.similarity_cdf_table(X, nbrs, k=k, n_null=n_null, seed=seed)
    wide = wide.rename(columns={"quantile": "Quantile", "observed": "Observed", "shuffled": "Shuffled"})
    return wide.melt(id_vars=["Quantile"], var_name="Data", value_name="CumulativeDensity")


def get_neighbor_quantile_value_by_k(sq_mat, coords, min_k: int = 0, max_k: int = 50) -> pd.DataFrame:
    """Quantiles of ``sq_mat[i, j]`` over spots ``i`` with ``j`` the ``k``-th nearest neighbour of ``i``.

    Parameters
    ----------
    sq_mat
        ``num_spot x num_spot`` (dense array/tensor or scipy sparse; only the needed entries are read).
    coords
        ``num_spot x 2``.
    min_k, max_k
        Range of neighbourhood degrees (``k = 0``: the spot itself).

    Returns
    -------
    ``pandas.DataFrame`` with one row per ``k`` and columns ``Q10, Q25, Q50, Q75, Q90, k``.
    """
    coords = check_coords(coords)
    n = coords.shape[0]
    if tuple(sq_mat.shape) != (n, n):
        msg = f"Expected `sq_mat` of shape ({n}, {n}) to match `coords`, found {tuple(sq_mat.shape)}."
        raise ValueError(msg)
    _decay.check_decay_args(n, min_k, max_k, None)
    nbrs = _decay.knn_indices(coords, max_k)[:, min_k : max_k + 1]
    rows = np.repeat(np.arange(n)[:, None], nbrs.shape[1], axis=1)
    if hasattr(sq_mat, "detach") and str(sq_mat.layout) != "torch.strided":  # torch sparse: read as scipy CSR
        sq_mat = _torch_to_scipy(sq_mat)
    if sp.issparse(sq_mat):
        vals = np.asarray(sp.csr_matrix(sq_mat)[rows.ravel(), nbrs.ravel()]).reshape(nbrs.shape)
    elif hasattr(sq_mat, "detach"):
        import torch

        vals = sq_mat[torch.as_tensor(rows), torch.as_tensor(nbrs)].detach().cpu().numpy()
    else:
        vals = np.asarray(sq_mat)[rows, nbrs]
    return _decay.quantile_table(np.asarray(vals, dtype=np.float64), np.arange(min_k, max_k + 1))


def estimate_decay_rate(x, y, return_all_params: bool = False):
    r"""Decay rate of a mono-exponential fit :math:`y = \alpha e^{-\beta x} + \theta`.

    Parameters
    ----------
    x, y
        1D arrays of equal length.
    return_all_params
        Return ``(alpha, beta, theta)`` instead of ``beta`` only.

    Returns
    -------
    ``beta`` (float), or the array ``[alpha, beta, theta]``.
    """
    params = _decay.fit_mono_exp(_to_numpy(x), _to_numpy(y))
    return np.asarray(params) if return_all_params else params[1]
