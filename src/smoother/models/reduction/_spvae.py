r"""scvi-tools models with a spatial loss on the latent means: ``SpatialVAE``, ``SpatialANVI``, ``SpatialMULTIVI``.

Each model is the scvi-tools model (``SCVI``, ``SCANVI``, ``MULTIVI``; public API only) whose module adds, to
the usual per-spot loss, the spatial loss of the latent means :math:`M` (``n_batch x n_latent``) of the spots
:math:`B` in the mini-batch, on the sub-graph of those spots:

.. math::

    \ell_{sp} = \frac{\lambda c}{|B|}\, \mathrm{tr}\big(M^T Q_{BB} M\big)

(``lambda_spatial_loss`` :math:`\lambda`, confidence :math:`c` of the classic ``SpatialLoss``). With
``sp_loss_as_kl=True`` (``SpatialVAE`` only) the standard normal KL term of ``z`` is replaced by the KL
divergence to the Gaussian random field prior :math:`N(0, Q^{-1})` up to constants,
:math:`\frac{\lambda}{2|B|}\big(\mathrm{tr}(M^T Q_{BB} M) + \sum_{i,k} Q_{ii} v_{ik} - \sum_{i,k} \log v_{ik}\big)`,
as in the published package.

Training. The published package trains full batch. Here ``train(batch_size=None)`` does the same (one batch
with every spot, so :math:`Q_{BB} = Q`), and ``train(batch_size=b)`` trains on mini-batches that are spatial
tiles: square cells of a grid laid over ``adata.obsm['spatial']`` (shifted at random every epoch, so no tile
border is fixed), grouped into batches of about ``b`` spatially contiguous spots. The spatial loss of a batch
uses the principal sub-matrix :math:`Q_{BB}` of its spots, i.e. the edges inside the tile.
"""

from __future__ import annotations

import inspect
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..._settings import logger
from ._sppca import quadratic_precision

SPOT_INDEX_KEY = "_smoother_spot_index"


# ----------------------------------------------------------------------------------------------- tiling
def spatial_tiles(coords: np.ndarray, batch_size: int, *, offset: np.ndarray | None = None) -> list[np.ndarray]:
    """Split spots into batches of about ``batch_size`` spatially contiguous spots.

    A square grid with cells of about ``batch_size / 2`` spots (on average over the bounding box) is laid over
    ``coords`` (shifted by ``offset``, in units of the cell side); the non-empty cells are visited in a snake
    order (so consecutive cells touch) and gathered into batches of at least ``batch_size / 2`` spots.

    Returns
    -------
    list of index arrays covering every spot exactly once.
    """
    coords = np.asarray(coords, dtype=np.float64)[:, :2]
    n = coords.shape[0]
    if batch_size >= n:
        return [np.arange(n)]
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-12)
    side = float(np.sqrt(span[0] * span[1] * (batch_size / 2.0) / n))
    side = max(side, 1e-12)
    off = np.zeros(2) if offset is None else np.asarray(offset, dtype=np.float64)
    cell = np.floor((coords - lo) / side + off).astype(np.int64)
    cell -= cell.min(axis=0)
    ncol = int(cell[:, 0].max()) + 1
    row, col = cell[:, 1], cell[:, 0]
    snake_col = np.where(row % 2 == 0, col, ncol - 1 - col)
    key = row * ncol + snake_col
    order = np.argsort(key, kind="stable")
    keys_sorted = key[order]
    bounds = np.flatnonzero(np.diff(keys_sorted)) + 1
    cells = np.split(order, bounds)
    batches: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    size = 0
    for c in cells:
        cur.append(c)
        size += c.size
        if size >= batch_size:
            batches.append(np.concatenate(cur))
            cur, size = [], 0
    if cur:
        rest = np.concatenate(cur)
        if batches and rest.size < batch_size // 2:
            batches[-1] = np.concatenate([batches[-1], rest])
        else:
            batches.append(rest)
    return batches


