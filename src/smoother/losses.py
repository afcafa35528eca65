r"""Transform spatial covariance into spatial loss (classic API of smoother-omics 1.1.0).

The main loss is the quadratic form of a Gaussian random field prior with precision :math:`Q_g` on each row
:math:`\beta_g` of a spatial variable ``beta`` (``num_group x num_spot``):

.. math::

    L(\beta) = \frac{1}{G N} \sum_g s_g \, \beta_g^T Q_g \beta_g

(the division by ``beta.numel() = G N`` when ``normalize=True``), the negative log density of the prior up to
constants. :class:`SpatialLoss` builds :math:`Q_g` from :class:`~smoother.weights.SpatialWeightMatrix` objects
(sparse for every prior but ``'sma'``; the same precision as the AnnData API's) and keeps it in torch buffers, so
``loss.to(device)`` moves it. Add ``lambda * loss(beta)`` to any torch objective to make ``beta`` spatially
smooth.
"""

from __future__ import annotations

import warnings
from typing import List  # noqa: UP035 - the classic signature spells List[SpatialWeightMatrix]

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ._core.precision import DENSE_WARN
from ._core.quadratic import quadratic_form, to_torch_sparse
from ._topology import TopLoss
from ._validation import (
    check_bool,
    check_choice,
    check_coords,
    check_int,
    check_prior,
    check_random_state,
    check_real,
    check_rho,
)
from .weights import SpatialWeightMatrix

__all__ = [
    "ContrastiveSpatialLoss",
    "SpatialLoss",
    "TopLoss",
    "kl_loss",
    "kl_loss_scipy",
    "quadratic_loss",
    "sparse_quadratic_loss",
]

_EPS = 1e-20  # added to probabilities before taking logs (classic convention)
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------------------
# functions
# --------------------------------------------------------------------------------------------------------------
def _weight_entries(weights, n: int):
    """Nonzero entries ``(rows, cols, values)`` of a weight matrix (torch, scipy or numpy), as numpy arrays."""
    if torch.is_tensor(weights):
        w = weights.detach()
        if w.layout != torch.strided:
            w = w.coalesce() if w.is_sparse else w.to_sparse_coo().coalesce()
            idx = w.indices().cpu().numpy()
            vals = w.values()
            keep = (vals != 0).cpu().numpy()
            return idx[0][keep], idx[1][keep], vals[torch.from_numpy(keep).to(vals.device)]
        r, c = torch.nonzero(w, as_tuple=True)
        return r.cpu().numpy(), c.cpu().numpy(), w[r, c]
    if sp.issparse(weights):
        C = sp.coo_matrix(weights)
        keep = C.data != 0
        return C.row[keep], C.col[keep], C.data[keep]
    W = np.asarray(weights)
    r, c = np.nonzero(W)
    return r, c, W[r, c]


def _check_weights_shape(weights, n: int) -> None:
    if tuple(weights.shape) != (n, n):
        msg = f"`weights` has shape {tuple(weights.shape)}, expected ({n}, {n}) for {n} spots."
        raise ValueError(msg)


def kl_loss_scipy(p, weights=None) -> float:
    r"""Mean pairwise KL divergence between the spots' distributions, with scipy.

    A numpy/scipy reference of :func:`kl_loss` (not differentiable): how different the spots' distributions
    (e.g. cell-type proportions, one column per spot) are from each other, over all pairs or over neighbours.

    Parameters
    ----------
    p
        Probability distributions, ``num_group x num_spot`` (each column is one distribution).
    weights
        Spatial weights, ``num_spot x num_spot`` (dense or sparse); if given, the loss is the mean over all
        ``num_spot^2`` pairs of ``weights * KL``.

    Returns
    -------
    The mean of ``KL`` (or of ``weights * KL``) over all ``num_spot x num_spot`` pairs, computed without the
    pairwise matrix: in closed form without weights, on the nonzero weights otherwise.

    Notes
    -----
    :math:`KL_{ij} = \sum_g \tilde p_{gi} \log(\tilde p_{gi} / \tilde p_{gj})`, where :math:`\tilde p` is
    ``p + 1e-20`` with columns renormalized to sum to 1 (as :func:`scipy.stats.entropy` does).

    Examples
    --------
    >>> import numpy as np
    >>> from smoother.losses import kl_loss_scipy
    >>> p = np.array([[0.5, 0.5, 0.9], [0.5, 0.5, 0.1]])  # 2 categories x 3 spots
    >>> round(kl_loss_scipy(p), 4)
    0.1953
    """
    from scipy.special import rel_entr, xlogy

    p = p.detach().cpu().double().numpy() if torch.is_tensor(p) else np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        msg = f"Expected `p` of shape (num_group, num_spot), found shape {p.shape}."
        raise ValueError(msg)
    n = p.shape[1]
    p = p + _EPS
    p = p / p.sum(axis=0, keepdims=True)
    if weights is None:
        # mean_ij sum_g p_gi (log p_gi - log p_gj)
        neg_ent = xlogy(p, p).sum() / n
        cross = (p.sum(axis=1) * np.log(p).sum(axis=1)).sum() / n**2
        return float(neg_ent - cross)
    _check_weights_shape(weights, n)
    rows, cols, w = _weight_entries(weights, n)
    w = w.detach().cpu().double().numpy() if torch.is_tensor(w) else np.asarray(w, dtype=np.float64)
    kl = rel_entr(p[:, rows], p[:, cols]).sum(axis=0)
    return float((w * kl).sum() / n**2)


