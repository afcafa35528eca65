"""Classic utilities of smoother-omics: data-driven dependency checks for the correlation-decay plots.

Classic orientation: ``features`` are ``num_feature x num_spot`` and ``coords`` ``num_spot x 2``. All functions are
vectorized over spots and compute what :func:`smoother.tl.similarity_decay`, :func:`smoother.tl.corr_decay` and
:func:`smoother.tl.fit_decay` compute on AnnData; k-th neighbours are scikit-learn Euclidean nearest neighbours
(``k = 0``: the spot itself).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._core import decay as _decay
from ._core.persistence import coords_to_grid
from ._validation import (
    _torch_to_scipy,
    as_float_array,
    check_bool,
    check_choice,
    check_coords,
    check_int,
    check_random_state,
)

__all__ = [
    "coords_to_grid",
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

    The classic helper for coordinates or features: one scale for all columns, so the aspect ratio of
    coordinates is kept.

    Parameters
    ----------
    x
        Array or tensor (columns are features when ``min_zero``).
    min_zero
        Subtract each column's minimum first (columns then start at 0).
    return_scale
        Also return the scale (the largest absolute value after the shift), by which the data were divided.

    Returns
    -------
    ``torch.Tensor`` of the shape of ``x`` (and the scale, a 0-d tensor, with ``return_scale``). Constant data
    (every column constant with ``min_zero``, all zeros otherwise) have nothing to scale: they are divided by 1,
    so the result is 0 (the shifted data) and the scale returned is 1; ``x_norm * scale + shift`` always gives
    back ``x``.

    Raises
    ------
    TypeError
        ``x`` is not numeric, or ``min_zero``/``return_scale`` is not a bool.
    ValueError
        ``x`` is empty or contains NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> from smoother.utils import normalize_minmax
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> normalize_minmax(x).tolist()  # columns shifted to start at 0, then divided by 20
    [[0.0, 0.0], [0.1, 1.0]]
    >>> x_norm, scale = normalize_minmax(x, min_zero=False, return_scale=True)
    >>> scale.item(), x_norm[1].tolist()
    (30.0, [0.1, 1.0])
    """
    import torch

    min_zero = check_bool(min_zero, "min_zero")
    return_scale = check_bool(return_scale, "return_scale")
    if not torch.is_tensor(x):
        x = torch.as_tensor(as_float_array(x, "x", expected="a numeric array or tensor"))
    if x.is_complex() or x.dtype == torch.bool:
        msg = f"Expected `x` to hold real numbers, found dtype {x.dtype}."
        raise TypeError(msg)
    if x.numel() == 0 or x.ndim == 0:
        msg = f"Expected a non-empty array `x`, found shape {tuple(x.shape)}."
        raise ValueError(msg)
    if x.is_floating_point() and not torch.isfinite(x).all():
        msg = f"`x` contains {int((~torch.isfinite(x)).sum())} NaN or inf value(s); drop or impute them first."
        raise ValueError(msg)
    x_norm = x - x.min(dim=0, keepdim=True).values if min_zero else x.clone()
    scale = x_norm.abs().max()
    if scale == 0:  # constant data: nothing to scale, divide by 1
        scale = torch.ones_like(scale)
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
    F = _to_numpy(features) if not sp.issparse(features) else features
    if F.ndim != 2:
        msg = f"Expected `features` of shape (num_feature, num_spot), found shape {F.shape}."
        raise ValueError(msg)
    n_spot = F.shape[1]
    if n_spot != coords.shape[0]:
        msg = f"`features` has {n_spot} spots (columns) but `coords` has {coords.shape[0]} rows."
        raise ValueError(msg)
    values = F.data if sp.issparse(F) else F
    if not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        msg = f"`features` contains {bad} NaN or inf value(s): the cosine similarity is undefined; drop or impute them."
        raise ValueError(msg)
    return coords


