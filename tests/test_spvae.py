"""scvi-tools based spatial models (SpatialVAE / SpatialANVI / SpatialMULTIVI) and sm.tl.spatial_vae."""

from __future__ import annotations

import numpy as np
import pytest

scvi = pytest.importorskip("scvi")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def counts():
    import anndata as ad

    from smoother._core.graph import knn_graph

    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(16.0), np.arange(16.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    zone = (coords[:, 0] > 7).astype(int)
    rate = np.exp(1.0 + np.outer(zone, rng.uniform(-1, 1, 30)))
    a = ad.AnnData(rng.poisson(rate).astype(np.float32))
    a.var_names = [f"g{i}" for i in range(30)]
    a.obsm["spatial"] = coords
    a.obs["zone"] = zone.astype(str)
    W, _ = knn_graph(coords, k=4)
    a.obsp["spatial_connectivities"] = W
    return a


def test_spatial_tiles_partition_and_contiguity():
    from smoother.models.reduction._spvae import spatial_tiles

    rng = np.random.default_rng(1)
    coords = rng.uniform(0, 100, size=(2000, 2))
    tiles = spatial_tiles(coords, 200, offset=np.array([0.3, 0.7]))
    allidx = np.sort(np.concatenate(tiles))
    np.testing.assert_array_equal(allidx, np.arange(2000))
    assert all(t.size >= 100 for t in tiles)
    # tiles are compact: their spread is far below that of random batches of the same size
    spread = np.mean([coords[t].std(axis=0).sum() for t in tiles])
    rand = np.mean([coords[rng.choice(2000, t.size, replace=False)].std(axis=0).sum() for t in tiles])
    assert spread < 0.6 * rand


def test_spatial_loss_term_matches_formula(counts):
    import torch

    from smoother._core.precision import precision
    from smoother.models.reduction import SpatialVAE
    from smoother.models.reduction._spvae import SPOT_INDEX_KEY

    a = counts.copy()
    SpatialVAE.setup_anndata(a)
    Q = precision(a.obsp["spatial_connectivities"], "icar", 0.99)
    m = SpatialVAE(a, spatial_loss=Q, lambda_spatial_loss=2.0, n_latent=3)
    ds = m.adata_manager.create_torch_dataset()
    idx = np.arange(0, 60)
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in ds[idx].items()}
    tensors[SPOT_INDEX_KEY] = torch.as_tensor(idx)
    m.module.eval()
    with torch.no_grad():
        inf, gen, lo = m.module(tensors)
        plain = torch.mean(lo.reconstruction_loss["reconstruction_loss"] + lo.kl_local["kl_divergence_z"])
    M = inf["qz"].loc.double().numpy()
    QB = Q[idx][:, idx].toarray()
    expected = 2.0 * np.trace(M.T @ QB @ M) / len(idx)
    np.testing.assert_allclose(float(lo.kl_global_sum), expected, rtol=1e-4)
    np.testing.assert_allclose(float(lo.loss), float(plain) + expected, rtol=1e-4)


@pytest.mark.parametrize("batch_size", [None, 64])
def test_spatial_vae_trains_and_writes(counts, batch_size):
    import smoother as sm

    a = counts.copy()
    sm.tl.spatial_vae(a, n_latent=3, lambda_spatial=1.0, max_epochs=3, batch_size=batch_size, n_hidden=16)
    Z = a.obsm["X_spatial_vae"]
    assert Z.shape == (a.n_obs, 3) and np.isfinite(Z).all()
    u = a.uns["spatial_vae"]
    assert len(u["history"]["total_loss"]) == 3 and u["time_per_epoch"] > 0
    assert u["params"]["batch_size"] == batch_size
    assert "_scvi_uuid" not in a.uns and not any(c.startswith("_scvi") for c in a.obs.columns)


def test_spatial_vae_bad_input_leaves_adata_unchanged(counts):
    import smoother as sm

    a = counts.copy()
    before = (set(a.obsm), set(a.uns))
    with pytest.raises(KeyError, match="spatial_neighbors"):
        sm.tl.spatial_vae(a, connectivity_key="nope_connectivities", max_epochs=1)
    a.X = a.X - 5.0
    with pytest.raises(ValueError, match="counts"):
        sm.tl.spatial_vae(a, max_epochs=1)
    assert (set(a.obsm), set(a.uns)) == before


def test_from_rna_model_and_sp_loss_as_kl(counts):
    from smoother._core.precision import precision
    from smoother.models.reduction import SpatialVAE

    ref = counts.copy()
    scvi.model.SCVI.setup_anndata(ref)
    sc_model = scvi.model.SCVI(ref, n_latent=3, n_hidden=16)
    sc_model.train(max_epochs=2, enable_progress_bar=False)
    st = counts.copy()
    Q = precision(st.obsp["spatial_connectivities"], "icar", 0.99)
    sp_model = SpatialVAE.from_rna_model(st, sc_model, spatial_loss=Q, lambda_spatial_loss=1.0, sp_loss_as_kl=True)
    assert type(sp_model).__name__ == "SpatialVAE" and sp_model.module.sp_loss_as_kl
    frozen = [n for n, p in sp_model.module.named_parameters() if not p.requires_grad]
    assert frozen  # scArches freezing applied
    sp_model.train(max_epochs=2, enable_progress_bar=False)
    logs = sp_model.dr_logs
    assert len(logs["spatial_loss"]) == 2 and np.isfinite(logs["total_loss"]).all()
    assert sp_model.get_latent_representation().shape == (st.n_obs, 3)


def test_spatial_anvi_trains(counts):
    from smoother._core.precision import precision
    from smoother.models.reduction import SpatialANVI

    a = counts.copy()
    SpatialANVI.setup_anndata(a, labels_key="zone", unlabeled_category="unknown")
    Q = precision(a.obsp["spatial_connectivities"], "icar", 0.99)
    m = SpatialANVI(a, spatial_loss=Q, lambda_spatial_loss=1.0, n_latent=3, n_hidden=16)
    m.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert m.get_latent_representation().shape == (a.n_obs, 3)
    assert len(m.dr_logs["spatial_loss"]) == 2
