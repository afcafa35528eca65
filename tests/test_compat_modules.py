"""Scripts written for smoother-omics 1.1.0 keep working: its module paths and class names of the scvi-tools models.

Its own unit tests import ``SPVAE`` / ``SpatialVAE`` from ``smoother.models.reduction._spvae``, ``SPANVAE`` /
``SpatialANVI`` from ``._spanvi`` and ``SPMULTIVAE`` / ``SpatialMULTIVI`` from ``._spmultivi``, build the modules
with ``n_input=...`` (or ``n_input_genes``/``n_input_regions``) and a classic ``SpatialLoss``, call
``module.loss(tensors, inference_outputs, generative_outputs)`` on a full batch and ``from_vae``/``from_sc_model``.
Every model here trains for 1-2 epochs on a 6 x 6 grid.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

scvi = pytest.importorskip("scvi")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

N_SPOTS, N_GENES, N_LATENT = 36, 8, 3


@pytest.fixture(scope="module")
def tiny():
    import anndata as ad

    from smoother.losses import SpatialLoss
    from smoother.weights import SpatialWeightMatrix

    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(6.0), np.arange(6.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4, symmetric=True, row_scale=False, verbose=False)
    loss = SpatialLoss(prior="icar", spatial_weights=swm, rho=0.5, standardize_cov=True)
    counts = rng.poisson(3.0, size=(N_SPOTS, N_GENES)).astype(np.float32)
    a = ad.AnnData(counts)
    a.var_names = [f"g{i}" for i in range(N_GENES)]
    a.obsm["spatial"] = coords
    a.obs["labels"] = rng.choice(["a", "b", "c"], N_SPOTS)
    return a, loss, coords


# the module paths and names of smoother-omics 1.1.0
PUBLISHED = [
    ("smoother.models.reduction._spvae", "SPVAE", "SpatialVAE", "VAE"),
    ("smoother.models.reduction._spanvi", "SPANVAE", "SpatialANVI", "SCANVAE"),
    ("smoother.models.reduction._spmultivi", "SPMULTIVAE", "SpatialMULTIVI", "MULTIVAE"),
]


@pytest.mark.parametrize(("path", "module_name", "model_name", "scvi_module"), PUBLISHED)
def test_published_paths_and_names(path, module_name, model_name, scvi_module):
    mod = importlib.import_module(path)
    module_cls, model_cls = getattr(mod, module_name), getattr(mod, model_name)
    # the published class names are our classes: subclasses of the scvi-tools module/model they extend
    assert issubclass(module_cls, getattr(scvi.module, scvi_module))
    assert model_cls is getattr(importlib.import_module("smoother.models.reduction"), model_name)
    assert module_name in dir(mod) and model_name in dir(mod)
    with pytest.raises(AttributeError):
        mod.NotAName  # noqa: B018


def _moments(rng, n, k):
    import torch

    m = torch.as_tensor(rng.standard_normal((n, k)), dtype=torch.float32)
    v = torch.as_tensor(rng.uniform(0.5, 1.5, (n, k)), dtype=torch.float32)
    return m, v


def _vae_outputs(m, v, n_input, rng):
    """Dummy VAE inference/generative outputs of the shapes the published tests use."""
    import torch
    from scvi import REGISTRY_KEYS
    from torch.distributions import Normal

    n = m.shape[0]
    tensors = {
        REGISTRY_KEYS.X_KEY: torch.as_tensor(rng.poisson(3.0, (n, n_input)), dtype=torch.float32),
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(n, 1, dtype=torch.long),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(n, 1, dtype=torch.long),
    }
    inf = {
        "qz": Normal(m, v.sqrt()),
        "qzm": m,
        "qzv": v,
        "z": m,
        "ql": Normal(torch.zeros(n, 1), torch.ones(n, 1)),
        "library": torch.zeros(n, 1),
    }
    gen = {
        "pz": Normal(torch.zeros_like(m), torch.ones_like(m)),
        "pl": Normal(torch.zeros(n, 1), torch.ones(n, 1)),
        "px": Normal(torch.zeros(n, n_input), torch.ones(n, n_input)),
    }
    return tensors, inf, gen


def test_spvae_loss_matches_formula_full_batch(tiny):
    """Without spot indices a batch of every spot uses the whole precision (the published convention)."""
    from smoother.models.reduction._spvae import SPVAE

    _, loss, _ = tiny
    Q = loss.get_precision(0).toarray()
    rng = np.random.default_rng(1)
    m, v = _moments(rng, N_SPOTS, N_LATENT)
    tensors, inf, gen = _vae_outputs(m, v, N_GENES, rng)
    lam = 0.7
    plain = SPVAE(n_input=N_GENES, n_latent=N_LATENT)
    spatial = SPVAE(n_input=N_GENES, spatial_loss=loss, lambda_spatial_loss=lam, n_latent=N_LATENT)
    kl_ = SPVAE(n_input=N_GENES, spatial_loss=loss, lambda_spatial_loss=lam, sp_loss_as_kl=True, n_latent=N_LATENT)
    out0 = plain.loss(tensors, inf, gen)
    out1 = spatial.loss(tensors, inf, gen)
    out2 = kl_.loss(tensors, inf, gen)
    M, V = m.double().numpy(), v.double().numpy()
    quad = np.trace(M.T @ Q @ M)
    expected = lam * quad / N_SPOTS
    np.testing.assert_allclose(float(out1.kl_global["kl_global"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(out1.loss), float(out0.loss) + expected, rtol=1e-5)
    # as KL: the N(0, I) KL of z is replaced by the KL to N(0, Q^-1) up to constants
    kl_sp = 0.5 * lam / N_SPOTS * (quad + (np.diag(Q)[:, None] * V).sum() - np.log(V).sum())
    kl_std = 0.5 * (M**2 + V - np.log(V) - 1.0).sum(axis=1)
    np.testing.assert_allclose(float(out2.kl_global["kl_global"]), kl_sp, rtol=1e-5)
    assert bool(out2.kl_global["kl_global"] == out2.kl_local["kl_divergence_z"])  # the published test's check
    np.testing.assert_allclose(float(out2.loss), float(out0.loss) - kl_std.mean() + kl_sp, rtol=1e-5)


def test_from_vae_copies_and_checks(tiny):
    import torch

    from smoother.models.reduction._spanvi import SPANVAE
    from smoother.models.reduction._spmultivi import SPMULTIVAE
    from smoother.models.reduction._spvae import SPVAE

    _, loss, _ = tiny
    vae = scvi.module.VAE(n_input=N_GENES, n_latent=N_LATENT)
    sp = SPVAE.from_vae(vae, spatial_loss=loss, lambda_spatial_loss=0.5, sp_loss_as_kl=True)
    assert isinstance(sp, SPVAE) and sp is not vae and type(vae) is scvi.module.VAE
    assert sp.l_sp_loss == 0.5 and sp.sp_loss_as_kl
    for (k, a), b in zip(vae.state_dict().items(), sp.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    anvae = SPANVAE.from_vae(scvi.module.SCANVAE(n_input=N_GENES, n_labels=3), spatial_loss=loss)
    assert isinstance(anvae, SPANVAE) and anvae.l_sp_loss == 0.1 and not anvae.sp_loss_as_kl
    mvae = SPMULTIVAE.from_vae(scvi.module.MULTIVAE(n_input_regions=5, n_input_genes=N_GENES), spatial_loss=loss)
    assert isinstance(mvae, SPMULTIVAE) and mvae.l_sp_loss == 1.0 and mvae.sp_loss_as_kl  # published defaults
    with pytest.raises(TypeError, match="vae_module"):
        SPVAE.from_vae(scvi.module.MULTIVAE(n_input_regions=5, n_input_genes=N_GENES), spatial_loss=loss)
    with pytest.raises(TypeError, match="vae_module"):  # SCANVAE subclasses VAE, but has its own SPANVAE
        SPVAE.from_vae(scvi.module.SCANVAE(n_input=N_GENES, n_labels=3), spatial_loss=loss)
    with pytest.raises(ValueError, match="sp_loss_as_kl"):
        SPVAE.from_vae(vae, spatial_loss=None, sp_loss_as_kl=True)
    with pytest.raises(ValueError, match="lambda_spatial_loss"):
        SPVAE(n_input=N_GENES, spatial_loss=loss, lambda_spatial_loss=float("nan"))


def test_models_construct_and_train_on_tiny_anndata(tiny):
    from smoother.models.reduction._spanvi import SPANVAE, SpatialANVI
    from smoother.models.reduction._spvae import SPVAE, SpatialVAE

    a, loss, _ = tiny
    st = a.copy()
    SpatialVAE.setup_anndata(st)
    m = SpatialVAE(st_adata=st, spatial_loss=loss, lambda_spatial_loss=0.1, n_latent=N_LATENT, n_hidden=8)
    assert isinstance(m.module, SPVAE) and m.module.l_sp_loss == 0.1
    m.train(max_epochs=1, lr=0.01, accelerator="cpu", enable_progress_bar=False)
    assert m.dr_logs["elapsed_time"] is not None and len(m.dr_logs["spatial_loss"]) == 1
    assert m.dr_logs["spatial_loss"][0] > 0
    assert m.get_latent_representation().shape == (N_SPOTS, N_LATENT)

    st2 = a.copy()
    SpatialANVI.setup_anndata(st2, labels_key="labels", unlabeled_category="unknown")
    m2 = SpatialANVI(st_adata=st2, spatial_loss=loss, lambda_spatial_loss=0.1, sp_loss_as_kl=True, n_hidden=8)
    assert isinstance(m2, SpatialANVI) and isinstance(m2.module, SPANVAE) and m2.module.sp_loss_as_kl
    m2.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    assert np.isfinite(m2.dr_logs["total_loss"]).all()


def test_multivi_from_sc_model(tiny):
    md = pytest.importorskip("mudata")
    import anndata as ad

    from smoother.models.reduction._spmultivi import SPMULTIVAE, SpatialMULTIVI

    a, loss, _ = tiny
    rng = np.random.default_rng(2)
    atac = ad.AnnData((rng.uniform(size=(N_SPOTS, 12)) > 0.6).astype(np.float32))
    atac.var_names = [f"r{i}" for i in range(12)]
    mdata = md.MuData({"rna": a.copy(), "atac": atac})
    scvi.model.MULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    sc_model = scvi.model.MULTIVI(mdata, n_latent=N_LATENT)
    sc_model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    sp_model = SpatialMULTIVI.from_sc_model(st_adata=mdata, sc_model=sc_model, spatial_loss=loss)
    assert isinstance(sp_model, SpatialMULTIVI) and isinstance(sp_model.module, SPMULTIVAE)
    assert sp_model.module.sp_loss_as_kl and sp_model.module.l_sp_loss == 1.0
    sp_model.train(max_epochs=1, lr=0.01, accelerator="cpu", enable_progress_bar=False)
    assert len(sp_model.dr_logs["spatial_loss"]) == 1 and np.isfinite(sp_model.dr_logs["spatial_loss"]).all()


def test_size_mismatch_names_sizes_and_argument(tiny):
    from smoother.models.reduction import SpatialPCA, SpatialVAE

    a, loss, _ = tiny
    small = a[:30].copy()
    with pytest.raises(ValueError, match=r"`spatial_loss` is defined on 36 spots but `adata` has 30 spots"):
        SpatialPCA(small, n_latent=2, spatial_loss=loss)
    SpatialVAE.setup_anndata(small)
    with pytest.raises(ValueError, match=r"`spatial_loss` is defined on 36 spots but `st_adata` has 30 spots"):
        SpatialVAE(small, spatial_loss=loss)