def kl_loss(p, weights=None) -> torch.Tensor:
    r"""Mean pairwise KL divergence between the spots' distributions, with torch (differentiable).

    The loss of ``SpatialLoss('kl')``: with spatial weights it penalizes neighbouring spots whose distributions
    (e.g. cell-type proportions, one column per spot) differ. Use it on probabilities (columns summing to 1).

    Parameters
    ----------
    p
        Probability distributions, ``num_group x num_spot`` tensor.
    weights
        Spatial weights, ``num_spot x num_spot`` (torch dense/sparse, scipy sparse or numpy). If given, the loss
        is :math:`\sum_{ij} w_{ij} KL_{ij} / \#\{w_{ij} \neq 0\}`.

    Returns
    -------
    Scalar tensor: the mean of ``KL`` over all pairs (without weights) or the weighted mean over the nonzero
    weights, computed in ``O(num_group * nnz)`` without the pairwise matrix.

    Notes
    -----
    :math:`KL_{ij} = \sum_g p_{gi} (\log p_{gi} - \log p_{gj})` with ``p + 1e-20`` (columns are not
    renormalized).

    Examples
    --------
    >>> import torch
    >>> from smoother.losses import kl_loss
    >>> p = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.5, 0.1]])  # 2 categories x 3 spots
    >>> round(kl_loss(p).item(), 4)  # equals kl_loss_scipy(p) for normalized columns
    0.1953
    """
    if not torch.is_tensor(p):
        p = torch.as_tensor(np.asarray(p))
    if p.ndim != 2:
        msg = f"Expected `p` of shape (num_group, num_spot), found shape {tuple(p.shape)}."
        raise ValueError(msg)
    n = p.shape[1]
    p = p + _EPS
    logp = torch.log(p)
    if weights is None:
        neg_ent = (p * logp).sum() / n
        cross = (p.sum(dim=1) * logp.sum(dim=1)).sum() / n**2
        return neg_ent - cross
    _check_weights_shape(weights, n)
    rows, cols, w = _weight_entries(weights, n)
    if not torch.is_tensor(w):
        w = torch.as_tensor(np.asarray(w))
    w = w.to(dtype=p.dtype, device=p.device)
    r = torch.as_tensor(rows, dtype=torch.long, device=p.device)
    c = torch.as_tensor(cols, dtype=torch.long, device=p.device)
    kl = (p[:, r] * (logp[:, r] - logp[:, c])).sum(dim=0)
    count = max(int(r.numel()), 1)
    return (w * kl).sum() / count


def _group_scales(group_scales, beta: torch.Tensor):
    """Scalar or ``(num_group,)`` scales; a length-1 tensor is broadcast to all groups (classic)."""
    s = torch.as_tensor(group_scales, dtype=beta.dtype, device=beta.device)
    if s.ndim > 0 and s.numel() == 1:
        s = s.reshape(())
    return s


def _as_tensor(x, name: str) -> torch.Tensor:
    """A tensor as is, anything else through numpy (``TypeError`` naming ``name`` when it is not numeric)."""
    if torch.is_tensor(x):
        return x
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        msg = f"Expected `{name}` to be a numeric array or tensor, found dtype {arr.dtype}."
        raise TypeError(msg)
    return torch.as_tensor(arr)


def _check_beta(beta) -> torch.Tensor:
    if not torch.is_tensor(beta):
        beta = torch.as_tensor(np.asarray(beta))
    if beta.ndim != 2:
        msg = f"Expected `beta` of shape (num_group, num_spot), found shape {tuple(beta.shape)}."
        raise ValueError(msg)
    return beta


def _sparse3d_to_2d(Q: torch.Tensor) -> torch.Tensor:
    """A sparse ``(G, n, n)`` stack as a sparse ``(G n, G n)`` block-diagonal matrix (or ``(n, n)`` if G = 1)."""
    Q = Q.coalesce()
    g, n, _ = Q.shape
    if g == 1:
        return Q[0].coalesce()
    idx = Q.indices()
    idx2 = torch.stack([idx[0] * n + idx[1], idx[0] * n + idx[2]])
    return torch.sparse_coo_tensor(idx2, Q.values(), (g * n, g * n), check_invariants=False).coalesce()


