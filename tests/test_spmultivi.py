"""SpatialMULTIVI (scvi-tools MULTIVI + spatial loss on the joint latent means) on a tiny synthetic multi-ome."""

from __future__ import annotations

import numpy as np
import pytest

scvi = pytest.importorskip("scvi")
md = pytest.importorskip("mudata")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

N_GENES, N_REGIONS, N_LATENT = 20, 30, 3


@pytest.fixture(scope="module")
def multiome():
    """12 x 12 grid, two spatial zones; Poisson gene counts and binary accessibility that both depend on the zone."""
    import anndata as ad

    from smoother._core.graph import knn_graph
    from smoother._core.precision import precision

    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(12.0), np.arange(12.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    n = coords.shape[0]
    zone = (coords[:, 0] > 5).astype(int)
    rate = np.exp(1.0 + np.outer(zone, rng.uniform(-1, 1, N_GENES)))
    logit = -1.0 + np.outer(2 * zone - 1, rng.uniform(-1.5, 1.5, N_REGIONS))
    acc = (rng.uniform(size=(n, N_REGIONS)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    rna = ad.AnnData(rng.poisson(rate).astype(np.float32))
    rna.var_names = [f"g{i}" for i in range(N_GENES)]
    atac = ad.AnnData(acc)
    atac.var_names = [f"r{i}" for i in range(N_REGIONS)]
    W, _ = knn_graph(coords, k=4)
    Q = precision(W, "icar", 0.99)
    return rna, atac, coords, Q


def _mdata(multiome):
    rna, atac, coords, _ = multiome
    mdata = md.MuData({"rna": rna.copy(), "atac": atac.copy()})
    mdata.obsm["spatial"] = coords.copy()
    return mdata


def _model(multiome, lam, seed=0):
    import torch

    from smoother.models.reduction import SpatialMULTIVI

    mdata = _mdata(multiome)
    SpatialMULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    torch.manual_seed(seed)  # same initial weights (and dropout draws) for every lambda
    return SpatialMULTIVI(
        mdata, spatial_loss=multiome[3], lambda_spatial_loss=lam, sp_loss_as_kl=False, n_latent=N_LATENT, n_hidden=16
    )


def _quad(Z, Q):
    """Spatial loss of the latent means, tr(Z^T Q Z) / n."""
    return float(np.sum(Z * (Q @ Z)) / Z.shape[0])


def test_spatial_multivi_loss_term_matches_formula(multiome):
    import torch

    from smoother.models.reduction._spvae import SPOT_INDEX_KEY

    m = _model(multiome, lam=2.0)
    assert type(m.module).__name__ == "SPMULTIVAE"
    assert m._model_summary_string.startswith("SpatialMULTIVI")
    ds = m.adata_manager.create_torch_dataset()
    idx = np.arange(10, 70)
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in ds[idx].items()}
    tensors[SPOT_INDEX_KEY] = torch.as_tensor(idx)
    m.module.eval()
    with torch.no_grad():  # z is sampled in the forward pass: same draws for both
        torch.manual_seed(1)
        inf, _, lo = m.module(tensors)
        m.module.l_sp_loss = 0.0
        torch.manual_seed(1)
        _, _, lo0 = m.module(tensors)
    M = inf["qz_m"].double().numpy()
    Q = multiome[3]
    expected = 2.0 * np.trace(M.T @ Q[idx][:, idx].toarray() @ M) / idx.size
    assert expected > 0
    np.testing.assert_allclose(float(lo.kl_global_sum), expected, rtol=1e-4)
    np.testing.assert_allclose(float(lo.loss), float(lo0.loss) + expected, rtol=1e-4)


@pytest.mark.parametrize("batch_size", [None, 48])
def test_spatial_multivi_trains_and_writes_embedding(multiome, batch_size):
    m = _model(multiome, lam=1.0)
    m.train(max_epochs=2, batch_size=batch_size, enable_progress_bar=False)
    Z = m.get_latent_representation()
    assert Z.shape == (multiome[2].shape[0], N_LATENT) and np.isfinite(Z).all()
    assert "kl_global_train" in m.history  # where the spatial term is logged
    sp_hist = m.dr_logs["spatial_loss"]
    assert len(sp_hist) == 2 and all(np.isfinite(sp_hist)) and all(v > 0 for v in sp_hist)
    assert len(m.dr_logs["total_loss"]) == 2 and m.dr_logs["time_per_epoch"] > 0


def test_spatial_multivi_lr_is_honoured(multiome):
    # scvi's MULTIVI.train has its own lr (1e-4) that overwrites plan_kwargs["lr"]; ours must reach the optimizer
    m = _model(multiome, lam=1.0)
    before = {k: v.detach().clone() for k, v in m.module.state_dict().items()}
    m.train(max_epochs=1, lr=0.0, enable_progress_bar=False)
    after = m.module.state_dict()
    assert all(torch_equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_spatial_term_smooths_the_embedding(multiome):
    """Same seed, same data: a large lambda must give latent means with a much lower spatial loss than lambda=0."""
    Q = multiome[3]
    out = {}
    for lam in (0.0, 50.0):
        m = _model(multiome, lam=lam)
        m.train(max_epochs=3, lr=1e-2, enable_progress_bar=False)
        Z = m.get_latent_representation()
        assert np.isfinite(Z).all()
        out[lam] = (_quad(Z, Q), m.dr_logs["spatial_loss"])
    (q0, hist0), (q50, hist50) = out[0.0], out[50.0]
    assert all(v == 0 for v in hist0)  # no spatial term without lambda
    assert all(v > 0 for v in hist50)
    assert q50 < 0.5 * q0
