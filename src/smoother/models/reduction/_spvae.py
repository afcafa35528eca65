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
from copy import deepcopy

import numpy as np
import scipy.sparse as sp
import torch

from ..._settings import logger
from ..._validation import check_bool, check_device, check_int, check_key, check_lambda, check_random_state, check_real
from ._sppca import check_spatial_loss, quadratic_precision, spatial_loss_spots

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
        if getattr(self, "_sm_Q", None) is None or lam <= 0:
            return base
        m, v = self._latent_moments(inference_outputs)
        idx = tensors.get(SPOT_INDEX_KEY) if isinstance(tensors, dict) else None
        if idx is None:
            if m.shape[0] != self._sm_Q.shape[0]:
                # a batch of unknown spots (e.g. scvi's own evaluation loaders): no spatial term can be formed
                return base
            idx = torch.arange(m.shape[0])  # the whole data set, in order (the published full-batch convention)
        idx = torch.as_tensor(idx).reshape(-1)
        QB = self._sub_precision(idx, m)
        b = m.shape[0]
        quad = (m * torch.sparse.mm(QB, m)).sum()
        scale = lam * self._sm_conf / b
        kl_weight = kwargs.get("kl_weight", args[0] if args else 1.0)
        kl_local = base.kl_local
        if not self.sp_loss_as_kl:
            sp_term = scale * quad
            total = base.loss + sp_term
        else:
            diag = torch.as_tensor(self._sm_Q_diag[idx.cpu().numpy()], dtype=m.dtype, device=m.device)
            sp_term = 0.5 * scale * (quad + (diag[:, None] * v).sum() - torch.log(v).sum())
            total = base.loss + kl_weight * sp_term
            if isinstance(kl_local, dict) and "kl_divergence_z" in kl_local:
                # the KL of z to N(0, I) is replaced by the KL to the spatial prior
                total = total - kl_weight * kl_local["kl_divergence_z"].mean()
                kl_local = {**kl_local, "kl_divergence_z": sp_term}
        return LossOutput(
            loss=total,
            reconstruction_loss=base.reconstruction_loss,
            kl_local=kl_local,
            kl_global=sp_term.detach(),
            classification_loss=base.classification_loss,
            true_labels=base.true_labels,
            logits=base.logits,
            extra_metrics=base.extra_metrics,
        )


_MODULE_CLASSES: dict = {}  # scvi module class -> its spatial subclass (SPVAE, SPANVAE, SPMULTIVAE)


def _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, n_spots: int | None, data: str):
    """Check the spatial arguments of a model or module (before anything is built); return ``(lambda, kl)``."""
    lam = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
    kl = check_bool(sp_loss_as_kl, "sp_loss_as_kl")
    if n_spots is None:
        spatial_loss_spots(spatial_loss)  # type check only
    else:
        check_spatial_loss(spatial_loss, n_spots, data=data)
    if kl and (spatial_loss is None or lam == 0):
        msg = (
            "`sp_loss_as_kl=True` replaces the KL term by the spatial prior's: it needs `spatial_loss` and "
            "`lambda_spatial_loss` > 0."
        )
        raise ValueError(msg)
    return lam, kl


def _attach(module, spatial_loss, lambda_spatial_loss: float, sp_loss_as_kl: bool, n_spots: int | None = None):
    """Turn an scvi module into its spatial subclass in place and store the precision (arguments checked)."""
    lam, kl = _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, n_spots, "adata")
    if not isinstance(module, _SpatialLossMixin):
        base_cls = type(module)
        cls = _MODULE_CLASSES.get(base_cls) or type(f"Spatial{base_cls.__name__}", (_SpatialLossMixin, base_cls), {})
        module.__class__ = cls
    module.spatial_loss = spatial_loss
    module.l_sp_loss = lam
    module.sp_loss_as_kl = kl
    module._sm_Q, module._sm_Q_full, module._sm_conf, module._sm_Q_diag = None, None, 1.0, None
    if spatial_loss is None or lam == 0:
        return module
    n = n_spots if n_spots is not None else spatial_loss_spots(spatial_loss)
    qp = quadratic_precision(spatial_loss, n) if n is not None else None
    if qp is None:
        msg = (
            "`spatial_loss` must be a quadratic SpatialLoss (one weight matrix, equal confidences; not 'kl' or "
            "contrastive) or a precision matrix."
        )
        raise ValueError(msg)
    Q, c = qp
    module._sm_Q = sp.csr_matrix(Q, dtype=np.float64)
    module._sm_conf = float(c)
    if kl:
        module._sm_Q_diag = module._sm_Q.diagonal()
    return module


