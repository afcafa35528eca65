r"""Classic ``SpatialAutoEncoder``: an MLP autoencoder with a spatial loss on its latent space (plain torch).

The loss (classic smoother-omics 1.1.0 terms) is

.. math::

    L = \mathrm{recon}(X, \hat X) + \lambda_{orth} \lVert \tilde Z^T \tilde Z - I \rVert_F
        + \lambda_{sp}\, \mathrm{SpatialLoss}(Z^T, \text{normalize=True})

with :math:`Z` the ``n_spots x n_latent`` embedding, :math:`\tilde Z` its columns scaled to unit norm (the
orthogonality term mimics PCA), and ``recon`` the mean squared error or the mean Poisson negative log
likelihood (``recon_loss_mode``). The network layout follows the classic one (an encoder of ``n_layers``
fully connected blocks ``Linear -> BatchNorm -> activation -> dropout``; a decoder of the same blocks, a final
``Linear`` and a ``Softplus``) but is built from torch layers, without scvi-tools.
"""

from __future__ import annotations

import time
import warnings
from copy import deepcopy

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..._core.fit import should_stop
from ..._settings import logger, progress
from ..._validation import check_bool, check_choice, check_int, check_lambda, check_random_state, check_real
from ._sppca import _adata_matrix, check_fit_args, check_spatial_loss, quadratic_precision


def _empty_logs() -> dict:
    return {"elapsed_time": None, "total_loss": [], "recon_loss": [], "orth_loss": [], "spatial_loss": []}


def fc_layers(
    n_in: int,
    n_out: int,
    *,
    n_layers: int = 1,
    n_hidden: int = 128,
    dropout_rate: float = 0.0,
    use_batch_norm: bool = True,
    use_activation: bool = True,
    activation_fn=nn.ReLU,
    bias: bool = True,
) -> nn.Sequential:
    """``n_layers`` blocks ``Linear -> [BatchNorm1d] -> [activation] -> [Dropout]`` from ``n_in`` to ``n_out``."""
    dims = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        blocks.append(nn.Linear(a, b, bias=bias))
        if use_batch_norm:
            blocks.append(nn.BatchNorm1d(b, momentum=0.01, eps=1e-3))
        if use_activation and activation_fn is not None:
            blocks.append(activation_fn())
        if dropout_rate > 0:
            blocks.append(nn.Dropout(p=dropout_rate))
    return nn.Sequential(*blocks)