def quantile_feature_similarity_decay(
    features, coords, max_k: int = 50, topk: bool = False, reduce: str = "pca", dim: int = 20
) -> pd.DataFrame:
    r"""Quantiles of the cosine similarity of features between ``k``-th nearest spatial neighbours.

    The data's own decay curve (the classic counterpart of :func:`smoother.tl.similarity_decay`): how alike the
    expression of a spot and of its ``k``-th nearest neighbour is, for growing ``k``. Compare it with a prior's
    curve (:meth:`smoother.SpatialLoss.calc_corr_decay_stats`) to choose ``rho``. ``features`` are best
    log-normalized expression (or any per-spot representation with ``reduce='none'``).

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

    Notes
    -----
    With :math:`z_i` the representation of spot :math:`i` (PCA scores or the features) and :math:`j` its
    ``k``-th nearest neighbour, the table holds quantiles over :math:`i` of
    :math:`\cos(z_i, z_j) = z_i^T z_j / (\lVert z_i \rVert \lVert z_j \rVert)`.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.utils import quantile_feature_similarity_decay
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> df = quantile_feature_similarity_decay(adata.X.T, adata.obsm["spatial"], max_k=10)
    >>> df.shape, df.loc[[1, 10], "Q50"].round(2).tolist()  # neighbours are alike, farther spots less so
    ((11, 6), [0.9, 0.78])
    """
    max_k = check_int(max_k, "max_k", low=0, example="50")
    topk = check_bool(topk, "topk")
    reduce = check_choice(reduce, "reduce", ("pca", "none"))
    dim = check_int(dim, "dim", low=1, example="20")
    coords = _check_features(features, coords)
    _decay.check_decay_args(coords.shape[0], 0, max_k, None)
    X = _reduce(features, reduce, dim)
    nbrs = _decay.knn_indices(coords, max_k)
    return _decay.similarity_decay_quantiles(X, nbrs, min_k=0, max_k=max_k, topk=topk)


def quantile_feature_similarity_neighbor(
    features, coords, k: int, reduce: str = "pca", dim: int = 20, n_null: int = 100, seed: int = 0
) -> pd.DataFrame:
    """Quantiles of the cosine similarity between each spot and its ``k`` nearest neighbours, and of a null.

    Tells whether the data have spatial dependency at all: when neighbouring spots are no more alike than random
    pairs, a spatial prior has nothing to use. The null shuffles both ends of those neighbour pairs
    independently, ``n_null`` times (at most 2,000,000 null pairs in all), with ``seed``. The classic
    counterpart of the ``similarity_cdf`` table of :func:`smoother.tl.similarity_decay`.

    Parameters
    ----------
    features, coords, reduce, dim
        As in :func:`quantile_feature_similarity_decay`.
    k
        Number of nearest neighbours of each spot whose pairs are used.
    n_null
        Number of shuffles for the null.
    seed
        Seed of the shuffles.

    Returns
    -------
    Long ``pandas.DataFrame`` with columns ``Quantile`` (0, 0.01, ..., 1), ``Data`` (``'Observed'`` or
    ``'Shuffled'``) and ``CumulativeDensity`` (the similarity at that quantile), 202 rows.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.utils import quantile_feature_similarity_neighbor
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> cdf = quantile_feature_similarity_neighbor(adata.X.T, adata.obsm["spatial"], k=6, n_null=5)
    >>> median = cdf[cdf["Quantile"] == 0.5].set_index("Data")["CumulativeDensity"]
    >>> cdf.shape, median.round(2).to_dict()  # neighbours are far more alike than shuffled pairs
    ((202, 3), {'Observed': 0.9, 'Shuffled': -0.03})
    """
    k = check_int(k, "k", low=1, example="6")
    reduce = check_choice(reduce, "reduce", ("pca", "none"))
    dim = check_int(dim, "dim", low=1, example="20")
    n_null = check_int(n_null, "n_null", low=1, example="100")
    seed = check_random_state(seed, "seed")
    coords = _check_features(features, coords)
    _decay.check_decay_args(coords.shape[0], 0, k, None)
    X = _reduce(features, reduce, dim)
    nbrs = _decay.knn_indices(coords, k)
    wide = _decay.similarity_cdf_table(X, nbrs, k=k, n_null=n_null, seed=seed)
    wide = wide.rename(columns={"quantile": "Quantile", "observed": "Observed", "shuffled": "Shuffled"})
    return wide.melt(id_vars=["Quantile"], var_name="Data", value_name="CumulativeDensity")