# ----------------------------------------------------------------------------------------------- models
_ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _check_train_args(model, max_epochs, lr, batch_size, coords_key, random_state, accelerator, devices):
    """Check the training arguments before anything is trained (``device='cuda'`` without CUDA included)."""
    max_epochs = check_int(max_epochs, "max_epochs", low=1, example="400")
    lr = check_real(lr, "lr", low=0.0, example="0.01")
    batch_size = check_int(batch_size, "batch_size", low=2, allow_none=True, example="256")
    coords_key = check_key(coords_key, "coords_key")
    random_state = check_random_state(random_state)
    if not isinstance(accelerator, str) or accelerator not in _ACCELERATORS:
        msg = (
            f"Expected `accelerator` to be one of {list(_ACCELERATORS)}, found `{accelerator!r}` "
            "(e.g. accelerator='cpu')."
        )
        raise (TypeError if not isinstance(accelerator, str) else ValueError)(msg)
    if accelerator in ("gpu", "cuda"):
        index = devices[0] if isinstance(devices, (list, tuple)) and len(devices) == 1 else None
        check_device("cuda" if not isinstance(index, int) else f"cuda:{index}", "accelerator")
    elif accelerator == "mps":
        check_device("mps", "accelerator")
    coords = None
    if batch_size is not None:
        if coords_key not in model.adata.obsm:
            msg = f"Mini-batch tiles need coordinates in `adata.obsm[{coords_key!r}]`; or pass batch_size=None."
            raise KeyError(msg)
        from ..._validation import check_coords

        coords = check_coords(model.adata.obsm[coords_key], name=f"adata.obsm[{coords_key!r}]")
    return max_epochs, lr, batch_size, coords, random_state


def _spatial_train(model, *, max_epochs, lr, batch_size, coords_key, random_state, plan_kwargs, kwargs):
    max_epochs, lr, batch_size, coords, random_state = _check_train_args(
        model,
        max_epochs,
        lr,
        batch_size,
        coords_key,
        random_state,
        kwargs.get("accelerator", "cpu"),
        kwargs.get("devices", "auto"),
    )
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


