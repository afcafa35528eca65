r"""Spatial weight matrices from coordinates, expression and histology (classic API of smoother-omics 1.1.0).

The graphs and precision matrices are the same as those of the AnnData API (:func:`smoother.pp.spatial_graph`,
``sm.tl.*``'s priors). The classic API hands out torch tensors (sparse COO, float32, as smoother-omics 1.1.0
did); internally the weights are kept as scipy CSR float64. The ``*_dense`` functions densify the sparse
result (they exist for backward compatibility; use them on small problems only).

Spatial process models (``W`` = weights clipped at 0, ``D = diag(row sums of W)``):

========  ==========================================================
model     precision :math:`Q`
========  ==========================================================
``sma``   :math:`[(I + \rho W)(I + \rho W)^T]^{-1}` (dense)
``sar``   :math:`(I - \rho W)^T (I - \rho W)`
``isar``  as ``sar`` with ``W`` row-scaled first
``car``   :math:`I - \rho W`
``icar``  :math:`D - \rho W`
========  ==========================================================
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from . import _similarity as _sim
from ._core.graph import fill_isolated, knn_graph, radius_graph, row_normalize
from ._core.precision import DENSE_WARN, not_pd_message, precision
from ._core.quadratic import to_torch_sparse
from ._settings import logger
from ._validation import check_bool, check_coords, check_prior, check_real, check_rho, check_square_graph

__all__ = [
    "SpatialWeightMatrix",
    "coordinate_to_weights_dist_dense",
    "coordinate_to_weights_dist_sparse",
    "coordinate_to_weights_knn_dense",
    "coordinate_to_weights_knn_sparse",
    "normalize_minmax",
    "sparse_weights_to_inv_cov",
    "weights_to_inv_cov",
]


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def _to_torch(W: sp.spmatrix) -> torch.Tensor:
    """CSR -> coalesced torch sparse COO float32 (the classic representation)."""
    return to_torch_sparse(W, dtype=torch.float32)


def _warn_dense(n: int, what: str) -> None:
    if n > DENSE_WARN:
        warnings.warn(
            f"{what} of {n} spots builds a dense {n} x {n} matrix; use the sparse variant instead.",
            UserWarning,
            stacklevel=3,
        )


def _warn_negative(W: sp.csr_matrix, what: str) -> None:
    """Negative weights are never dropped silently: say how many there are and what the priors do with them."""
    n_neg = int((W.data < 0).sum()) if W.nnz else 0
    if n_neg:
        warnings.warn(
            f"{what} has {n_neg} negative weight(s) (smallest {W.data.min():.3g}); the spatial priors need "
            "non-negative weights (similarities, not correlations or distances) and set them to 0, so those edges "
            "carry no spatial interaction. Shift or clip the values yourself to silence this warning.",
            UserWarning,
            stacklevel=3,
        )


#: A feature vector counts as zero when its norm is at most this times its scale (1 for z-scored PCA scores, else
#: the largest |feature|) times sqrt(n_features): above round-off, far below any real difference between spots.
_ZERO_RTOL = 1e-12


def _warn_zero_vectors(n_zero: int) -> None:
    if n_zero:
        warnings.warn(
            f"{n_zero} spot(s) have a zero feature vector (e.g. all-zero or constant expression); cosine similarity "
            "is undefined for them, so their edges keep their weight (similarity 1). Remove empty spots first, or "
            "use dist_metric='euclidean'.",
            UserWarning,
            stacklevel=4,
        )


def normalize_minmax(x, min_zero: bool = True, return_scale: bool = False):
    """Shift columns to start at 0 (``min_zero``) and divide by the global largest absolute value.

    The classic helper that brings coordinates (spots x dimensions) into ``[0, 1]`` while keeping their aspect
    ratio (one scale for all columns).

    Parameters
    ----------
    x
        2D array or tensor.
    min_zero
        Subtract the column minima first.
    return_scale
        Also return the divisor.

    Returns
    -------
    The normalized data as a torch tensor (and the scale, a 0-d tensor, when ``return_scale``).

    Examples
    --------
    >>> import numpy as np
    >>> from smoother.weights import normalize_minmax
    >>> coords = np.array([[10.0, 100.0], [30.0, 300.0]])
    >>> normalize_minmax(coords).tolist()  # both columns divided by 200
    [[0.0, 0.0], [0.1, 1.0]]
    """
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    t = t - t.min(dim=0, keepdim=True).values if min_zero else t.clone()
    scale = t.abs().max()
    t = t / scale
    return (t, scale) if return_scale else t


def _scale_coords(coords: np.ndarray) -> tuple[np.ndarray, float]:
    """Classic coordinate scaling: columns shifted to start at 0, then divided by the largest value."""
    shifted = coords - coords.min(axis=0)
    scale = float(np.abs(shifted).max())
    if scale == 0:
        msg = "All spots share the same coordinates; cannot scale them (pass distinct coordinates)."
        raise ValueError(msg)
    return shifted / scale, scale


def _check_metric_euclidean(dist_metric: str) -> None:
    if not isinstance(dist_metric, str) or dist_metric.lower() not in ("euclidean", "eu"):
        msg = f"Only the 'euclidean' `dist_metric` is supported for spatial distances, found {dist_metric!r}."
        raise ValueError(msg)


def _check_positive(value, name: str, example: str) -> float:
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    return check_real(value, name, low=0.0, low_open=True, example=example)


# --------------------------------------------------------------------------------------------------------------
# module functions (classic names)
# --------------------------------------------------------------------------------------------------------------
def _knn_csr(coords, k, symmetric, row_scale) -> sp.csr_matrix:
    check_bool(symmetric, "symmetric")
    check_bool(row_scale, "row_scale")
    W, _ = knn_graph(coords, k, symmetrize="mutual" if symmetric else "none", row_scale=row_scale)
    return W


def _dist_csr(coords, scale_coords, radius_cutoff, band_width, dist_metric, row_scale) -> sp.csr_matrix:
    coords = check_coords(coords)
    check_bool(scale_coords, "scale_coords")
    check_bool(row_scale, "row_scale")
    radius = _check_positive(radius_cutoff, "radius_cutoff", "1.0")
    bw = _check_positive(band_width, "band_width", "0.1")
    _check_metric_euclidean(dist_metric)
    if scale_coords:
        coords, scale = _scale_coords(coords)
        radius = radius / scale
    W, _ = radius_graph(coords, radius, bandwidth=bw, row_scale=row_scale)
    return W


def coordinate_to_weights_knn_sparse(coords, k=6, symmetric=True, row_scale=True) -> torch.Tensor:
    """Binary k-nearest-neighbour spatial weights (no self edges).

    The classic way to build the spatial graph from coordinates; the AnnData equivalent is
    :func:`smoother.pp.spatial_graph`. Use ``k=6`` on Visium's hexagonal lattice and ``k=4`` on a square grid.

    Parameters
    ----------
    coords
        Spatial coordinates, ``num_spot x 2`` (or 3).
    k
        Number of nearest neighbours of each spot (the spot itself excluded).
    symmetric
        Keep only mutual neighbours (the matrix is then symmetric).
    row_scale
        Scale every row to sum to 1.

    Returns
    -------
    Sparse COO float32 tensor, ``num_spot x num_spot``. A spot left without neighbours gets a self edge of
    weight 1.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_knn_sparse
    >>> coords = sm.datasets.lattice(9, "square")  # a 3 x 3 grid
    >>> W = coordinate_to_weights_knn_sparse(coords, k=4, row_scale=False)
    >>> tuple(W.shape), W.to_dense()[4].nonzero().ravel().tolist()  # the centre's 4 neighbours
    ((9, 9), [1, 3, 5, 7])
    """
    return _to_torch(_knn_csr(coords, k, symmetric, row_scale))


def coordinate_to_weights_dist_sparse(
    coords, scale_coords=True, radius_cutoff=1.0, band_width=0.1, dist_metric="euclidean", row_scale=True
) -> torch.Tensor:
    r"""Gaussian spatial weights between spots closer than ``radius_cutoff`` (no self edges).

    Use it instead of kNN weights when spots are irregularly spaced (e.g. single-cell resolution data), so that
    closer spots interact more strongly.

    Parameters
    ----------
    coords
        Spatial coordinates, ``num_spot x 2`` (or 3).
    scale_coords
        Shift the coordinates to start at 0 and divide them by their largest value first; ``radius_cutoff``
        (given in the unit of ``coords``) is divided by the same factor, while ``band_width`` applies to the
        scaled coordinates (as in smoother-omics 1.1.0).
    radius_cutoff
        Pairs with distance ``<= radius_cutoff`` are joined.
    band_width
        Width of the Gaussian kernel.
    dist_metric
        Only ``'euclidean'``.
    row_scale
        Scale every row to sum to 1.

    Returns
    -------
    Sparse COO float32 tensor, ``num_spot x num_spot``; isolated spots get a self edge of weight 1.

    Notes
    -----
    The weight of a pair at distance :math:`d \le` ``radius_cutoff`` is :math:`\exp(-d^2 / (2 h^2))` with
    :math:`h` = ``band_width``.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_dist_sparse
    >>> coords = sm.datasets.lattice(9, "square")  # a 3 x 3 grid, spacing 1
    >>> W = coordinate_to_weights_dist_sparse(
    ...     coords, scale_coords=False, radius_cutoff=1.5, band_width=1.0, row_scale=False
    ... )
    >>> W.to_dense()[4].double().numpy().round(3).tolist()  # the centre: exp(-1/2) to its 4 sides, exp(-1) diagonally
    [0.368, 0.607, 0.368, 0.607, 0.0, 0.607, 0.368, 0.607, 0.368]
    """
    return _to_torch(_dist_csr(coords, scale_coords, radius_cutoff, band_width, dist_metric, row_scale))


def coordinate_to_weights_knn_dense(coords, k=6, symmetric=True, row_scale=True) -> torch.Tensor:
    """Dense version of :func:`coordinate_to_weights_knn_sparse` (the same matrix, densified).

    Kept for backward compatibility; it holds ``num_spot^2`` numbers, so use it on small problems only.

    Examples
    --------
    >>> import torch
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_knn_dense, coordinate_to_weights_knn_sparse
    >>> coords = sm.datasets.lattice(100, "square")
    >>> W = coordinate_to_weights_knn_dense(coords, k=4)
    >>> W.layout, torch.equal(W, coordinate_to_weights_knn_sparse(coords, k=4).to_dense())
    (torch.strided, True)
    """
    W = _knn_csr(coords, k, symmetric, row_scale)
    _warn_dense(W.shape[0], "coordinate_to_weights_knn_dense")
    return torch.from_numpy(W.toarray()).float()


def coordinate_to_weights_dist_dense(
    coords, scale_coords=True, q_threshold=0.001, band_width=0.1, dist_metric="euclidean", row_scale=True
) -> torch.Tensor:
    """Dense Gaussian weights of pairs whose distance is below the ``q_threshold`` quantile of all distances.

    The quantile is taken over all ``num_spot^2`` entries of the pairwise distance matrix (diagonal included),
    as in smoother-omics 1.1.0; the weights are then those of :func:`coordinate_to_weights_dist_sparse` with
    that radius. Dense: for small problems only.

    Returns
    -------
    Dense float32 tensor, ``num_spot x num_spot``.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_dist_dense
    >>> coords = sm.datasets.lattice(100, "square")
    >>> W = coordinate_to_weights_dist_dense(coords, q_threshold=0.05, row_scale=False)
    >>> tuple(W.shape), round((W > 0).sum(1).float().mean().item(), 1)  # neighbours per spot
    ((100, 100), 4.4)
    """
    from scipy.spatial.distance import pdist

    coords = check_coords(coords)
    check_bool(scale_coords, "scale_coords")
    _check_metric_euclidean(dist_metric)
    q_threshold = check_real(q_threshold, "q_threshold", low=0.0, high=1.0, example="0.001")
    n = coords.shape[0]
    _warn_dense(n, "coordinate_to_weights_dist_dense")
    if scale_coords:
        coords, _ = _scale_coords(coords)
    d = pdist(coords)
    # quantile of the n^2 entries of the square distance matrix: n zeros plus every pair twice
    radius = float(np.quantile(np.concatenate([np.zeros(n), d, d]), q_threshold))
    radius = max(radius, np.finfo(np.float64).tiny)
    W = _dist_csr(coords, False, radius, band_width, dist_metric, row_scale)
    return torch.from_numpy(W.toarray()).float()


def sparse_weights_to_inv_cov(weights, model, rho=1, standardize=False, return_sparse=False) -> torch.Tensor:
    r"""Precision (inverse covariance) matrix of a spatial process model from spatial weights.

    The matrix :math:`Q` whose quadratic form :math:`\beta^T Q \beta` is the spatial loss; the formula of each
    model is in the table of :mod:`smoother.weights`. Prefer ``return_sparse=True``: every model but ``'sma'``
    is sparse.

    Parameters
    ----------
    weights
        Spatial weights, ``num_spot x num_spot`` (torch sparse/dense tensor, scipy sparse or numpy array).
    model
        One of ``'sma'``, ``'sar'``, ``'isar'``, ``'car'``, ``'icar'`` (see the module docstring).
    rho
        Spatial autocorrelation in ``[0, 1]``.
    standardize
        Rescale so that the implied covariance has unit variance at every spot (for a singular precision:
        unit diagonal, with a warning). Computed from a sparse factorization, not a dense inverse.
    return_sparse
        Return a sparse COO tensor (for ``'sma'``, whose precision is dense, the dense matrix in sparse form).

    Returns
    -------
    float32 tensor ``num_spot x num_spot``.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_knn_sparse, sparse_weights_to_inv_cov
    >>> W = coordinate_to_weights_knn_sparse(sm.datasets.lattice(9, "square"), k=4, row_scale=False)
    >>> Q = sparse_weights_to_inv_cov(W, "icar", rho=0.9, return_sparse=True)  # D - 0.9 W
    >>> Q.to_dense()[4].double().numpy().round(2).tolist()  # the centre: 4 neighbours
    [0.0, -0.9, 0.0, -0.9, 4.0, -0.9, 0.0, -0.9, 0.0]
    """
    Q = precision(weights, model, rho, standardize=standardize)
    if return_sparse:
        return _to_torch(Q)
    if sp.issparse(Q):
        _warn_dense(Q.shape[0], "A dense precision")
        Q = Q.toarray()
    return torch.from_numpy(np.asarray(Q)).float()


def weights_to_inv_cov(weights, model, rho=1, standardize=False) -> torch.Tensor:
    """Dense precision matrix of a spatial process model (see :func:`sparse_weights_to_inv_cov`).

    Like smoother-omics 1.1.0, warns when the precision of a proper model is not positive definite (checked
    below 5,000 spots). Dense: for small problems; :func:`sparse_weights_to_inv_cov` scales.

    Returns
    -------
    Dense float32 tensor ``num_spot x num_spot``.

    Examples
    --------
    >>> import torch
    >>> import smoother as sm
    >>> from smoother.weights import coordinate_to_weights_knn_sparse, weights_to_inv_cov
    >>> W = coordinate_to_weights_knn_sparse(sm.datasets.lattice(9, "square"), k=4, row_scale=False)
    >>> Q = weights_to_inv_cov(W, "car", rho=0.2)  # I - 0.2 W
    >>> Q.diagonal().tolist() == [1.0] * 9, bool(torch.linalg.eigvalsh(Q).min() > 0)  # positive definite
    (True, True)
    """
    model = check_prior(model)
    rho = check_rho(rho, model)
    W = check_square_graph(weights, name="weights")
    Q = precision(W, model, rho, standardize=standardize)
    Qd = Q.toarray() if sp.issparse(Q) else np.asarray(Q)
    n = Qd.shape[0]
    _warn_dense(n, "weights_to_inv_cov")
    singular = model in ("icar", "isar") and rho == 1.0
    if not standardize and not singular and n < 5000:
        try:
            np.linalg.cholesky(0.5 * (Qd + Qd.T))
        except np.linalg.LinAlgError:
            warnings.warn(not_pd_message(model, rho, W), UserWarning, stacklevel=2)
    return torch.from_numpy(Qd).float()


# --------------------------------------------------------------------------------------------------------------
# SpatialWeightMatrix
# --------------------------------------------------------------------------------------------------------------
class SpatialWeightMatrix:
    """Spatial weight matrix of one sample: which spots interact, and how strongly.

    The classic object that carries the spatial graph: build it from coordinates (:meth:`calc_weights_knn`,
    :meth:`calc_weights_dist`), optionally weaken edges across boundaries (:meth:`scale_by_expr` on
    log-normalized or count expression, :meth:`scale_by_histology`, :meth:`scale_by_identity`), then pass it to
    :class:`smoother.SpatialLoss` or ask it for a precision matrix (:meth:`get_inv_cov`). The AnnData API does the
    same with :mod:`smoother.pp`.

    Attributes
    ----------
    swm
        Unscaled spatial weights, torch sparse COO float32, ``num_spot x num_spot``.
    swm_scaled
        Weights after scaling by expression / histology / identity / an external similarity; equal to ``swm``
        until scaled.
    inv_covs
        Cache of precision matrices returned by :meth:`get_inv_cov` (``cached=True``), keyed
        ``'{model}_{rho}_{sd|nsd}_{sp|ds}'``; cleared whenever the weights change.
    config
        Settings used to build (``'weight'``) and scale (``'similarity'``) the weights.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(100, layout="square", n_genes=20, noise="poisson", seed=0)
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(adata.obsm["spatial"], k=4, verbose=False)
    >>> swm.scale_by_expr(adata.X.T, verbose=False)  # the classic API is num_gene x num_spot
    >>> swm
    SpatialWeightMatrix(num_spot=100, nnz=364, method=knn, scaled_by=expression)
    >>> Q = swm.get_inv_cov("icar", rho=0.99)
    >>> tuple(Q.shape), Q.layout
    ((100, 100), torch.sparse_coo)
    """

    def __init__(self) -> None:
        self._W: sp.csr_matrix | None = None
        self._W_scaled: sp.csr_matrix | None = None
        self._swm_t: torch.Tensor | None = None
        self._swm_scaled_t: torch.Tensor | None = None
        self.inv_covs: dict = {}
        self.config: dict = {}

    # ---- constructors and state ---------------------------------------------------------------------------
    @classmethod
    def from_graph(cls, W, *, verbose: bool = False) -> SpatialWeightMatrix:
        """A weight matrix from an existing graph (e.g. ``adata.obsp['spatial_connectivities']``).

        Spots without any edge get a self edge of weight 1, as for graphs built here. Negative weights are kept
        but trigger a warning: the priors set them to 0.
        """
        obj = cls()
        W = check_square_graph(W, name="W")
        _warn_negative(W, "`W`")
        obj._set_weights(fill_isolated(W))
        obj.config["weight"] = {"method": "graph"}
        obj._check_swm_stats(scaled=False, verbose=verbose)
        return obj

    def _set_weights(self, W: sp.csr_matrix) -> None:
        W = sp.csr_matrix(W, dtype=np.float64)
        W.sort_indices()
        self._W = W
        self._W_scaled = W
        self._swm_t = None
        self._swm_scaled_t = None
        self.inv_covs = {}
        self.config.pop("similarity", None)

    def _set_scaled(self, W: sp.csr_matrix) -> None:
        W = sp.csr_matrix(W, dtype=np.float64)
        W.sort_indices()
        self._W_scaled = W
        self._swm_scaled_t = None
        self.inv_covs = {}

    @property
    def swm(self) -> torch.Tensor | None:
        """Unscaled weights, torch sparse COO float32 ``num_spot x num_spot``."""
        if self._W is None:
            return None
        if self._swm_t is None:
            self._swm_t = _to_torch(self._W)
        return self._swm_t

    @swm.setter
    def swm(self, value) -> None:
        if value is None:
            self._W = self._W_scaled = self._swm_t = self._swm_scaled_t = None
            self.inv_covs = {}
            return
        W = check_square_graph(value, name="swm")
        _warn_negative(W, "`swm`")
        self._set_weights(W)

    @property
    def swm_scaled(self) -> torch.Tensor | None:
        """Scaled weights, torch sparse COO float32 ``num_spot x num_spot``."""
        if self._W_scaled is None:
            return None
        if self._W_scaled is self._W:
            return self.swm
        if self._swm_scaled_t is None:
            self._swm_scaled_t = _to_torch(self._W_scaled)
        return self._swm_scaled_t

    @swm_scaled.setter
    def swm_scaled(self, value) -> None:
        if value is None:
            self._W_scaled = self._W
            self._swm_scaled_t = None
            self.inv_covs = {}
            return
        n = None if self._W is None else self._W.shape[0]
        W = check_square_graph(value, n, name="swm_scaled")
        _warn_negative(W, "`swm_scaled`")
        self._set_scaled(W)

    @property
    def num_spot(self) -> int:
        """Number of spots."""
        self._require()
        return self._W.shape[0]

    def _require(self) -> None:
        if self._W is None:
            msg = "The spatial weight matrix is not initialized; call `calc_weights_knn` or `calc_weights_dist` first."
            raise ValueError(msg)

    def weights_csr(self, scaled: bool = True) -> sp.csr_matrix:
        """The (scaled) weights as scipy CSR float64 (no copy; do not modify in place)."""
        self._require()
        return self._W_scaled if scaled else self._W

    def _check_swm_stats(self, scaled: bool = False, verbose: bool = True) -> None:
        """Log the number of spots and the average number of neighbours (at info level)."""
        self._require()
        W = self._W_scaled if scaled else self._W
        if verbose:
            n = W.shape[0]
            logger.info(
                "Number of spots: %d. Average number of neighbors per spot: %.2f.",
                n,
                W.count_nonzero() / max(n, 1),
            )

    # ---- building ------------------------------------------------------------------------------------------
    def calc_weights_knn(self, coords, k=6, symmetric=True, row_scale=False, verbose=True) -> None:
        """Build binary k-nearest-neighbour weights (see :func:`coordinate_to_weights_knn_sparse`).

        Parameters
        ----------
        coords
            Spatial coordinates, ``num_spot x 2`` (or 3).
        k
            Number of nearest neighbours to keep.
        symmetric
            Keep only mutual neighbours.
        row_scale
            Scale every row to sum to 1.
        verbose
            Log a summary of the weights (visible with ``sm.settings.verbosity >= 2``).
        """
        self._set_weights(_knn_csr(coords, k, symmetric, row_scale))
        self._check_swm_stats(scaled=False, verbose=verbose)
        self.config["weight"] = {
            "method": "knn",
            "k": int(k),
            "symmetric": bool(symmetric),
            "row_scale": bool(row_scale),
        }

    def calc_weights_dist(
        self,
        coords,
        scale_coords=True,
        radius_cutoff=1.0,
        band_width=0.1,
        dist_metric="euclidean",
        row_scale=True,
        verbose=True,
    ) -> None:
        """Build Gaussian distance-band weights (see :func:`coordinate_to_weights_dist_sparse`).

        Parameters
        ----------
        coords
            Spatial coordinates, ``num_spot x 2`` (or 3).
        scale_coords
            Scale the coordinates to [0, 1] first (``radius_cutoff`` stays in the unit of ``coords``).
        radius_cutoff
            Distance threshold, in the unit of ``coords``.
        band_width
            Width of the Gaussian kernel (in scaled units when ``scale_coords``).
        dist_metric
            Only ``'euclidean'``.
        row_scale
            Scale every row to sum to 1.
        verbose
            Log a summary of the weights.
        """
        self._set_weights(_dist_csr(coords, scale_coords, radius_cutoff, band_width, dist_metric, row_scale))
        self._check_swm_stats(scaled=False, verbose=verbose)
        self.config["weight"] = {
            "method": "dist",
            "scale_coords": bool(scale_coords),
            "radius_cutoff": float(radius_cutoff),
            "band_width": float(band_width),
            "dist_metric": dist_metric,
            "row_scale": bool(row_scale),
        }

    # ---- scaling -------------------------------------------------------------------------------------------
    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        W = self._W.tocoo()
        return W.row.astype(np.int64), W.col.astype(np.int64), W.data

    def _finish_scaling(self, values: np.ndarray, row_scale: bool, verbose: bool) -> sp.csr_matrix:
        rows, cols, _ = self._edges()
        n = self._W.shape[0]
        S = sp.csr_matrix((values, (rows, cols)), shape=(n, n))
        S.eliminate_zeros()
        S = fill_isolated(S)
        if row_scale:
            S = row_normalize(S)
        self._set_scaled(S)
        self._check_swm_stats(scaled=True, verbose=verbose)
        return S

    def scale_by_similarity(self, pairwise_sim, row_scale=False, return_swm=False, verbose=True):
        """Multiply every edge of ``swm`` by an external pairwise similarity.

        Parameters
        ----------
        pairwise_sim
            Similarity, ``num_spot x num_spot``: dense (numpy / torch) or sparse (scipy / torch). Only its entries
            on the edges of ``swm`` are read; missing sparse entries count as 0.
        row_scale
            Scale every row of the result to sum to 1.
        return_swm
            Return ``swm_scaled``.
        verbose
            Log a summary of the weights.

        Returns
        -------
        ``swm_scaled`` (torch sparse COO) when ``return_swm``, else None. Spots left without any edge get a self
        edge of weight 1.
        """
        self._require()
        check_bool(row_scale, "row_scale")
        n = self._W.shape[0]
        rows, cols, w = self._edges()
        S = pairwise_sim
        if torch.is_tensor(S):
            S = S.detach().cpu()
            if S.is_sparse or S.layout != torch.strided:
                S = check_square_graph(S, name="pairwise_sim")
            else:
                S = S.double().numpy()
        if sp.issparse(S):
            S = sp.csr_matrix(S, dtype=np.float64)
            if S.shape != (n, n):
                msg = f"`pairwise_sim` has shape {S.shape}, expected ({n}, {n}) to match the weights."
                raise ValueError(msg)
            vals = np.asarray(S[rows, cols]).ravel()
        else:
            S = np.asarray(S, dtype=np.float64)
            if S.shape != (n, n):
                msg = f"`pairwise_sim` has shape {S.shape}, expected ({n}, {n}) to match the weights."
                raise ValueError(msg)
            vals = S[rows, cols]
        if not np.isfinite(vals).all():
            msg = "`pairwise_sim` contains NaN or inf on edges of the spatial graph."
            raise ValueError(msg)
        scaled = w * vals
        if (scaled < 0).any():
            _warn_negative(sp.csr_matrix((scaled, (rows, cols)), shape=(n, n)), "The scaled weights (`pairwise_sim`)")
        self._finish_scaling(scaled, row_scale, verbose)
        return self.swm_scaled if return_swm else None

    def scale_by_identity(self, spot_ids, boundary_connectivity=0, row_scale=False, return_swm=False, verbose=True):
        """Set the weight of every edge between spots of different labels to ``boundary_connectivity``.

        Parameters
        ----------
        spot_ids
            Label of every spot, length ``num_spot`` (array, list or pandas Series).
        boundary_connectivity
            Weight of edges between different labels, ``>= 0`` (0: no interaction across labels); a negative value
            raises ``ValueError`` (the priors could not use it).
        row_scale
            Scale every row of the result to sum to 1.
        return_swm
            Return ``swm_scaled``.
        verbose
            Log a summary of the weights.
        """
        self._require()
        check_bool(row_scale, "row_scale")
        n = self._W.shape[0]
        ids = spot_ids.to_numpy() if hasattr(spot_ids, "to_numpy") else np.asarray(spot_ids)
        if ids.ndim != 1 or ids.shape[0] != n:
            msg = f"`spot_ids` must have one label per spot ({n}), found shape {ids.shape}."
            raise ValueError(msg)
        bc = check_real(boundary_connectivity, "boundary_connectivity", low=0.0, example="0")
        rows, cols, w = self._edges()
        same = ids[rows] == ids[cols]
        self._finish_scaling(np.where(same, w, float(bc)), row_scale, verbose)
        self.config["similarity"] = {"source": "identity", "boundary_connectivity": float(bc)}
        return self.swm_scaled if return_swm else None

    def _check_feature_args(self, dist_metric, reduce, dim, row_scale) -> tuple[str, str, int]:
        """Checks shared by :meth:`scale_by_expr` and :meth:`scale_by_histology`; returns ``(metric, reduce, dim)``."""
        self._require()
        metric = _sim.check_metric(dist_metric)
        red = _sim.check_reduce(reduce)
        dim = _sim.check_dim(dim)
        check_bool(row_scale, "row_scale")
        return metric, red, dim

    def _scale_by_features(self, F: np.ndarray, dist_metric, reduce, dim, row_scale, verbose) -> None:
        scale = 1.0 if reduce == "pca" else (float(np.abs(F).max()) if F.size else 0.0)
        tol = _ZERO_RTOL * scale * np.sqrt(max(F.shape[1], 1))
        F = _sim.reduce_features(F, reduce, dim)
        rows, cols, w = self._edges()
        vals = _sim.edge_similarity(F, rows, cols, dist_metric=dist_metric, nonneg=True)
        if dist_metric == "cosine":  # a zero vector has no direction: its edges keep their weight (similarity 1)
            zero = np.linalg.norm(F, axis=1) <= tol
            on_zero = (zero[rows] | zero[cols]) & (rows != cols)
            vals[on_zero] = 1.0
            touched = np.zeros(zero.shape[0], dtype=bool)
            touched[rows[on_zero]] = True
            touched[cols[on_zero]] = True
            _warn_zero_vectors(int((zero & touched).sum()))
        self._finish_scaling(w * vals, row_scale, verbose)

    def scale_by_expr(self, expr, dist_metric="cosine", reduce="pca", dim=10, row_scale=False, verbose=True) -> None:
        r"""Scale the weights by the transcriptional similarity of neighbouring spots.

        Similarities are computed on the edges only: cosine similarity (negatives clipped at 0) or
        :math:`\exp(-d^2 / (2 \cdot 0.1^2))` of the euclidean distance of features divided by their largest
        absolute value; with ``reduce='pca'`` on the top ``dim`` principal components of the z-scored genes.
        The cosine of a zero feature vector (an all-zero spot, or constant expression) is undefined: such edges
        keep their weight (similarity 1), with a warning giving the number of spots (smoother-omics 1.1.0 gave
        them similarity 0, which cut every edge of constant data).

        Parameters
        ----------
        expr
            Expression, ``num_gene x num_spot`` (numpy, torch or scipy sparse, which is densified).
        dist_metric
            ``'cosine'`` or ``'euclidean'``.
        reduce
            ``'pca'``, ``'mean'`` or ``'none'`` (the last two use the genes as they are).
        dim
            Number of principal components.
        row_scale
            Scale every row of the result to sum to 1.
        verbose
            Log a summary of the weights.
        """
        metric, red, dim = self._check_feature_args(dist_metric, reduce, dim, row_scale)
        X = expr
        if torch.is_tensor(X):
            X = X.detach().cpu()
            X = X.to_dense() if X.layout != torch.strided else X
            X = X.double().numpy()
        elif sp.issparse(X):
            X = X.toarray()
        X = np.asarray(X, dtype=np.float64)
        n = self._W.shape[0]
        if X.ndim != 2 or X.shape[1] != n:
            hint = ""
            if X.ndim == 2 and X.shape[0] == n:
                hint = " (transpose it: the classic API takes num_gene x num_spot)"
            msg = f"`expr` must have shape (num_gene, {n}), found {X.shape}{hint}."
            raise ValueError(msg)
        if not np.isfinite(X).all():
            msg = "`expr` contains NaN or inf values."
            raise ValueError(msg)
        self._scale_by_features(X.T, metric, red, dim, row_scale, verbose)
        self.config["similarity"] = {"source": "expression", "dist_metric": dist_metric, "reduce": reduce, "dim": dim}

    def scale_by_histology(
        self,
        coords,
        image,
        scale_factors: dict,
        dist_metric="euclidean",
        reduce="pca",
        dim=10,
        row_scale=False,
        verbose=True,
    ) -> None:
        """Scale the weights by the histological similarity of neighbouring spots.

        Every spot is described by the pixels of the square patch of its diameter around it on ``image``
        (``reduce='mean'``: by its mean colour); similarities as in :meth:`scale_by_expr`.

        Parameters
        ----------
        coords
            Spot centres in full-resolution pixels, ``num_spot x 2``; ``coords[:, 0]`` indexes the first axis of
            ``image`` (as in smoother-omics 1.1.0).
        image
            Histology image, ``height x width x channel``.
        scale_factors
            The dict of 10x Visium's ``scalefactors_json.json``: ``'spot_diameter_fullres'`` (spot size in
            full-resolution pixels) and ``'tissue_hires_scalef'`` (full resolution -> ``image``).
        dist_metric
            ``'euclidean'`` or ``'cosine'``.
        reduce
            ``'pca'`` (PCA of the patches), ``'mean'`` (mean colour) or ``'none'`` (raw patches).
        dim
            Number of principal components.
        row_scale
            Scale every row of the result to sum to 1.
        verbose
            Log a summary of the weights.
        """
        metric, red, dim = self._check_feature_args(dist_metric, reduce, dim, row_scale)
        if not isinstance(scale_factors, dict):
            msg = "`scale_factors` must be the dict of 10x Visium's scalefactors_json.json."
            raise TypeError(msg)
        xy = check_coords(coords)
        n = self._W.shape[0]
        if xy.shape != (n, 2):
            msg = f"`coords` must have shape ({n}, 2) to match the weights, found {xy.shape}."
            raise ValueError(msg)
        F = _sim.histology_features(xy, image, scale_factors, padding=red != "mean")
        self._scale_by_features(F, metric, red, dim, row_scale, verbose)
        self.config["similarity"] = {
            "source": "histology",
            "scale_factors": dict(scale_factors),
            "dist_metric": dist_metric,
            "reduce": reduce,
            "dim": dim,
        }

    # ---- precision -----------------------------------------------------------------------------------------
    def get_precision(self, model, rho=1, standardize=False):
        """Precision matrix of ``model`` on the scaled weights as scipy CSR float64 (dense ndarray for 'sma').

        Not cached. The formulas are in the table of :mod:`smoother.weights`.
        """
        self._require()
        return precision(self._W_scaled, model, rho, standardize=standardize)

    def get_inv_cov(self, model, rho=1, cached=True, standardize=False, return_sparse=True) -> torch.Tensor:
        """Precision (inverse covariance) matrix of a spatial process model on ``swm_scaled``.

        Parameters
        ----------
        model
            One of ``'sma'``, ``'sar'``, ``'isar'``, ``'car'``, ``'icar'``.
        rho
            Spatial autocorrelation in ``[0, 1]``.
        cached
            Reuse (and store) the result in :attr:`inv_covs`.
        standardize
            Rescale to unit implied variance (see :func:`sparse_weights_to_inv_cov`).
        return_sparse
            Return a sparse COO tensor (else dense).

        Returns
        -------
        float32 tensor ``num_spot x num_spot``.
        """
        self._require()
        model = check_prior(model)
        rho = check_rho(rho, model)
        if not cached:
            return sparse_weights_to_inv_cov(self._W_scaled, model, rho, standardize, return_sparse)
        key = f"{model}_{rho}_{'sd' if standardize else 'nsd'}_{'sp' if return_sparse else 'ds'}"
        if self.inv_covs.get(key) is None:
            self.inv_covs[key] = sparse_weights_to_inv_cov(self._W_scaled, model, rho, standardize, return_sparse)
        return self.inv_covs[key]

    def __repr__(self) -> str:
        if self._W is None:
            return "SpatialWeightMatrix(not initialized)"
        n = self._W.shape[0]
        scaled = self.config.get("similarity", {}).get("source", "none")
        method = self.config.get("weight", {}).get("method")
        return f"SpatialWeightMatrix(num_spot={n}, nnz={self._W.nnz}, method={method}, scaled_by={scaled})"