def quadratic_loss(beta, inv_cov, group_scales, normalize=True) -> torch.Tensor:
    r"""Quadratic smoothing loss :math:`\sum_g s_g \beta_g^T Q_g \beta_g` (divided by ``beta.numel()``).

    The negative log density (up to constants) of a multivariate normal prior with precision ``inv_cov`` on
    every row of ``beta``: small when ``beta`` varies smoothly over the spatial graph, large when it is rough.
    :class:`SpatialLoss` calls it; use it directly with a precision from
    :func:`smoother.weights.sparse_weights_to_inv_cov`.

    Parameters
    ----------
    beta
        Spatial variable (e.g. regression coefficients), ``num_group x num_spot``.
    inv_cov
        Precision matrices, ``(num_group or 1) x num_spot x num_spot`` (dense, or a sparse stack); a
        ``num_spot x num_spot`` matrix is shared by all groups.
    group_scales
        Relative prior confidence :math:`s_g` of each group (tensor of length ``num_group`` or 1, or a float).
    normalize
        Divide by ``num_group * num_spot``.

    Returns
    -------
    Scalar tensor, differentiable in ``beta``.

    Notes
    -----
    :math:`L(\beta) = \frac{1}{G N} \sum_{g=1}^{G} s_g \, \beta_g^T Q_g \beta_g` for ``beta`` of shape
    :math:`G \times N` (without the :math:`1/(GN)` when ``normalize=False``).

    Examples
    --------
    A field that rises smoothly across the tissue costs far less than the same values shuffled over the spots:

    >>> import torch
    >>> import smoother as sm
    >>> from smoother.losses import quadratic_loss
    >>> from smoother.weights import coordinate_to_weights_knn_sparse, sparse_weights_to_inv_cov
    >>> coords = sm.datasets.lattice(100, "square")
    >>> W = coordinate_to_weights_knn_sparse(coords, k=4, row_scale=False)
    >>> Q = sparse_weights_to_inv_cov(W, "icar", rho=0.99, return_sparse=True)
    >>> smooth = torch.tensor(coords[:, 0], dtype=torch.float32)[None, :]  # 1 x 100: the x coordinate
    >>> rough = smooth[:, torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    >>> round(quadratic_loss(smooth, Q, 1.0).item(), 2), round(quadratic_loss(rough, Q, 1.0).item(), 2)
    (1.93, 28.15)
    """
    beta = _check_beta(beta)
    normalize = check_bool(normalize, "normalize")
    Q = inv_cov
    if not torch.is_tensor(Q):
        Q = torch.as_tensor(np.asarray(Q))
    if Q.ndim == 3 and Q.layout != torch.strided:
        Q = _sparse3d_to_2d(Q)
    loss = quadratic_form(beta, Q, _group_scales(group_scales, beta))
    return loss / beta.numel() if normalize else loss


def sparse_quadratic_loss(beta, inv_cov_2d_sp, group_scales, normalize=True) -> torch.Tensor:
    r"""Quadratic smoothing loss with a sparse (block-diagonal) precision; see :func:`quadratic_loss`.

    The same loss as :func:`quadratic_loss`, for a precision already in the 2D sparse layout (one block per
    group).

    Parameters
    ----------
    beta
        Spatial variable, ``num_group x num_spot``.
    inv_cov_2d_sp
        Sparse precision: ``num_spot x num_spot`` shared by all groups, or block diagonal
        ``(num_group num_spot) x (num_group num_spot)`` with one block per group (a dense matrix works too).
    group_scales
        Relative prior confidence of each group (tensor of length ``num_group`` or 1, or a float).
    normalize
        Divide by ``num_group * num_spot``.

    Returns
    -------
    Scalar tensor, differentiable in ``beta``.

    Notes
    -----
    :math:`L(\beta) = \frac{1}{GN} \sum_g s_g \beta_g^T Q_g \beta_g` with :math:`Q_g` the ``g``-th diagonal block
    (the shared matrix when it is ``num_spot x num_spot``).

    Examples
    --------
    >>> import torch
    >>> import smoother as sm
    >>> from smoother.losses import sparse_quadratic_loss
    >>> from smoother.weights import coordinate_to_weights_knn_sparse, sparse_weights_to_inv_cov
    >>> coords = sm.datasets.lattice(100, "square")
    >>> W = coordinate_to_weights_knn_sparse(coords, k=4, row_scale=False)
    >>> Q = sparse_weights_to_inv_cov(W, "icar", rho=0.99, return_sparse=True)  # 100 x 100, sparse
    >>> beta = torch.tensor(coords.T, dtype=torch.float32)  # 2 groups x 100 spots: the x and y coordinates
    >>> round(sparse_quadratic_loss(beta, Q, torch.tensor([1.0, 1.0])).item(), 2)
    1.93
    """
    beta = _check_beta(beta)
    normalize = check_bool(normalize, "normalize")
    loss = quadratic_form(beta, inv_cov_2d_sp, _group_scales(group_scales, beta))
    return loss / beta.numel() if normalize else loss