def _make_modules():
    """The spatial scvi modules of smoother-omics 1.1.0's names: ``SPVAE``, ``SPANVAE``, ``SPMULTIVAE``."""
    from scvi.module import MULTIVAE, SCANVAE, VAE

    def _module_init(self, base_cls, spatial_loss, lambda_spatial_loss, sp_loss_as_kl, kwargs):
        _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, None, "the data")
        base_cls.__init__(self, **kwargs)
        _attach(self, spatial_loss, lambda_spatial_loss, sp_loss_as_kl)

    def _from_vae(cls, vae_module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl):
        base = cls.__mro__[2]  # (cls, _SpatialLossMixin, scvi module class, ...)
        if not isinstance(vae_module, base) or (type(vae_module) is not base and not isinstance(vae_module, cls)):
            msg = f"Expected `vae_module` to be a {base.__name__}, found {type(vae_module).__name__}."
            raise TypeError(msg)
        _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, None, "the data")
        module = deepcopy(vae_module)
        module.__class__ = cls
        return _attach(module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl)

    class SPVAE(_SpatialLossMixin, VAE):
        """``scvi.module.VAE`` with the spatial loss of the latent means (smoother-omics 1.1.0's name).

        Parameters
        ----------
        n_input
            Number of genes.
        spatial_loss
            Classic :class:`~smoother.losses.SpatialLoss` or a precision matrix, on the spots of the data.
        lambda_spatial_loss
            Weight of the spatial loss.
        sp_loss_as_kl
            Replace the KL of ``z`` to ``N(0, I)`` by the KL to the spatial prior.
        n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood, latent_distribution, **model_kwargs
            As ``scvi.module.VAE``.
        """

        def __init__(
            self,
            n_input: int,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            n_hidden: int = 128,
            n_latent: int = 10,
            n_layers: int = 1,
            dropout_rate: float = 0.1,
            dispersion: str = "gene",
            gene_likelihood: str = "nb",
            latent_distribution: str = "normal",
            **model_kwargs,
        ):
            kwargs = {
                "n_input": n_input,
                "n_hidden": n_hidden,
                "n_latent": n_latent,
                "n_layers": n_layers,
                "dropout_rate": dropout_rate,
                "dispersion": dispersion,
                "gene_likelihood": gene_likelihood,
                "latent_distribution": latent_distribution,
                **model_kwargs,
            }
            _module_init(self, VAE, spatial_loss, lambda_spatial_loss, sp_loss_as_kl, kwargs)

        @classmethod
        def from_vae(cls, vae_module, spatial_loss=None, lambda_spatial_loss: float = 0.1, sp_loss_as_kl=False):
            """A copy of a (trained) ``VAE`` module with the spatial loss added."""
            return _from_vae(cls, vae_module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl)

    class SPANVAE(_SpatialLossMixin, SCANVAE):
        """``scvi.module.SCANVAE`` with the spatial loss of the latent means ``z1`` (smoother-omics 1.1.0's name).

        SCANVI's ``z1`` has a learned hierarchical prior rather than ``N(0, I)``, so ``sp_loss_as_kl=True`` adds
        the KL to the spatial prior (weighted like the other KL terms) instead of replacing a term.
        """

        def __init__(
            self,
            n_input: int,
            spatial_loss=None,
            lambda_spatial_loss: float = 0.1,
            sp_loss_as_kl: bool = False,
            **model_kwargs,
        ):
            kwargs = {"n_input": n_input, **model_kwargs}
            _module_init(self, SCANVAE, spatial_loss, lambda_spatial_loss, sp_loss_as_kl, kwargs)

        @classmethod
        def from_vae(cls, vae_module, spatial_loss=None, lambda_spatial_loss: float = 0.1, sp_loss_as_kl=False):
            """A copy of a (trained) ``SCANVAE`` module with the spatial loss added."""
            return _from_vae(cls, vae_module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl)

    class SPMULTIVAE(_SpatialLossMixin, MULTIVAE):
        """``scvi.module.MULTIVAE`` with the spatial loss of the joint latent means (smoother-omics 1.1.0's name).

        The defaults are the published ones: ``lambda_spatial_loss=1``, ``sp_loss_as_kl=True``.
        """

        def __init__(
            self,
            spatial_loss=None,
            lambda_spatial_loss: float = 1.0,
            sp_loss_as_kl: bool = True,
            **model_kwargs,
        ):
            _module_init(self, MULTIVAE, spatial_loss, lambda_spatial_loss, sp_loss_as_kl, model_kwargs)

        @classmethod
        def from_vae(cls, vae_module, spatial_loss=None, lambda_spatial_loss: float = 1.0, sp_loss_as_kl=True):
            """A copy of a (trained) ``MULTIVAE`` module with the spatial loss added."""
            return _from_vae(cls, vae_module, spatial_loss, lambda_spatial_loss, sp_loss_as_kl)

    _MODULE_CLASSES.update({VAE: SPVAE, SCANVAE: SPANVAE, MULTIVAE: SPMULTIVAE})
    return SPVAE, SPANVAE, SPMULTIVAE


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
            if not isinstance(sc_model, scvi_cls):
                msg = f"Expected `sc_model` to be a trained {scvi_cls.__name__}, found {type(sc_model).__name__}."
                raise TypeError(msg)
            _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, st_adata.n_obs, "st_adata")
            from anndata import AnnData

            st = st_adata
            if isinstance(st_adata, AnnData):  # a MuData (MULTIVI) is used as registered, modality by modality
                st = scvi_cls.prepare_query_anndata(st_adata, sc_model, inplace=False)
                st = st_adata if st is None else st
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
        """scVI with a spatial loss: a count-based embedding in which neighbouring spots lie close together.

        ``scvi.model.SCVI`` whose training adds the spatial loss of the latent means (see the module docstring).
        Use it on raw counts (``X`` or a counts layer registered with ``setup_anndata``) when a non-linear,
        count-aware embedding is wanted; :func:`smoother.tl.spatial_vae` runs it on an AnnData in one call, and
        :func:`smoother.tl.spatial_pca` is the exact, deterministic choice for log-normalized data. Needs
        scvi-tools (``pip install 'smoother[scvi]'``).

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

        Examples
        --------
        >>> import smoother as sm
        >>> adata = sm.datasets.simulate_field(100, pattern="zones", n_genes=20, noise="poisson", seed=0)  # counts
        >>> swm = sm.SpatialWeightMatrix()
        >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
        >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
        >>> from smoother.models.reduction import SpatialVAE
        >>> SpatialVAE.setup_anndata(adata)
        >>> model = SpatialVAE(adata, spatial_loss=sp_loss, lambda_spatial_loss=1.0, n_latent=3, n_hidden=16)
        >>> model.train(max_epochs=2, enable_progress_bar=False)  # a real fit trains far longer
        >>> model.get_latent_representation().shape, len(model.dr_logs["spatial_loss"])  # one entry per epoch
        ((100, 3), 2)
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
            _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, st_adata.n_obs, "st_adata")
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
        """scANVI with a spatial loss: a count-based embedding guided by known labels of some spots.

        ``scvi.model.SCANVI`` with a spatial loss on the latent means ``z1`` (see the module docstring). Use it on
        raw counts when some spots carry labels (e.g. annotated regions) and the others should be placed and
        labelled with their help. Needs scvi-tools (``pip install 'smoother[scvi]'``).

        The classifier is trained on the labelled spots of the full-data batches only when scvi-tools' own
        semi-supervised loader is used; with the spatial tile loader, batches carry no separate labelled set,
        so fine-tune a trained SCANVI (``from_rna_model``) rather than training one from scratch here.
        ``sp_loss_as_kl=True`` adds the KL to the spatial prior (see the module docstring).

        Examples
        --------
        >>> import smoother as sm
        >>> adata = sm.datasets.simulate_field(100, pattern="zones", n_genes=20, noise="poisson", seed=0)  # counts
        >>> swm = sm.SpatialWeightMatrix()
        >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
        >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
        >>> from smoother.models.reduction import SpatialANVI
        >>> adata.obs["label"] = adata.obs["zone"].astype(str)
        >>> adata.obs.loc[adata.obs_names[::2], "label"] = "unknown"  # half of the spots are unlabelled
        >>> SpatialANVI.setup_anndata(adata, labels_key="label", unlabeled_category="unknown")
        >>> model = SpatialANVI(adata, spatial_loss=sp_loss, lambda_spatial_loss=1.0, n_latent=3, n_hidden=16)
        >>> import logging
        >>> import scvi
        >>> scvi.settings.verbosity = logging.WARNING  # scANVI's training prints a line at the default level
        >>> model.train(max_epochs=2, enable_progress_bar=False)
        >>> scvi.settings.verbosity = logging.INFO
        >>> model.get_latent_representation().shape, model.predict().shape
        ((100, 3), (100,))
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
            _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, st_adata.n_obs, "st_adata")
            super().__init__(st_adata, **model_kwargs)
            self._init_spatial(spatial_loss, lambda_spatial_loss, sp_loss_as_kl)
            self.init_params_ = self._get_init_params(locals())

    class SpatialMULTIVI(_SpatialModelMixin, MULTIVI):
        """MultiVI with a spatial loss: a joint embedding of expression and chromatin accessibility per spot.

        ``scvi.model.MULTIVI`` with a spatial loss on the joint latent means (see the module docstring), for
        spatial multi-omics (RNA counts plus binary ATAC accessibility of the same spots). Needs scvi-tools and
        mudata (``pip install 'smoother[scvi]'``).

        Register the data with ``SpatialMULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna",
        "atac_layer": "atac"})`` on a ``MuData`` whose ``obsm['spatial']`` holds the coordinates (needed for
        tiled mini-batches); in scvi-tools >= 1.4 ``MULTIVI.setup_anndata`` is deprecated and registers nothing.
        ``train(lr=...)`` is honoured (scvi's ``MULTIVI.train`` default is ``1e-4``; here it is ``0.01``).
        The defaults ``lambda_spatial_loss=1``, ``sp_loss_as_kl=True`` are smoother-omics 1.1.0's.

        Examples
        --------
        >>> import smoother as sm
        >>> adata = sm.datasets.simulate_field(100, pattern="zones", n_genes=20, noise="poisson", seed=0)  # counts
        >>> swm = sm.SpatialWeightMatrix()
        >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
        >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
        >>> import anndata as ad
        >>> import mudata as md
        >>> import numpy as np
        >>> from smoother.models.reduction import SpatialMULTIVI
        >>> access = np.random.default_rng(0).uniform(size=(100, 30)) < 0.3  # accessibility of 30 regions
        >>> atac = ad.AnnData(access.astype(np.float32), obs=adata.obs[[]])
        >>> atac.var_names = [f"region_{i}" for i in range(30)]
        >>> mdata = md.MuData({"rna": adata, "atac": atac})
        >>> mdata.obsm["spatial"] = adata.obsm["spatial"]
        >>> SpatialMULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
        >>> model = SpatialMULTIVI(mdata, spatial_loss=sp_loss, n_latent=3, n_hidden=16)
        >>> model.train(max_epochs=2, enable_progress_bar=False)
        >>> model.get_latent_representation().shape
        (100, 3)
        """

        _scvi_cls = MULTIVI

        def __init__(
            self,
            st_adata,
            spatial_loss=None,
            lambda_spatial_loss: float = 1.0,
            sp_loss_as_kl: bool = True,
            **model_kwargs,
        ):
            _check_spatial_args(spatial_loss, lambda_spatial_loss, sp_loss_as_kl, st_adata.n_obs, "st_adata")
            super().__init__(st_adata, **model_kwargs)
            self._init_spatial(spatial_loss, lambda_spatial_loss, sp_loss_as_kl)
            self._model_summary_string = self._model_summary_string.replace("MultiVI", type(self).__name__, 1)
            self.init_params_ = self._get_init_params(locals())

        @classmethod
        def from_sc_model(
            cls,
            st_adata,
            sc_model,
            spatial_loss=None,
            lambda_spatial_loss: float = 1.0,
            sp_loss_as_kl: bool = True,
            **kwargs,
        ):
            """smoother-omics 1.1.0's name of :meth:`from_rna_model` (with its MULTIVI defaults)."""
            return cls.from_rna_model(
                st_adata,
                sc_model,
                spatial_loss=spatial_loss,
                lambda_spatial_loss=lambda_spatial_loss,
                sp_loss_as_kl=sp_loss_as_kl,
                **kwargs,
            )

    return SpatialVAE, SpatialANVI, SpatialMULTIVI


_NAMES = ("SpatialVAE", "SpatialANVI", "SpatialMULTIVI", "SPVAE", "SPANVAE", "SPMULTIVAE")
_MODELS = None


def _doctests() -> dict:
    """The model classes for doctest (they are made on first access, so the doctest finder cannot see them)."""
    try:
        return {n: __getattr__(n) for n in ("SpatialVAE", "SpatialANVI", "SpatialMULTIVI")}
    except ImportError:  # scvi-tools not installed: nothing to test
        return {}


def __getattr__(name: str):
    global _MODELS
    if name == "__test__":
        return _doctests()
    if name in _NAMES:
        if _MODELS is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                modules = _make_modules()
                _MODELS = dict(zip(_NAMES, (*_make_models(), *modules), strict=True))
        return _MODELS[name]
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
