r"""Classic ``SpatialPCA``: PCA with a spatial loss on the projection, solved exactly by default.

The objective is the one of smoother-omics 1.1.0. With data :math:`X` (``n_features x n_spots``, classic
orientation, used as given — *not* centred), loadings :math:`U` (``n_features x k``, orthonormal) and the
projection :math:`H = U^T X`, the loss minimised is

.. math::

    L(U) = -\frac{\lVert H \rVert_F^2}{k\,n} + \lambda\,\frac{c\,\mathrm{tr}(H Q H^T)}{k\,n}

(the spatial term is the classic ``SpatialLoss(H, normalize=True)``, which divides by ``H.numel() = k n``, with
the loss's confidence :math:`c`). Its minimum over orthonormal :math:`U` is attained by the top ``k``
eigenvectors of :math:`X (I - \lambda c Q) X^T`, which :meth:`SpatialPCA.reduce` computes directly
(``method='exact'``, the default). The gradient path of the classic package (SGD with momentum and a QR
projection after every step) is kept as ``method='sgd'`` for losses that are not a single quadratic form
(e.g. ``ContrastiveSpatialLoss``).

Difference to :func:`smoother.tl.spatial_pca`: that function centres the genes by default
(``zero_center=True``, as ``sc.pp.pca``); this class keeps the classic uncentred objective. Both give the same
loadings when ``sm.tl.spatial_pca(..., zero_center=False)`` uses the same precision and ``lambda``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..._core.fit import ClassicStopping
from ..._settings import logger
from ..._validation import _torch_to_scipy, check_bool, check_choice, check_int, check_lambda, check_real

_LOG_KEYS = ("elapsed_time", "total_loss", "recon_loss", "spatial_loss")


def _empty_logs() -> dict:
    return {"elapsed_time": None, "total_loss": [], "recon_loss": [], "spatial_loss": []}


def _adata_matrix(adata, layer, n_feature: int | None = None):
    """The (spots x features) data of ``adata`` as given (kept sparse), validated (``n_feature`` columns if given)."""
    from ..._anndata import check_adata, get_matrix

    check_adata(adata, writes=False)
    if n_feature is not None and adata.shape[1] != n_feature:
        msg = f"`adata` has {adata.shape[1]} features but the model has {n_feature}; pass data with the same genes."
        raise ValueError(msg)
    X, _ = get_matrix(adata, layer)
    if sp.issparse(X):
        return X.astype(np.float64) if not np.issubdtype(X.dtype, np.floating) else X
    return np.asarray(X, dtype=np.float64 if not np.issubdtype(X.dtype, np.floating) else X.dtype)


def spatial_loss_spots(spatial_loss) -> int | None:
    """The number of spots ``spatial_loss`` is defined on (``None`` when it does not say, e.g. a custom callable).

    Raises ``TypeError`` when ``spatial_loss`` is neither ``None``, a classic ``SpatialLoss`` (or any callable
    loss module), nor a square precision matrix (scipy sparse, numpy or torch).
    """
    if spatial_loss is None:
        return None
    if sp.issparse(spatial_loss) or isinstance(spatial_loss, np.ndarray) or torch.is_tensor(spatial_loss):
        shape = tuple(spatial_loss.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            msg = f"A precision matrix given as `spatial_loss` must be square (n_spots x n_spots), found {shape}."
            raise ValueError(msg)
        return int(shape[0])
    if not callable(spatial_loss):
        msg = (
            "Expected `spatial_loss` to be a smoother.SpatialLoss, a precision matrix or None, found "
            f"{type(spatial_loss).__name__}."
        )
        raise TypeError(msg)
    n = getattr(spatial_loss, "num_spot", None)
    return None if n is None else int(n)


def check_spatial_loss(spatial_loss, n_spots: int, *, data: str = "adata") -> None:
    """``ValueError`` naming both sizes when ``spatial_loss`` is defined on another number of spots than the data."""
    m = spatial_loss_spots(spatial_loss)
    if m is not None and m != n_spots:
        msg = (
            f"`spatial_loss` is defined on {m} spots but `{data}` has {n_spots} spots; build the spatial weights "
            f"on the coordinates of these {n_spots} spots (or load the data the loss was built for)."
        )
        raise ValueError(msg)


def check_fit_args(lr, max_epochs, patience, tol, **flags) -> tuple[float, int, int, float]:
    """The classic gradient settings (``max_epochs=-1``: the classic 10,000) and boolean ``flags``, checked."""
    lr = check_real(lr, "lr", low=0.0, low_open=True, example="0.01")
    max_epochs = check_int(max_epochs, "max_epochs", low=-1, example="1000")
    if max_epochs == 0:
        msg = "Expected `max_epochs` >= 1 (or -1 for the classic 10,000), found `0` (e.g. max_epochs=1000)."
        raise ValueError(msg)
    patience = check_int(patience, "patience", low=0, example="10")
    tol = check_real(tol, "tol", low=0.0, example="1e-5")
    for name, value in flags.items():
        if not (name == "quiet" and value is None):  # quiet=None: use the classic `quite`
            check_bool(value, name)
    return lr, max_epochs, patience, tol


def quadratic_precision(spatial_loss, n_spots: int) -> tuple[sp.csr_matrix | np.ndarray, float] | None:
    """``(Q, c)`` when ``spatial_loss`` is one quadratic form ``c * tr(H Q H^T)`` shared by all rows, else ``None``.

    Accepts a classic :class:`~smoother.losses.SpatialLoss` (one spatial weight matrix, equal confidences), or a
    precision matrix given directly (scipy sparse / dense array, ``c = 1``).
    """
    if spatial_loss is None:
        return None
    if sp.issparse(spatial_loss) or isinstance(spatial_loss, np.ndarray):
        return sp.csr_matrix(spatial_loss) if sp.issparse(spatial_loss) else spatial_loss, 1.0
    from ...losses import ContrastiveSpatialLoss

    if isinstance(spatial_loss, ContrastiveSpatialLoss) or not hasattr(spatial_loss, "prior"):
        return None
    if str(getattr(spatial_loss, "prior", "")).lower() == "kl":
        return None
    n_prec = getattr(spatial_loss, "n_precisions", None)
    if n_prec is None:
        weights = getattr(spatial_loss, "spatial_weights", None)
        n_prec = len(weights) if isinstance(weights, (list, tuple)) else 1
    if n_prec != 1:
        return None
    conf = getattr(spatial_loss, "confidences", 1.0)
    conf = torch.as_tensor(conf).detach().double().reshape(-1).cpu().numpy()
    if conf.size == 0 or not np.allclose(conf, conf[0]):
        return None
    Q = None
    if hasattr(spatial_loss, "get_precision"):
        Q = spatial_loss.get_precision(0)
    elif getattr(spatial_loss, "inv_cov_2d_sp", None) is not None and spatial_loss.inv_cov_2d_sp.is_sparse:
        Q = _torch_to_scipy(spatial_loss.inv_cov_2d_sp)
    elif getattr(spatial_loss, "inv_cov", None) is not None:
        Q = spatial_loss.inv_cov[0].detach().double().cpu().numpy()
    if Q is None or Q.shape != (n_spots, n_spots):
        return None
    if hasattr(Q, "is_sparse"):  # a torch tensor
        Q = _torch_to_scipy(Q) if Q.is_sparse else Q.detach().double().cpu().numpy()
    return Q, float(conf[0])


class SpatialPCA(nn.Module):
    """PCA whose projection is penalised by a spatial loss (classic API of smoother-omics).

    Components that vary smoothly over the tissue rather than with spot-level noise. Use it on log-normalized
    (or scaled) expression; the data are used as given (not centred, the classic objective). On AnnData,
    :func:`smoother.tl.spatial_pca` does the same (centred by default, as ``sc.pp.pca``). :meth:`reduce` solves
    it exactly (see the module docstring for the math).

    Parameters
    ----------
    adata
        Data to reduce, ``(n_spots, n_features)``; used as given (not centred; sparse data stay sparse).
    layer
        Layer to use instead of ``adata.X``.
    n_latent
        Number of components ``k``.
    spatial_loss
        A classic :class:`~smoother.losses.SpatialLoss` on the spots (or a precision matrix ``Q``), or ``None``
        for ordinary uncentred PCA.
    lambda_spatial_loss
        Strength :math:`\\lambda` of the spatial loss.

    Attributes
    ----------
    U
        ``(n_features, n_latent)`` orthonormal loadings (a torch parameter).
    dr_logs
        ``{'elapsed_time', 'total_loss', 'recon_loss', 'spatial_loss'}``: the loss history of the last
        :meth:`reduce` (one entry for the exact solver, one per epoch for SGD), in the classic normalisation.
    dr_configs
        Arguments of the last :meth:`reduce`.

    Notes
    -----
    Minimizes :math:`-\\lVert H \\rVert_F^2 / (kn) + \\lambda\\, c\\, \\mathrm{tr}(H Q H^T) / (kn)` over orthonormal
    loadings :math:`U` with :math:`H = U^T X`; the exact minimizer is the top ``k`` eigenvectors of
    :math:`X (I - \\lambda c Q) X^T`.

    Examples
    --------
    The spatial loss of the embedding falls as ``lambda_spatial_loss`` grows:

    >>> import smoother as sm
    >>> from smoother.models.reduction import SpatialPCA
    >>> adata = sm.datasets.simulate_field(400, pattern="zones", n_genes=30, noise_level=1.0, seed=0)
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
    >>> for lam in (0.0, 1.0):
    ...     model = SpatialPCA(adata, n_latent=3, spatial_loss=sp_loss, lambda_spatial_loss=lam)
    ...     model.reduce(verbose=False)
    ...     print(lam, model.get_latent_representation().shape, round(float(model.dr_logs["spatial_loss"][-1]), 2))
    0.0 (400, 3) 0.0
    1.0 (400, 3) 5.88
    """

    def __init__(self, adata, layer: str | None = None, n_latent: int = 10, spatial_loss=None, lambda_spatial_loss=0.1):
        super().__init__()
        n_latent = check_int(n_latent, "n_latent", low=1, example="10")
        lam = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
        data = _adata_matrix(adata, layer)
        self.n_feature = int(adata.shape[1])
        if n_latent >= self.n_feature:
            msg = (
                f"Expected `n_latent` < the number of features ({self.n_feature}), found {n_latent} "
                f"(e.g. n_latent={max(self.n_feature - 1, 1)})."
            )
            raise ValueError(msg)
        check_spatial_loss(spatial_loss, data.shape[0])
        self.n_latent = int(n_latent)
        self._data = data
        self.spatial_loss = spatial_loss
        self.l_sp_loss = lam
        gen = torch.Generator().manual_seed(0)
        U0 = torch.rand(self.n_feature, self.n_latent, generator=gen, dtype=torch.float64)
        self.U = nn.Parameter(torch.linalg.qr(U0, mode="reduced")[0], requires_grad=True)
        self.dr_configs: dict = {}
        self.dr_logs = _empty_logs()

    # ------------------------------------------------------------------ data
    def load_adata(self, adata, layer: str | None = None) -> None:
        """Load the data to project (must have the same features as the model)."""
        self._data = _adata_matrix(adata, layer, self.n_feature)  # (n_spots, n_features), AnnData orientation

    @property
    def n_spot(self) -> int:
        return int(self._data.shape[0])

    def _data_torch(self) -> torch.Tensor:
        """Loaded data as a dense ``(n_features, n_spots)`` tensor (classic orientation; SGD path only)."""
        X = self._data.toarray() if sp.issparse(self._data) else self._data
        return torch.as_tensor(np.ascontiguousarray(X.T), dtype=self.U.dtype)

    # ------------------------------------------------------------------ model
    def forward(self, x):
        """Project ``x`` (``n_features x n_samples``) to the ``n_latent x n_samples`` latent space."""
        return self.U.T @ torch.as_tensor(x).to(self.U.dtype)

    def get_latent_representation(self) -> np.ndarray:
        """Projection of the loaded data, ``(n_spots, n_latent)``."""
        U = self.U.detach().cpu().numpy()
        return np.asarray(self._data @ U)

    def _losses(self, U: np.ndarray) -> tuple[float, float, float]:
        """Classic (total, recon, spatial) losses of loadings ``U`` (numpy), normalised by ``k * n``."""
        H = np.asarray(self._data @ U, dtype=np.float64)  # (n, k)
        kn = H.size
        recon = -float(np.einsum("ij,ij->", H, H)) / kn
        sp_loss = 0.0
        qp = quadratic_precision(self.spatial_loss, self.n_spot)
        if qp is not None and self.l_sp_loss > 0:
            Q, c = qp
            sp_loss = self.l_sp_loss * c * float(np.einsum("ij,ij->", H, np.asarray(Q @ H))) / kn
        return recon + sp_loss, recon, sp_loss

    # ------------------------------------------------------------------ fitting
    def reduce(
        self,
        lr: float = 1.0,
        max_epochs: int = 1000,
        patience: int = 10,
        tol: float = 1e-5,
        init_with_svd: bool = False,
        verbose: bool = True,
        quite: bool = False,
        clear_logs: bool = True,
        *,
        method: str = "exact",
        quiet: bool | None = None,
    ) -> None:
        """Fit the loadings.

        Parameters
        ----------
        lr, max_epochs, patience, tol, init_with_svd
            Settings of the classic SGD path (``method='sgd'``); ignored by the exact solver.
        verbose, quite, quiet
            Log progress (``quiet``/the classic spelling ``quite`` silence it); messages go to the
            ``smoother`` logger.
        clear_logs
            Reset :attr:`dr_logs` first.
        method
            ``'exact'`` (default): top eigenvectors of :math:`X (I - \\lambda c Q) X^T` — the global optimum of
            the classic loss, whatever the start. ``'sgd'``: the classic projected SGD (needed when the spatial
            loss is not a single quadratic form, e.g. ``ContrastiveSpatialLoss``).
        """
        lr, max_epochs, patience, tol = check_fit_args(
            lr,
            max_epochs,
            patience,
            tol,
            init_with_svd=init_with_svd,
            verbose=verbose,
            quite=quite,
            clear_logs=clear_logs,
            quiet=quiet,
        )
        method = check_choice(method, "method", ("exact", "sgd"))
        if quiet is not None:
            quite = quiet
        check_spatial_loss(self.spatial_loss, self.n_spot, data="the loaded data")
        qp = quadratic_precision(self.spatial_loss, self.n_spot)
        if method == "exact" and self.spatial_loss is not None and self.l_sp_loss > 0 and qp is None:
            msg = (
                "The spatial loss is not a single quadratic form shared by all components (e.g. a contrastive "
                "loss or group-specific weights), so there is no exact solution; use reduce(method='sgd')."
            )
            raise ValueError(msg)
        self.dr_configs = {
            "lr": lr,
            "max_epochs": max_epochs,
            "patience": patience,
            "tol": tol,
            "init_with_svd": init_with_svd,
            "method": method,
        }
        if clear_logs:
            self.dr_logs = _empty_logs()
        t0 = time.perf_counter()
        if method == "exact":
            self._reduce_exact(qp)
        else:
            self._reduce_sgd(lr, max_epochs, patience, tol, init_with_svd, verbose and not quite)
        self.dr_logs["elapsed_time"] = time.perf_counter() - t0
        if not quite:
            logger.info(
                "SpatialPCA (%s): %.2fs, loss (total) %.4f (recon) %.4f (spatial) %.4f",
                method,
                self.dr_logs["elapsed_time"],
                self.dr_logs["total_loss"][-1],
                self.dr_logs["recon_loss"][-1],
                self.dr_logs["spatial_loss"][-1],
            )

    def _reduce_exact(self, qp) -> None:
        from ..._core.spca import spatial_pca as _spca

        if qp is None or self.l_sp_loss == 0:
            Q, lam = sp.csr_matrix((self.n_spot, self.n_spot)), 0.0
        else:
            Q, c = qp
            lam = self.l_sp_loss * c
        res = _spca(self._data, Q, self.n_latent, lam, zero_center=False)
        with torch.no_grad():
            self.U.copy_(torch.as_tensor(res.loadings, dtype=self.U.dtype))
        total, recon, spl = self._losses(res.loadings)
        self.dr_logs["total_loss"].append(total)
        self.dr_logs["recon_loss"].append(recon)
        self.dr_logs["spatial_loss"].append(spl)

    def _reduce_sgd(self, lr, max_epochs, patience, tol, init_with_svd, verbose) -> None:
        x = self._data_torch()
        if init_with_svd:
            with torch.no_grad():
                _, _, V = torch.svd_lowrank(x.T, q=self.n_latent)
                self.U.copy_(V)
        opt = torch.optim.SGD([self.U], lr=lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=int(patience / 4) + 1, factor=0.1)
        stop = ClassicStopping(max_epochs, patience, tol)
        while stop.keep_going():
            opt.zero_grad()
            hidden = self(x)  # k x n
            recon = -hidden.pow(2).sum() / hidden.numel()
            loss = recon
            spl = torch.zeros((), dtype=recon.dtype)
            if self.spatial_loss is not None and self.l_sp_loss > 0:
                qp = quadratic_precision(self.spatial_loss, self.n_spot)
                if qp is not None and not callable(getattr(self.spatial_loss, "forward", None)):
                    from ..._core.quadratic import to_torch_sparse

                    Q, c = qp
                    Qt = to_torch_sparse(sp.csr_matrix(Q), dtype=hidden.dtype)
                    spl = self.l_sp_loss * c * (hidden * torch.sparse.mm(Qt, hidden.T).T).sum() / hidden.numel()
                else:
                    spl = self.l_sp_loss * self.spatial_loss(hidden, normalize=True)
                loss = loss + spl
            loss.backward()
            opt.step()
            with torch.no_grad():
                self.U.copy_(torch.linalg.qr(self.U, mode="reduced")[0])
            cur = float(loss.detach())
            stop.update(cur)
            sched.step(cur)
            self.dr_logs["total_loss"].append(cur)
            self.dr_logs["recon_loss"].append(float(recon.detach()))
            self.dr_logs["spatial_loss"].append(float(spl.detach()))
            if verbose and stop.epoch % 10 == 0:
                logger.info("Epoch %d. Loss: (total) %.4f (recon) %.4f (spatial) %.4f", stop.epoch, cur, recon, spl)
        if stop.d_loss >= tol:
            warnings.warn(
                "SpatialPCA did not converge; increase `max_epochs` or use reduce(method='exact').",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_rna_model(cls, rna_model, st_adata, layer: str | None = None, spatial_loss=None, lambda_spatial_loss=0.1):
        """A spatial model with the loadings of a fitted (single-cell) ``SpatialPCA`` as its starting point.

        The exact solver does not depend on the start; the loadings matter for ``reduce(method='sgd')`` or when
        the model is used without refitting.
        """
        if not isinstance(rna_model, SpatialPCA):
            msg = f"Expected `rna_model` to be a fitted SpatialPCA, found {type(rna_model).__name__}."
            raise TypeError(msg)
        if getattr(st_adata, "n_vars", None) != rna_model.n_feature:
            msg = (
                f"`st_adata` has {getattr(st_adata, 'n_vars', None)} features but `rna_model` was built on "
                f"{rna_model.n_feature}; subset both to the same genes in the same order."
            )
            raise ValueError(msg)
        model = cls(
            st_adata,
            layer=layer,
            n_latent=rna_model.n_latent,
            spatial_loss=spatial_loss,
            lambda_spatial_loss=lambda_spatial_loss,
        )
        with torch.no_grad():
            model.U.copy_(rna_model.U.detach().to(model.U.dtype))
        return model

    @classmethod
    def from_scanpy(cls, adata, layer: str | None = None, spatial_loss=None, lambda_spatial_loss=0.1):
        """A model starting from the loadings of ``sc.pp.pca`` in ``adata.varm['PCs']``."""
        if "PCs" not in adata.varm:
            msg = "`adata.varm['PCs']` not found; run `sc.pp.pca(adata)` first."
            raise KeyError(msg)
        PCs = np.asarray(adata.varm["PCs"], dtype=np.float64)
        model = cls(
            adata,
            layer=layer,
            n_latent=PCs.shape[1],
            spatial_loss=spatial_loss,
            lambda_spatial_loss=lambda_spatial_loss,
        )
        with torch.no_grad():
            model.U.copy_(torch.as_tensor(np.ascontiguousarray(PCs)))
        return model