def get_neighbor_quantile_value_by_k(sq_mat, coords, min_k: int = 0, max_k: int = 50) -> pd.DataFrame:
    r"""Quantiles of ``sq_mat[i, j]`` over spots ``i`` with ``j`` the ``k``-th nearest neighbour of ``i``.

    Reads any spot x spot quantity (a correlation or covariance matrix, distances) along the neighbour
    structure, e.g. to draw the decay of a covariance you computed yourself. Only ``num_spot * (max_k + 1)``
    entries are read.

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

    Examples
    --------
    On a hexagonal (Visium-like) lattice the 6 nearest spots lie at distance 1, the 7th at :math:`\sqrt{3}`:

    >>> import smoother as sm
    >>> from scipy.spatial.distance import cdist
    >>> from smoother.utils import get_neighbor_quantile_value_by_k
    >>> coords = sm.datasets.lattice(400, "hex")
    >>> D = cdist(coords, coords)  # small example; any (sparse) spot x spot matrix works
    >>> get_neighbor_quantile_value_by_k(D, coords, min_k=1, max_k=7)["Q50"].round(3).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.732]
    """
    coords = check_coords(coords)
    n = coords.shape[0]
    if not hasattr(sq_mat, "shape"):
        sq_mat = as_float_array(sq_mat, "sq_mat", expected="a (num_spot, num_spot) matrix")
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

    One number per decay curve (e.g. the ``Q50`` column of :func:`quantile_feature_similarity_decay` against
    ``k``), so curves of the data and of priors can be compared; :func:`smoother.tl.fit_decay` does the same on
    AnnData.

    Parameters
    ----------
    x, y
        1D arrays of equal length.
    return_all_params
        Return ``(alpha, beta, theta)`` instead of ``beta`` only.

    Returns
    -------
    ``beta`` (float), or the array ``[alpha, beta, theta]``, as fitted (the classic result). A degenerate fit —
    a flat or rising curve, a near-straight line fitted as a huge slow exponential (``beta`` near 0), a poor fit —
    gives a ``UserWarning`` saying why: that ``beta`` is not a decay rate.

    Notes
    -----
    Least squares over :math:`(\alpha, \beta, \theta)` of :math:`\sum_i (y_i - \alpha e^{-\beta x_i} -
    \theta)^2`. The fit is degenerate when the curve is flat or rising, when :math:`\beta` is near 0 with
    :math:`\alpha` and :math:`\theta` large and of opposite sign, or when :math:`R^2 < 0.5`.

    Examples
    --------
    >>> import numpy as np
    >>> from smoother.utils import estimate_decay_rate
    >>> k = np.arange(1, 31.0)
    >>> y = 0.8 * np.exp(-0.2 * k) + 0.1
    >>> round(estimate_decay_rate(k, y), 3), estimate_decay_rate(k, y, return_all_params=True).round(3).tolist()
    (0.2, [0.8, 0.2, 0.1])
    """
    import warnings

    return_all_params = check_bool(return_all_params, "return_all_params")
    x = as_float_array(x, "x", expected="a 1D numeric array").ravel()
    y = as_float_array(y, "y", expected="a 1D numeric array").ravel()
    if x.shape != y.shape:
        msg = f"Expected `x` and `y` of the same length, found {x.size} and {y.size}."
        raise ValueError(msg)
    *params, problem = _decay.fit_decay_rate(x, y)
    if problem:
        warnings.warn(f"The decay-rate fit is degenerate: {problem}.", UserWarning, stacklevel=2)
    return np.asarray(params) if return_all_params else params[1]