class SpatialAutoEncoder(nn.Module):
    r"""Autoencoder with a spatial loss on the latent embedding (classic API of smoother-omics).

    A non-linear embedding that keeps neighbouring spots close, trained by gradient descent with torch only
    (no scvi-tools). Use counts with ``recon_loss_mode='poisson'`` (default) or log-normalized data with
    ``'mse'``.

    Parameters
    ----------
    adata
        Data ``(n_spots, n_features)`` (counts for ``recon_loss_mode='poisson'``).
    layer
        Layer to use instead of ``adata.X``.
    spatial_loss
        Classic :class:`~smoother.losses.SpatialLoss` (or a precision matrix), or ``None``.
    lambda_spatial_loss, lambda_orth_loss
        Weights of the spatial and the orthogonality terms.
    recon_loss_mode
        ``'poisson'`` (mean Poisson NLL of the softplus output) or ``'mse'``.
    n_layers, n_hidden, n_latent, dropout_rate, use_batch_norm, use_activation, activation_fn, use_bias
        Network layout (as the classic model).
    random_state
        Seed of the weight initialisation (local; the global torch RNG is left as it was).

    Attributes
    ----------
    dr_logs
        ``{'elapsed_time', 'total_loss', 'recon_loss', 'orth_loss', 'spatial_loss'}`` per epoch.
    setup_args
        The layout arguments (used by :meth:`from_rna_model`).

    Notes
    -----
    Minimizes, per epoch, :math:`\ell_{recon} + \lambda_{orth} \ell_{orth} + \lambda_{sp} L_{sp}(Z^T)`
    over the network weights, with :math:`Z` the ``n_spots x n_latent`` embedding and :math:`L_{sp}` the
    :class:`smoother.SpatialLoss`.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.models.reduction import SpatialAutoEncoder
    >>> adata = sm.datasets.simulate_field(400, pattern="zones", n_genes=30, noise="poisson", seed=0)  # counts
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
    >>> model = SpatialAutoEncoder(
    ...     adata, spatial_loss=sp_loss, lambda_spatial_loss=0.1, n_latent=3, n_hidden=16, random_state=0
    ... )
    >>> model.reduce(max_epochs=20, verbose=False)  # short for the example (it warns: not converged)
    >>> model.get_latent_representation().shape, len(model.dr_logs["spatial_loss"])  # one entry per epoch
    ((400, 3), 20)
    """

    def __init__(
        self,
        adata,
        layer: str | None = None,
        spatial_loss=None,
        lambda_spatial_loss: float = 0.1,
        lambda_orth_loss: float = 0.1,
        recon_loss_mode: str = "poisson",
        n_layers: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        dropout_rate: float = 0.0,
        use_batch_norm: bool = True,
        use_activation: bool = True,
        activation_fn=nn.ReLU,
        use_bias: bool = True,
        *,
        random_state: int | None = 0,
    ) -> None:
        super().__init__()
        recon_loss_mode = check_choice(recon_loss_mode, "recon_loss_mode", ("poisson", "mse"))
        lam_sp = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
        lam_orth = check_lambda(lambda_orth_loss, "lambda_orth_loss")
        n_layers = check_int(n_layers, "n_layers", low=1, example="1")
        n_hidden = check_int(n_hidden, "n_hidden", low=1, example="128")
        n_latent = check_int(n_latent, "n_latent", low=1, example="10")
        dropout_rate = check_real(dropout_rate, "dropout_rate", low=0.0, high=1.0, high_open=True, example="0.1")
        for name, value in (("use_batch_norm", use_batch_norm), ("use_activation", use_activation)):
            check_bool(value, name)
        check_bool(use_bias, "use_bias")
        if activation_fn is not None and not callable(activation_fn):
            msg = f"Expected `activation_fn` to be a torch activation class such as nn.ReLU, found {activation_fn!r}."
            raise TypeError(msg)
        random_state = check_random_state(random_state)
        data = _adata_matrix(adata, layer)
        if recon_loss_mode == "poisson":
            vals = data.data if sp.issparse(data) else data
            if vals.size and vals.min() < 0:
                msg = "`recon_loss_mode='poisson'` needs non-negative data (counts); pass recon_loss_mode='mse'."
                raise ValueError(msg)
        check_spatial_loss(spatial_loss, data.shape[0])
        self.n_feature = int(adata.shape[1])
        self.n_latent = n_latent
        self.spatial_loss = spatial_loss
        self.l_sp_loss = lam_sp
        self.l_orth_loss = lam_orth
        self.setup_args = {
            "lambda_orth_loss": lambda_orth_loss,
            "recon_loss_mode": recon_loss_mode,
            "n_layers": n_layers,
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "dropout_rate": dropout_rate,
            "use_batch_norm": use_batch_norm,
            "use_activation": use_activation,
            "activation_fn": activation_fn,
            "use_bias": use_bias,
        }
        self._recon_loss_fn = (
            nn.MSELoss(reduction="mean")
            if recon_loss_mode == "mse"
            else nn.PoissonNLLLoss(log_input=False, reduction="mean")
        )
        self._data = None
        self.load_adata(adata, layer)
        kw = {
            "n_layers": n_layers,
            "n_hidden": n_hidden,
            "use_batch_norm": use_batch_norm,
            "use_activation": use_activation,
            "activation_fn": activation_fn,
            "bias": use_bias,
        }
        with torch.random.fork_rng(devices=[]):
            if random_state is not None:
                torch.manual_seed(int(random_state))
            self.encoder = fc_layers(self.n_feature, self.n_latent, dropout_rate=dropout_rate, **kw)
            self.decoder = nn.Sequential(
                fc_layers(self.n_latent, n_hidden, dropout_rate=0.0, **kw),
                nn.Linear(n_hidden, self.n_feature, bias=use_bias),
                nn.Softplus(),
            )
        self._Q = None
        self.dr_configs: dict = {}
        self.dr_logs = _empty_logs()

    def load_adata(self, adata, layer: str | None = None) -> None:
        """Load the data to embed (same features as the model)."""
        X = _adata_matrix(adata, layer, self.n_feature)
        X = X.toarray() if sp.issparse(X) else X
        self._data = torch.as_tensor(np.ascontiguousarray(X.T), dtype=torch.float32)  # n_feature x n_spot
        self._Q = None

    # ------------------------------------------------------------------ model
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_features, n_spots)`` -> ``(n_spots, n_latent)``."""
        return self.encoder(x.T)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(n_spots, n_latent)`` -> ``(n_features, n_spots)``."""
        return self.decoder(z).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def get_latent_representation(self) -> np.ndarray:
        """Embedding of the loaded data, ``(n_spots, n_latent)`` (evaluation mode)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            z = self.encode(self._data).cpu().numpy()
        self.train(was)
        return z

    # ------------------------------------------------------------------ losses
    def _spatial(self, z: torch.Tensor) -> torch.Tensor:
        if self.spatial_loss is None or self.l_sp_loss <= 0:
            return torch.zeros((), dtype=z.dtype)
        qp = quadratic_precision(self.spatial_loss, z.shape[0])
        if qp is not None and not callable(getattr(self.spatial_loss, "forward", None)):
            from ..._core.quadratic import to_torch_sparse

            if self._Q is None:
                self._Q = to_torch_sparse(sp.csr_matrix(qp[0]), dtype=z.dtype)
            return self.l_sp_loss * qp[1] * (z * torch.sparse.mm(self._Q, z)).sum() / z.numel()
        return self.l_sp_loss * self.spatial_loss(z.T, normalize=True)

    def _orth(self, z: torch.Tensor) -> torch.Tensor:
        if self.l_orth_loss <= 0:
            return torch.zeros((), dtype=z.dtype)
        zn = z / (z.norm(dim=0, keepdim=True) + 1e-8)
        return self.l_orth_loss * torch.linalg.norm(zn.T @ zn - torch.eye(z.shape[1], dtype=z.dtype))

    def _loss_parts(self) -> dict[str, torch.Tensor]:
        x = self._data
        z = self.encode(x)
        recon = self._recon_loss_fn(self.decode(z), x)
        return {"recon_loss": recon, "orth_loss": self._orth(z), "spatial_loss": self._spatial(z)}

    def get_recon_loss(self) -> torch.Tensor:
        """Reconstruction loss of the loaded data."""
        return self._loss_parts()["recon_loss"]

    def get_orth_loss(self) -> torch.Tensor:
        """Orthogonality loss (weighted by ``lambda_orth_loss``)."""
        return self._loss_parts()["orth_loss"]

    def get_sp_loss(self) -> torch.Tensor:
        """Spatial loss (weighted by ``lambda_spatial_loss``)."""
        return self._loss_parts()["spatial_loss"]

    # ------------------------------------------------------------------ fitting
    def reduce(
        self,
        lr: float = 1e-2,
        max_epochs: int = 1000,
        patience: int = 10,
        tol: float = 1e-5,
        optimizer: str = "SGD",
        verbose: bool = True,
        quite: bool = False,
        clear_logs: bool = True,
        *,
        quiet: bool | None = None,
    ) -> None:
        """Train on the loaded data (full batch).

        Stops after ``patience`` consecutive epochs whose loss decreased by less than ``tol`` (relative; the
        rule every gradient fit of smoother uses) or at ``max_epochs``. ``optimizer`` is ``'SGD'``
        (momentum 0.9) or ``'Adam'``; the learning rate drops tenfold on plateaus as in the classic model.
        """
        lr, max_epochs, patience, tol = check_fit_args(
            lr, max_epochs, patience, tol, verbose=verbose, quite=quite, clear_logs=clear_logs, quiet=quiet
        )
        optimizer = check_choice(optimizer, "optimizer", ("SGD", "Adam"))
        check_spatial_loss(self.spatial_loss, self._data.shape[1], data="the loaded data")
        if quiet is not None:
            quite = quiet
        self.dr_configs = {"lr": lr, "max_epochs": max_epochs, "patience": patience, "tol": tol, "optimizer": optimizer}
        if clear_logs:
            self.dr_logs = _empty_logs()
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr) if optimizer == "Adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=int(patience / 4) + 1, factor=0.1)
        max_epochs = 10000 if max_epochs == -1 else int(max_epochs)
        t0 = time.perf_counter()
        self.train()
        prev, stall, converged = np.inf, 0, False
        bar = progress(total=max_epochs, desc="SpatialAutoEncoder", disable=None if verbose and not quite else True)
        try:
            for _ in range(max_epochs):
                opt.zero_grad()
                parts = self._loss_parts()
                loss = parts["recon_loss"] + parts["orth_loss"] + parts["spatial_loss"]
                loss.backward()
                opt.step()
                cur = float(loss.detach())
                sched.step(cur)
                self.dr_logs["total_loss"].append(cur)
                for k, v in parts.items():
                    self.dr_logs[k].append(float(v.detach()))
                bar.update(1)
                if not np.isfinite(cur):
                    break
                stop, stall = should_stop(prev, cur, stall, tol=tol, patience=patience)
                prev = cur
                if stop:
                    converged = True
                    break
        finally:
            bar.close()
        self.eval()
        self.dr_logs["elapsed_time"] = time.perf_counter() - t0
        if not quite:
            logger.info(
                "SpatialAutoEncoder: %.2fs, %d epochs, loss %.4f",
                self.dr_logs["elapsed_time"],
                len(self.dr_logs["total_loss"]),
                self.dr_logs["total_loss"][-1],
            )
        if not converged:
            warnings.warn("SpatialAutoEncoder did not converge; increase `max_epochs`.", UserWarning, stacklevel=2)

    @classmethod
    def from_rna_model(cls, rna_model, st_adata, layer: str | None = None, spatial_loss=None, lambda_spatial_loss=0.1):
        """A spatial autoencoder with the layout and weights of a trained (single-cell) autoencoder."""
        if not isinstance(rna_model, SpatialAutoEncoder):
            msg = f"Expected `rna_model` to be a trained SpatialAutoEncoder, found {type(rna_model).__name__}."
            raise TypeError(msg)
        if getattr(st_adata, "n_vars", None) != rna_model.n_feature:
            msg = (
                f"`st_adata` has {getattr(st_adata, 'n_vars', None)} features but `rna_model` was built on "
                f"{rna_model.n_feature}; subset both to the same genes in the same order."
            )
            raise ValueError(msg)
        args = deepcopy(rna_model.setup_args)
        model = cls(st_adata, layer=layer, spatial_loss=spatial_loss, lambda_spatial_loss=lambda_spatial_loss, **args)
        state = {k: v for k, v in rna_model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        model.load_state_dict(state, strict=False)
        return model