class _TileBatchSampler:
    """Yields index arrays of spatial tiles (or one full batch), re-tiled with a random grid shift each epoch."""

    def __init__(self, coords: np.ndarray | None, n: int, batch_size: int | None, seed: int | None):
        self.coords, self.n, self.batch_size = coords, n, batch_size
        self.rng = np.random.default_rng(seed)
        self._len = len(self._batches())

    def _batches(self) -> list[np.ndarray]:
        if self.batch_size is None or self.batch_size >= self.n:
            return [np.arange(self.n)]
        return spatial_tiles(self.coords, self.batch_size, offset=self.rng.uniform(size=2))

    def __iter__(self):
        batches = self._batches()
        for i in self.rng.permutation(len(batches)):
            yield batches[i]

    def __len__(self) -> int:
        return self._len


class _WithSpotIndex(torch.utils.data.Dataset):
    """Wraps an scvi dataset so each batch also carries the (global) indices of its spots."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        out = dict(self.dataset[idx])
        out[SPOT_INDEX_KEY] = np.asarray(idx, dtype=np.int64)
        return out


class _TileLoader(torch.utils.data.DataLoader):
    """DataLoader of spatial tiles (with the no-op hook scvi's semi-supervised callback calls)."""

    def resample_labels(self):
        return None


def _make_splitter_cls():
    from scvi.dataloaders import DataSplitter

    class SpatialTileSplitter(DataSplitter):
        """All spots train; training batches are spatial tiles (see :func:`spatial_tiles`)."""

        def __init__(self, adata_manager, *args, coords=None, tile_batch_size=None, seed=0, **kwargs):
            for k in ("batch_size", "train_size", "validation_size", "shuffle_set_split"):
                kwargs.pop(k, None)
            super().__init__(
                adata_manager, *args, train_size=1.0, validation_size=None, shuffle_set_split=False, **kwargs
            )
            self._coords, self._tile_bs, self._seed = coords, tile_batch_size, seed

        def setup(self, stage=None):
            n = self.adata_manager.adata.n_obs
            self.train_idx = np.arange(n)
            self.val_idx = np.array([], dtype=np.int64)
            self.test_idx = np.array([], dtype=np.int64)

        def train_dataloader(self):
            n = self.adata_manager.adata.n_obs
            ds = _WithSpotIndex(self.adata_manager.create_torch_dataset(indices=np.arange(n)))
            sampler = _TileBatchSampler(self._coords, n, self._tile_bs, self._seed)
            return _TileLoader(ds, sampler=sampler, batch_size=None, num_workers=0)

        def val_dataloader(self):
            return None

        def test_dataloader(self):
            return None

    return SpatialTileSplitter


# ----------------------------------------------------------------------------------------------- module mixin
class _SpatialLossMixin:
    """Adds the spatial loss of the latent means to an scvi module's ``loss`` (set up by :func:`_attach`)."""

    def _latent_moments(self, inference_outputs):
        qz = inference_outputs.get("qz")
        if qz is not None and hasattr(qz, "loc"):
            return qz.loc, qz.scale**2
        return inference_outputs["qz_m"], inference_outputs["qz_v"]

    def _sub_precision(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        from ..._core.quadratic import to_torch_sparse

        idx_np = idx.detach().cpu().numpy()
        Q = self._sm_Q
        n = Q.shape[0]
        if idx_np.size == n and np.array_equal(idx_np, np.arange(n)):
            if self._sm_Q_full is None:
                self._sm_Q_full = to_torch_sparse(Q, dtype=like.dtype)
            return self._sm_Q_full.to(like.device)
        sub = Q[idx_np][:, idx_np]
        return to_torch_sparse(sub, dtype=like.dtype, device=like.device)

    def loss(self, tensors, inference_outputs, generative_outputs, *args, **kwargs):
        from scvi.module.base import LossOutput

        base = super().loss(tensors, inference_outputs, generative_outputs, *args, **kwargs)
        lam = getattr(self, "l_sp_loss", 0.0)
        idx = tensors.get(SPOT_INDEX_KEY) if isinstance(tensors, dict) else None
        if getattr(self, "_sm_Q", None) is None or lam <= 0 or idx is None:
            return base
        m, v = self._latent_moments(inference_outputs)
        QB = self._sub_precision(torch.as_tensor(idx).reshape(-1), m)
        b = m.shape[0]
        quad = (m * torch.sparse.mm(QB, m)).sum()
        scale = lam * self._sm_conf / b
        if not self.sp_loss_as_kl:
            sp_term = scale * quad
            total = base.loss + sp_term
        else:
            kl_weight = kwargs.get("kl_weight", args[0] if args else 1.0)
            diag = torch.as_tensor(self._sm_Q_diag[torch.as_tensor(idx).cpu().numpy()], dtype=m.dtype, device=m.device)
            sp_term = 0.5 * scale * (quad + (diag[:, None] * v).sum() - torch.log(v).sum())
            kl_z = base.kl_local["kl_divergence_z"]
            total = base.loss - kl_weight * kl_z.mean() + kl_weight * sp_term
        return LossOutput(
            loss=total,
            reconstruction_loss=base.reconstruction_loss,
            kl_local=base.kl_local,
            kl_global=sp_term.detach(),
            extra_metrics=base.extra_metrics,
        )


def _attach(module, spatial_loss, lambda_spatial_loss: float, sp_loss_as_kl: bool, n_spots: int):
    """Turn an scvi module into its spatial subclass in place and store the precision."""
    base_cls = type(module)
    if not isinstance(module, _SpatialLossMixin):
        module.__class__ = type(f"Spatial{base_cls.__name__}", (_SpatialLossMixin, base_cls), {})
    module.l_sp_loss = float(lambda_spatial_loss)
    module.sp_loss_as_kl = bool(sp_loss_as_kl)
    module._sm_Q, module._sm_Q_full, module._sm_conf, module._sm_Q_diag = None, None, 1.0, None
    if spatial_loss is None or lambda_spatial_loss <= 0:
        if sp_loss_as_kl:
            msg = "`sp_loss_as_kl=True` needs a spatial loss and lambda_spatial_loss > 0."
            raise ValueError(msg)
        return module
    qp = quadratic_precision(spatial_loss, n_spots)
    if qp is None:
        msg = (
            "The spatial loss must be a quadratic SpatialLoss on these spots (one weight matrix, equal "
            f"confidences) or a precision matrix of shape ({n_spots}, {n_spots})."
        )
        raise ValueError(msg)
    Q, c = qp
    module._sm_Q = sp.csr_matrix(Q, dtype=np.float64)
    module._sm_conf = float(c)
    if sp_loss_as_kl:
        module._sm_Q_diag = module._sm_Q.diagonal()
    return module


# ----------------------------------------------------------------------------------------------- models
def _spatial_train(model, *, max_epochs, lr, batch_size, coords_key, random_state, plan_kwargs, kwargs):
    coords = None
    if batch_size is not None:
        if coords_key not in model.adata.obsm:
            msg = f"Mini-batch tiles need coordinates in `adata.obsm[{coords_key!r}]`; or pass batch_size=None."
            raise KeyError(msg)
        coords = np.asarray(model.adata.obsm[coords_key], dtype=np.float64)
    if kwargs.get("early_stopping", False):
        msg = "Early stopping is not supported: all spots are training spots (there is no validation set)."
        raise ValueError(msg)
    kwargs.pop("early_stopping", None)
    plan_kwargs = dict(plan_kwargs or {})
    plan_kwargs["lr"] = lr
    if "lr" in inspect.signature(model._scvi_cls.train).parameters:
        # MULTIVI.train takes its own `lr` (default 1e-4) and writes it over plan_kwargs["lr"]
        kwargs["lr"] = lr
    model._data_splitter_cls = _make_splitter_cls()
    t0 = time.perf_counter()
    model._scvi_cls.train(  # the scvi model's own train (SCVI / SCANVI / MULTIVI)
        model,
        max_epochs=max_epochs,
        accelerator=kwargs.pop("accelerator", "cpu"),
        devices=kwargs.pop("devices", "auto"),
        datasplitter_kwargs={"coords": coords, "tile_batch_size": batch_size, "seed": random_state},
        plan_kwargs=plan_kwargs,
        early_stopping=False,
        **kwargs,
    )
    elapsed = time.perf_counter() - t0
    hist = model.history
    model.dr_logs = {
        "elapsed_time": elapsed,
        "time_per_epoch": elapsed / max(1, max_epochs),
        "total_loss": _hist(hist, "elbo_train"),
        "recon_loss": _hist(hist, "reconstruction_loss_train"),
        "spatial_loss": _hist(hist, "kl_global_train"),
        "train_loss": _hist(hist, "train_loss_epoch"),
    }
    logger.info("%s: %d epochs in %.2fs", type(model).__name__, max_epochs, elapsed)


def _hist(hist, key) -> list[float]:
    if key not in hist:
        return []
    return [float(v) for v in np.asarray(hist[key]).ravel()]


def _make_models():
    from scvi.model import MULTIVI, SCANVI, SCVI

    class _SpatialModelMixin:
        _scvi_cls = None

        def _init_spatial(self, spatial_loss, lambda_spatial_loss, sp_loss_as_kl):
            _attach(self.module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl, self.adata.n_obs)
            self._model_summary_string = self._model_summary_string.replace(
                self._scvi_cls.__name__, type(self).__name__, 1
            )
            self.dr_logs = {"elapsed_time": None, "total_loss": [], "recon_loss": [], "spatial_loss": []}

        def train(
            self,
            max_epochs: int = 400,
            lr: float = 0.01,
            accelerator: str = "cpu",
            devices="auto",
            plan_kwargs: dict | None = None,
            *,
            batch_size: int | None = None,
            coords_key: str = "spatial",
            random_state: int | None = 0,
            **kwargs,
        ):
            """Train with the spatial loss (full batch when ``batch_size=None``, else spatial tiles).

            Parameters
            ----------
            max_epochs, lr, accelerator, devices, plan_kwargs
                As in scvi-tools (``lr`` goes into ``plan_kwargs``).
            batch_size
                ``None``: one batch with every spot (the published behaviour). An integer: mini-batches of
                about that many spatially contiguous spots (tiles of ``adata.obsm[coords_key]``), the spatial
                loss of each on its own sub-graph.
            coords_key
                Coordinates used for the tiles.
            random_state
                Seed of the tile shifts and batch order.
            **kwargs
                Passed to the scvi-tools trainer.

            Sets ``dr_logs`` (``elapsed_time``, ``time_per_epoch``, per-epoch ``total_loss``, ``recon_loss``,
            ``spatial_loss``).
            """
            _spatial_train(
                self,
                max_epochs=max_epochs,
                lr=lr,
                batch_size=batch_size,
                coords_key=coords_key,
                random_state=random_state,
                plan_kwargs=plan_kwargs,
                kwargs={"accelerator": accelerator, "devices": devices, **kwargs},
            )

        @classmethod
        def from_rna_model(
            cls,
            st_adata,
            sc_model,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            unfrozen: bool = False,
            freeze_dropout: bool = False,
            freeze_expression: bool = True,
            freeze_decoder_first_layer: bool = True,
            freeze_batchnorm_encoder: bool = True,
            freeze_batchnorm_decoder: bool = False,
            freeze_classifier: bool = True,
        ):
            """Fine-tune a model trained on single-cell data on spatial data (scArches online update).

            ``st_adata`` gets the reference's genes (missing ones padded with zeros, via
            ``prepare_query_anndata``); the weights are copied and frozen as the ``freeze_*`` flags say
            (``unfrozen=True`` trains everything). The returned model is not trained yet.
            """
            scvi_cls = cls._scvi_cls
            st = scvi_cls.prepare_query_anndata(st_adata, sc_model, inplace=False)
            if st is None:
                st = st_adata
            base = scvi_cls.load_query_data(
                st,
                sc_model,
                unfrozen=unfrozen,
                freeze_dropout=freeze_dropout,
                freeze_expression=freeze_expression,
                freeze_decoder_first_layer=freeze_decoder_first_layer,
                freeze_batchnorm_encoder=freeze_batchnorm_encoder,
                freeze_batchnorm_decoder=freeze_batchnorm_decoder,
                freeze_classifier=freeze_classifier,
            )
            base.__class__ = cls
            base._init_spatial(spatial_loss, lambda_spatial_loss, sp_loss_as_kl)
            base.is_trained_ = False
            return base

    class SpatialVAE(_SpatialModelMixin, SCVI):
        """``scvi.model.SCVI`` with a spatial loss on the latent means (see the module docstring).

        Parameters
        ----------
        st_adata
            Spatial AnnData registered with ``SpatialVAE.setup_anndata`` (counts).
        spatial_loss
            Classic :class:`~smoother.losses.SpatialLoss` on these spots, or a precision matrix.
        lambda_spatial_loss
            Weight :math:`\\lambda` of the spatial loss.
        sp_loss_as_kl
            Replace the standard normal KL of ``z`` by the KL to the spatial prior.
        n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood, latent_distribution, **model_kwargs
            As ``scvi.model.SCVI``.
        """

        _scvi_cls = SCVI

        def __init__(
            self,
            st_adata,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            n_hidden: int = 128,
            n_latent: int = 10,
            n_layers: int = 1,
            dropout_rate: float = 0.0,
            dispersion: str = "gene",
            gene_likelihood: str = "nb",
            latent_distribution: str = "normal",
            **model_kwargs,
        ):
            super().__init__(
                st_adata,
                n_hidden=n_hidden,
                n_latent=n_latent,
                n_layers=n_layers,
                dropout_rate=dropout_rate,
                dispersion=dispersion,
                gene_likelihood=gene_likelihood,
                latent_distribution=latent_distribution,
                **model_kwargs,
            )
            self._init_spatial(spatial_loss, lambda_spatial_loss, sp_loss_as_kl)
            self.init_params_ = self._get_init_params(locals())

    class SpatialANVI(_SpatialModelMixin, SCANVI):
        """``scvi.model.SCANVI`` with a spatial loss on the latent means (``sp_loss_as_kl`` not supported).

        The classifier is trained on the labelled spots of the full-data batches only when scvi-tools' own
        semi-supervised loader is used; with the spatial tile loader, batches carry no separate labelled set,
        so fine-tune a trained SCANVI (``from_rna_model``) rather than training one from scratch here.
        """

        _scvi_cls = SCANVI

        def __init__(
            self,
            st_adata,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            **model_kwargs,
        ):
            if sp_loss_as_kl:
                msg = "`sp_loss_as_kl=True` is only available for SpatialVAE."
                raise ValueError(msg)
            super().__init__(st_adata, **model_kwargs)
            self._init_spatial(spatial_loss, lambda_spatial_loss, False)
            self.init_params_ = self._get_init_params(locals())

    class SpatialMULTIVI(_SpatialModelMixin, MULTIVI):
        """``scvi.model.MULTIVI`` with a spatial loss on the joint latent means (``sp_loss_as_kl`` not supported).

        Register the data with ``SpatialMULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna",
        "atac_layer": "atac"})`` on a ``MuData`` whose ``obsm['spatial']`` holds the coordinates (needed for
        tiled mini-batches); in scvi-tools >= 1.4 ``MULTIVI.setup_anndata`` is deprecated and registers nothing.
        ``train(lr=...)`` is honoured (scvi's ``MULTIVI.train`` default is ``1e-4``; here it is ``0.01``).
        """

        _scvi_cls = MULTIVI

        def __init__(
            self,
            st_adata,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            **model_kwargs,
        ):
            if sp_loss_as_kl:
                msg = "`sp_loss_as_kl=True` is only available for SpatialVAE."
                raise ValueError(msg)
            super().__init__(st_adata, **model_kwargs)
            self._init_spatial(spatial_loss, lambda_spatial_loss, False)
            self._model_summary_string = self._model_summary_string.replace("MultiVI", type(self).__name__, 1)
            self.init_params_ = self._get_init_params(locals())

    return SpatialVAE, SpatialANVI, SpatialMULTIVI


_MODELS = None


def __getattr__(name: str):
    global _MODELS
    if name in ("SpatialVAE", "SpatialANVI", "SpatialMULTIVI"):
        if _MODELS is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _MODELS = dict(zip(("SpatialVAE", "SpatialANVI", "SpatialMULTIVI"), _make_models(), strict=True))
        return _MODELS[name]
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