# --------------------------------------------------------------------------------------------------------------
# SpatialLoss
# --------------------------------------------------------------------------------------------------------------
class SpatialLoss(nn.Module):
    r"""Spatial loss: the quadratic form of a Gaussian random field prior on a ``num_group x num_spot`` variable.

    The building block of the classic API: add ``lambda_spatial * sp_loss(beta)`` to any torch objective so that
    ``beta`` (regression coefficients, an embedding, imputed expression; one row per group, one column per spot)
    varies smoothly over the tissue. The AnnData functions of ``sm.tl`` use the same prior.

    Parameters
    ----------
    prior
        ``'sma'``, ``'sar'``, ``'isar'``, ``'car'``, ``'icar'`` (Gaussian priors, see
        :mod:`smoother.weights`) or ``'kl'`` (weighted mean pairwise KL divergence of ``softmax(coefs)``).
    spatial_weights
        A :class:`~smoother.weights.SpatialWeightMatrix` shared by all groups, or a list of them, one per group.
        Optional for ``'kl'``.
    rho
        Spatial autocorrelation in ``[0, 1]``.
    use_sparse
        Keep the precision sparse (ignored for ``'sma'``, whose precision is dense).
    standardize_cov
        Rescale the precision to unit implied variance at every spot.

    Attributes
    ----------
    prior, spatial_weights, rho, use_sparse, standardize_cov
        The settings above.
    inv_cov
        Precisions, ``(num_group or 1) x num_spot x num_spot`` (sparse stack when sparse).
    inv_cov_2d_sp
        Sparse (block-diagonal) precision used by :func:`sparse_quadratic_loss`; None when dense.
    confidences
        Relative prior confidence of each group (1D tensor), set by :meth:`estimate_confidence`.
    n_precisions
        Number of distinct precision matrices (1, or one per group).

    Notes
    -----
    The loss of ``coefs`` :math:`\beta` (``G x N``) is :math:`\frac{1}{GN} \sum_g s_g \beta_g^T Q_g \beta_g`
    with :math:`Q_g` the prior's precision (see :mod:`smoother.weights`) and :math:`s_g` the :attr:`confidences`.
    The precisions are torch buffers (float32, not saved in ``state_dict``), so ``.to(device)`` and
    ``.double()`` convert them; :meth:`get_precision` returns the exact float64 scipy matrix for solvers.

    Examples
    --------
    >>> import torch
    >>> import smoother as sm
    >>> coords = sm.datasets.lattice(100, "square")
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(coords, k=4, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
    >>> smooth = torch.tensor(coords[:, 0], dtype=torch.float32)[None, :]  # 1 group x 100 spots
    >>> rough = smooth[:, torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    >>> round(sp_loss(smooth).item(), 2), round(sp_loss(rough).item(), 2)
    (1.93, 28.15)
    >>> beta = torch.zeros(3, 100, requires_grad=True)  # it is differentiable: use it in any torch model
    >>> sp_loss(beta + smooth).backward()
    >>> tuple(beta.grad.shape)
    (3, 100)
    """

    def __init__(
        self,
        prior,
        spatial_weights: List[SpatialWeightMatrix] = None,  # noqa: UP006, RUF013 - classic signature
        rho=1,
        use_sparse=True,
        standardize_cov=False,
    ) -> None:
        super().__init__()
        self.prior = prior
        self.spatial_weights = spatial_weights
        self.rho = rho
        self.use_sparse = use_sparse
        self.standardize_cov = standardize_cov
        self._sanity_check()
        self.prior = check_prior(prior, allowed=("kl", "sma", "sar", "isar", "car", "icar"))
        self.register_buffer("_inv_cov_sp", None, persistent=False)
        self.register_buffer("_inv_cov_dense", None, persistent=False)
        self.register_buffer("_confidences", torch.ones(1), persistent=False)
        self._precisions: list = []
        self._num_spot: int | None = None

        if self.prior == "kl":
            if self.spatial_weights is not None and not isinstance(self.spatial_weights, SpatialWeightMatrix):
                self.spatial_weights = self.spatial_weights[0]  # classic: the first matrix only
            if self.spatial_weights is not None:
                self._num_spot = self.spatial_weights.num_spot
            return

        swms = (
            [self.spatial_weights]
            if isinstance(self.spatial_weights, SpatialWeightMatrix)
            else list(self.spatial_weights)
        )
        self.rho = check_rho(rho, self.prior)
        done: dict[int, object] = {}
        for swm in swms:  # one precision per distinct weight matrix object
            if id(swm) not in done:
                done[id(swm)] = swm.get_precision(self.prior, self.rho, standardize=self.standardize_cov)
            self._precisions.append(done[id(swm)])
        self._num_spot = n = self._precisions[0].shape[0]
        dense = self.prior == "sma" or not self.use_sparse
        if dense:
            if n > DENSE_WARN:
                warnings.warn(
                    f"A dense {n} x {n} precision per group is held in memory; use_sparse=True avoids it "
                    "(except for 'sma').",
                    UserWarning,
                    stacklevel=2,
                )
            stack = np.stack([q.toarray() if sp.issparse(q) else np.asarray(q) for q in self._precisions])
            self._inv_cov_dense = torch.from_numpy(stack).float()
        else:
            Q2 = self._precisions[0] if len(self._precisions) == 1 else sp.block_diag(self._precisions, format="csr")
            self._inv_cov_sp = to_torch_sparse(Q2, dtype=torch.float32)
        self._confidences = torch.ones(len(self._precisions))

    # ---- validation ----------------------------------------------------------------------------------------
    def _sanity_check(self) -> None:
        """Check the prior, the weights and ``rho``; raise ``ValueError`` naming the fix."""
        check_prior(self.prior, allowed=("kl", "sma", "sar", "isar", "car", "icar"))
        sw = self.spatial_weights
        if sw is None:
            if str(self.prior).lower() != "kl":
                msg = "A spatial weight matrix must be supplied for a Gaussian prior: pass `spatial_weights=swm`."
                raise ValueError(msg)
            return
        swms = [sw] if isinstance(sw, SpatialWeightMatrix) else sw
        if not isinstance(swms, (list, tuple)) or len(swms) == 0:
            msg = "`spatial_weights` must be a SpatialWeightMatrix or a non-empty list of them."
            raise TypeError(msg)
        ns = set()
        for s in swms:
            if not isinstance(s, SpatialWeightMatrix):
                msg = f"`spatial_weights` must contain SpatialWeightMatrix objects, found {type(s).__name__}."
                raise TypeError(msg)
            if s.swm is None:
                msg = "A SpatialWeightMatrix is empty: call `calc_weights_knn` or `calc_weights_dist` first."
                raise ValueError(msg)
            ns.add(s.num_spot)
        if len(ns) > 1:
            msg = f"All spatial weight matrices must have the same number of spots, found {sorted(ns)}."
            raise ValueError(msg)
        for name in ("use_sparse", "standardize_cov"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"Expected `{name}` to be True or False, found `{getattr(self, name)!r}`."
                raise TypeError(msg)
        check_rho(self.rho, str(self.prior).lower())

    # ---- state -----------------------------------------------------------------------------------------------
    @property
    def inv_cov(self) -> torch.Tensor | None:
        """Precisions ``(num_group or 1) x num_spot x num_spot`` (sparse stack when sparse); None for 'kl'."""
        if self._inv_cov_dense is not None:
            return self._inv_cov_dense
        Q = self._inv_cov_sp
        if Q is None:
            return None
        n = self._num_spot
        g = Q.shape[0] // n
        Q = Q.coalesce()
        idx = Q.indices()
        grp = idx[0] // n
        idx3 = torch.stack([grp, idx[0] - grp * n, idx[1] - grp * n])
        return torch.sparse_coo_tensor(idx3, Q.values(), (g, n, n), check_invariants=False).coalesce()

    @property
    def inv_cov_2d_sp(self) -> torch.Tensor | None:
        """Sparse precision ``n x n`` (shared) or block diagonal ``(G n) x (G n)``; None when dense."""
        return self._inv_cov_sp

    @property
    def confidences(self) -> torch.Tensor:
        """Relative prior confidence of each group (length 1 = shared by all groups)."""
        return self._confidences

    @confidences.setter
    def confidences(self, value) -> None:
        t = torch.as_tensor(value, dtype=torch.float32) if not torch.is_tensor(value) else value.detach()
        t = t.reshape(-1).to(self._confidences.device)
        if not torch.isfinite(t).all() or (t < 0).any():
            msg = "`confidences` must be finite and non-negative."
            raise ValueError(msg)
        self._confidences = t

    @property
    def n_precisions(self) -> int:
        """Number of precision matrices: 1 (shared by all groups) or one per group; 0 for 'kl'."""
        return len(self._precisions)

    @property
    def num_spot(self) -> int | None:
        """Number of spots of the precision (None for 'kl' without weights)."""
        return self._num_spot

    def get_precision(self, index: int = 0):
        """The float64 precision of group ``index`` (before confidence scaling).

        Returns
        -------
        scipy CSR ``num_spot x num_spot`` (a dense ndarray for 'sma'); the same object on every call, do not
        modify it in place.
        """
        if self.prior == "kl":
            msg = "The 'kl' prior has no precision matrix; use a Gaussian prior ('icar', 'car', ...)."
            raise ValueError(msg)
        index = check_int(index, "index", low=0, high=len(self._precisions) - 1, example="0")
        return self._precisions[index]

    # ---- confidence ----------------------------------------------------------------------------------------
    def estimate_confidence(self, ref_exp, st_exp, method="lr") -> None:
        """Set :attr:`confidences` from a linear regression of the spatial data on the reference.

        The confidence of group ``g`` is the standard deviation over spots of its least-squares coefficient,
        divided by the largest such standard deviation (the higher, the stronger the smoothing).

        Parameters
        ----------
        ref_exp
            Reference signatures, ``num_gene x num_group``.
        st_exp
            Spatial expression, ``num_gene x num_spot``.
        method
            Only ``'lr'``.

        When no coefficient varies across spots (constant ``st_exp``, one spot), the largest standard deviation
        is 0 and the classic ratio is 0 / 0: every confidence is set to 1 instead, with a warning.
        """
        check_choice(method, "method", ("lr",))
        X, Y = _as_tensor(ref_exp, "ref_exp"), _as_tensor(st_exp, "st_exp")
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            msg = (
                f"Expected `ref_exp` (num_gene x num_group) and `st_exp` (num_gene x num_spot) with the same number "
                f"of genes, found shapes {tuple(X.shape)} and {tuple(Y.shape)}."
            )
            raise ValueError(msg)
        for name, T in (("ref_exp", X), ("st_exp", Y)):
            if T.is_complex() or not (T.is_floating_point() or T.dtype in _INT_DTYPES or T.dtype == torch.bool):
                msg = f"Expected `{name}` to hold real numbers, found dtype {T.dtype}."
                raise TypeError(msg)
            if T.is_floating_point() and not torch.isfinite(T).all():
                msg = f"`{name}` contains NaN or inf; drop or impute those values first."
                raise ValueError(msg)
        if self._num_spot is not None and Y.shape[1] != self._num_spot:
            msg = f"`st_exp` has {Y.shape[1]} spots but the spatial loss has {self._num_spot}."
            raise ValueError(msg)
        if self.n_precisions > 1 and X.shape[1] != self.n_precisions:
            msg = f"`ref_exp` has {X.shape[1]} groups but the spatial loss has {self.n_precisions} precisions."
            raise ValueError(msg)
        dt = torch.promote_types(X.dtype, Y.dtype)
        dt = dt if dt.is_floating_point else torch.float32
        sol = torch.linalg.lstsq(X.to(dt), Y.to(dt)).solution  # num_group x num_spot
        sd = torch.std(sol, dim=1) if sol.shape[1] > 1 else torch.zeros(sol.shape[0], dtype=sol.dtype)
        tiny = 100 * torch.finfo(dt).eps * max(float(sol.abs().max()), torch.finfo(dt).tiny)  # round-off level
        if not torch.isfinite(sd).all() or float(sd.max()) <= tiny:
            warnings.warn(
                "No group's regression coefficient varies across spots (constant `st_exp`, a single spot, or a "
                "singular `ref_exp`), so the data say nothing about relative confidence: every confidence is set "
                "to 1.",
                UserWarning,
                stacklevel=2,
            )
            self.confidences = torch.ones(sol.shape[0])
            return
        self.confidences = sd / sd.max()

    # ---- loss ----------------------------------------------------------------------------------------------
    def forward(self, coefs, normalize=True) -> torch.Tensor:
        """Spatial loss of ``coefs`` (``num_group x num_spot``); divided by ``coefs.numel()`` when ``normalize``."""
        coefs = _check_beta(coefs)
        normalize = check_bool(normalize, "normalize")
        if self._num_spot is not None and coefs.shape[1] != self._num_spot:
            msg = f"`coefs` has {coefs.shape[1]} spots (columns) but the spatial graph has {self._num_spot}."
            raise ValueError(msg)
        if self.prior == "kl":
            p = torch.nn.functional.softmax(coefs, dim=0)
            w = None if self.spatial_weights is None else self.spatial_weights.swm_scaled
            return kl_loss(p, w)
        if self.n_precisions > 1 and coefs.shape[0] != self.n_precisions:
            msg = f"`coefs` has {coefs.shape[0]} groups (rows) but the loss has {self.n_precisions} precisions."
            raise ValueError(msg)
        conf = self._confidences
        if conf.numel() not in (1, coefs.shape[0]):
            msg = f"{conf.numel()} confidences for {coefs.shape[0]} groups; rerun `estimate_confidence`."
            raise ValueError(msg)
        if self._inv_cov_sp is not None:
            return sparse_quadratic_loss(coefs, self._inv_cov_sp, conf, normalize=normalize)
        return quadratic_loss(coefs, self._inv_cov_dense, conf, normalize=normalize)

    # ---- diagnostics ---------------------------------------------------------------------------------------
    def calc_corr_decay_stats(self, coords, min_k=0, max_k=50, cov_ind=0, return_var=False):
        r"""Quantiles of the implied spatial correlation between every spot and its k-th nearest neighbour.

        Parameters
        ----------
        coords
            Coordinates of the spots, ``num_spot x 2``.
        min_k, max_k
            Range of neighbourhood degrees (``k = 0``: the spot itself).
        cov_ind
            Which precision to use when there is one per group.
        return_var
            Also return quantiles of the per-spot variance.

        Returns
        -------
        corr_decay_quantiles_df
            DataFrame with columns ``Q10, Q25, Q50, Q75, Q90, k``, one row per ``k``.
        var_quantiles_df
            One-row DataFrame ``Q10 ... Q90`` of the variances (only with ``return_var``).

        Notes
        -----
        The same computation as :func:`smoother.tl.corr_decay`: a sparse factorization (no dense inverse); exact
        for up to 20,000 spots, above that from the exact correlations of 5,000 sampled spots.
        For 'sma' the covariance :math:`(I + \rho W)(I + \rho W)^T` is used directly.
        """
        if self.prior == "kl":
            msg = "Covariance is not defined for the 'kl' prior; use a Gaussian prior such as 'icar' with rho < 1."
            raise ValueError(msg)
        cov_ind = check_int(cov_ind, "cov_ind", low=0, high=self.n_precisions - 1, example="0")
        min_k = check_int(min_k, "min_k", low=0, example="0")
        max_k = check_int(max_k, "max_k", low=0, example="50")
        return_var = check_bool(return_var, "return_var")
        xy = check_coords(coords)
        n = self._num_spot
        if xy.shape[0] != n:
            msg = f"`coords` has {xy.shape[0]} spots but the spatial loss has {n}."
            raise ValueError(msg)
        if min_k > max_k or max_k >= n:
            msg = f"Need 0 <= min_k <= max_k < num_spot ({n}), found min_k={min_k}, max_k={max_k}."
            raise ValueError(msg)

        from ._core import decay
        from ._core.linalg import NotPositiveDefiniteError
        from ._core.precision import not_pd_message

        sw = self.spatial_weights
        swm = sw if isinstance(sw, SpatialWeightMatrix) else sw[cov_ind]
        if self.prior == "sma":
            # the SMA covariance (I + rho W)(I + rho W)^T is sparse: no inverse needed (classic: raw, unstandardized)
            cov = decay.sma_covariance(swm.weights_csr(scaled=True).maximum(0), self.rho)
            return decay.corr_decay_quantiles_from_cov(cov, xy, min_k=min_k, max_k=max_k, return_var=return_var)
        if self.prior in ("icar", "isar") and self.rho >= 1.0:
            raise ValueError(not_pd_message(self.prior, self.rho) + " Correlation decay needs a proper prior.")
        try:
            return decay.corr_decay_quantiles(
                self._precisions[cov_ind], xy, min_k=min_k, max_k=max_k, return_var=return_var
            )
        except NotPositiveDefiniteError as exc:
            msg = not_pd_message(self.prior, self.rho, swm.weights_csr(scaled=True), graph="these spatial weights")
            raise ValueError(msg + " Correlation decay needs a proper prior (a covariance).") from exc


# --------------------------------------------------------------------------------------------------------------
# ContrastiveSpatialLoss
# --------------------------------------------------------------------------------------------------------------
def _min_eigenvalue(M: sp.csr_matrix) -> float:
    """Smallest eigenvalue of a symmetric sparse matrix (dense below 3,000 rows, Lanczos above)."""
    if M.shape[0] <= 3000:
        return float(np.linalg.eigvalsh(M.toarray())[0])
    from scipy.sparse.linalg import eigsh

    return float(eigsh(M, k=1, which="SA", tol=1e-8, return_eigenvectors=False)[0])


def _make_generator(random_state) -> torch.Generator:
    g = torch.Generator()
    if random_state is None:
        g.seed()
    elif isinstance(random_state, torch.Generator):
        return random_state
    else:
        if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
            msg = f"Expected `random_state` to be None, an int or a torch.Generator, found `{random_state!r}`."
            raise TypeError(msg)
        g.manual_seed(int(random_state))
    return g


class ContrastiveSpatialLoss(SpatialLoss):
    r"""Contrastive spatial loss (Zhu, Sun & Koniusz, *Contrastive Laplacian eigenmaps*, NeurIPS 2021).

    A :class:`SpatialLoss` that also rewards differences between random (non-neighbouring) pairs of spots, so an
    embedding trained with it cannot collapse to a constant. Use it for representation learning (e.g. an
    autoencoder's latent space); for smoothing or deconvolution the plain :class:`SpatialLoss` is the right one.

    Parameters
    ----------
    prior, spatial_weights, rho, use_sparse, standardize_cov
        As in :class:`SpatialLoss`.
    num_perm
        Number of negative graphs per call.
    neg2pos_ratio
        Weight :math:`r` of the negative samples.
    lower_bound
        Lower bound of the loss (it can be unbounded below when the contrastive precision is indefinite).
    check_positive_definite
        Run :meth:`check_positive_definite` at construction.
    random_state
        Seed of the permutations: an int (reproducible sequence), a ``torch.Generator``, or None (fresh
        entropy). Stored as :attr:`generator`; ``forward(..., generator=g)`` overrides it for one call. The global
        torch RNG is never used.

    Notes
    -----
    .. math::

        L(\beta) = \max\Big(L_Q(\beta) - r \frac{1}{K} \sum_{k=1}^K L_Q(\beta P_k), \; b\Big)

    with :math:`L_Q` the :class:`SpatialLoss`, :math:`P_k` random permutations of the spots (negative graphs),
    :math:`r` = ``neg2pos_ratio``, :math:`K` = ``num_perm`` and :math:`b` = ``lower_bound`` (times
    ``coefs.numel()`` when ``normalize=False``). With ``prior='icar'``, ``rho=1`` and ``standardize_cov=True``
    the precision is the normalized graph Laplacian.

    Examples
    --------
    >>> import torch
    >>> import smoother as sm
    >>> from smoother.losses import ContrastiveSpatialLoss
    >>> coords = sm.datasets.lattice(100, "square")
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(coords, k=4, verbose=False)
    >>> cl = ContrastiveSpatialLoss(spatial_weights=swm, num_perm=5, random_state=0)
    >>> smooth = torch.tensor(coords[:, 0], dtype=torch.float32)[None, :]
    >>> rough = smooth[:, torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    >>> round(cl(smooth).item(), 2), round(cl(rough).item(), 2)  # a smooth field hits the lower bound -1
    (-1.0, 3.52)
    """

    def __init__(
        self,
        prior="icar",
        spatial_weights: List[SpatialWeightMatrix] = None,  # noqa: UP006, RUF013 - classic signature
        rho=1,
        use_sparse=True,
        standardize_cov=True,
        num_perm=10,
        neg2pos_ratio=0.5,
        lower_bound=-1,
        check_positive_definite=False,
        *,
        random_state=None,
    ) -> None:
        num_perm = check_int(num_perm, "num_perm", low=1, example="10")
        neg2pos_ratio = check_real(neg2pos_ratio, "neg2pos_ratio", low=0.0, example="0.5")
        lower_bound = check_real(lower_bound, "lower_bound", example="-1")
        check_positive_definite = check_bool(check_positive_definite, "check_positive_definite")
        if not isinstance(random_state, torch.Generator):
            check_random_state(random_state)
        with warnings.catch_warnings():  # icar at rho = 1 warns by design here (classic)
            warnings.simplefilter("ignore")
            super().__init__(prior, spatial_weights, rho, use_sparse, standardize_cov)
        self.num_perm = int(num_perm)
        self.neg2pos_ratio = float(neg2pos_ratio)
        self.lower_bound = float(lower_bound)
        self.random_state = random_state
        self.generator = _make_generator(random_state)
        if check_positive_definite:
            self.check_positive_definite()

    def _perms(self, n: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        g = self.generator if generator is None else generator
        return [torch.randperm(n, generator=g) for _ in range(self.num_perm)]

    def check_positive_definite(self, n_tests=10) -> bool:
        """Check that the contrastive precision :math:`Q - r/K \\sum_k P_k Q P_k^T` is positive semi-definite.

        Draws ``n_tests`` sets of ``num_perm`` permutations (from :attr:`generator`) for every precision and
        warns when the contrastive precision has an eigenvalue below ``-1e-7`` (relative to its largest
        diagonal entry). Sparse: a Cholesky factorization of the shifted matrix, no dense matrix.

        Returns
        -------
        True when all tests passed.
        """
        if self.prior == "kl":
            msg = "check_positive_definite needs a Gaussian prior, not 'kl'."
            raise ValueError(msg)
        n_tests = check_int(n_tests, "n_tests", low=1, example="10")
        n = self._num_spot
        for Q in {id(q): q for q in self._precisions}.values():
            Qs = sp.csr_matrix(Q)
            for _ in range(int(n_tests)):
                acc = sp.csr_matrix((n, n))
                for perm in self._perms(n, None):
                    p = perm.numpy()
                    acc = acc + Qs[p][:, p]
                M = (Qs - (self.neg2pos_ratio / self.num_perm) * acc).tocsr()
                M = 0.5 * (M + M.T)
                if _min_eigenvalue(M) < -1e-7 * max(1.0, float(np.abs(M.diagonal()).max())):
                    warnings.warn(
                        "The contrastive precision is not positive semi-definite; "
                        f"use a smaller neg2pos_ratio than {self.neg2pos_ratio}.",
                        UserWarning,
                        stacklevel=2,
                    )
                    return False
        return True

    def forward(self, coefs, normalize=True, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Contrastive spatial loss of ``coefs`` (``num_group x num_spot``); see the class docstring.

        Parameters
        ----------
        coefs
            ``num_group x num_spot`` tensor.
        normalize
            Divide by ``coefs.numel()`` (and use ``lower_bound`` as is; else ``lower_bound * coefs.numel()``).
        generator
            Permutations for this call only (default: :attr:`generator`).
        """
        coefs = _check_beta(coefs)
        normalize = check_bool(normalize, "normalize")
        if generator is not None and not isinstance(generator, torch.Generator):
            msg = f"Expected `generator` to be a torch.Generator or None, found {type(generator).__name__}."
            raise TypeError(msg)
        pos = super().forward(coefs, normalize=normalize)
        neg = 0.0
        for perm in self._perms(coefs.shape[1], generator):
            neg = neg + super().forward(coefs[:, perm.to(coefs.device)], normalize=normalize)
        total = pos - self.neg2pos_ratio * neg / self.num_perm
        lb = self.lower_bound if normalize else self.lower_bound * coefs.numel()
        return torch.clamp(total, min=lb)
