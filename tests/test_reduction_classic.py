"""Classic SpatialPCA / SpatialAutoEncoder (smoother.models.reduction) against the exact solver."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp


@pytest.fixture(scope="module")
def data():
    import anndata as ad

    from smoother import SpatialLoss
    from smoother.weights import SpatialWeightMatrix

    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(15.0), np.arange(15.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    signal = np.column_stack([np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0)]) @ rng.standard_normal((2, 30))
    X = np.abs(signal + rng.standard_normal((coords.shape[0], 30)))
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4, verbose=False)
    loss = SpatialLoss("icar", swm, rho=0.99)
    return ad.AnnData(X), coords, loss


def test_import_does_not_pull_scvi():
    import subprocess

    code = "import sys, smoother.models.reduction as r; r.SpatialPCA; print('scvi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_classic_spatial_pca_reaches_exact_optimum(data):
    from smoother._core.spca import spatial_pca as core_spca
    from smoother.models.reduction import SpatialPCA

    adata, _, loss = data
    lam, k = 0.1, 3
    model = SpatialPCA(adata, n_latent=k, spatial_loss=loss, lambda_spatial_loss=lam)
    model.reduce()
    Q = loss.get_precision(0)
    X = adata.X
    # brute force: top eigenvectors of X^T (I - lambda Q) X, uncentred (the classic objective)
    C = X.T @ (X - lam * (Q @ X))
    w, V = np.linalg.eigh(C)
    U = model.U.detach().numpy()
    np.testing.assert_allclose(np.abs(U.T @ V[:, ::-1][:, :k]), np.eye(k), atol=1e-6)
    # dr_logs in the classic normalisation: -(sum of top eigenvalues) / (k n)
    n = X.shape[0]
    np.testing.assert_allclose(model.dr_logs["total_loss"][-1], -w[::-1][:k].sum() / (k * n), rtol=1e-8)
    # torch loss agrees with the logged one
    H = model(torch_tensor(X.T))
    torch_loss = -(H**2).sum() / H.numel() + lam * loss(H.float(), normalize=True)
    np.testing.assert_allclose(float(torch_loss.detach()), model.dr_logs["total_loss"][-1], rtol=1e-4)
    # same loadings as the AnnData function with zero_center=False on the same precision
    res = core_spca(X, Q, k, lam, zero_center=False)
    np.testing.assert_allclose(np.abs(res.loadings), np.abs(U), atol=1e-8)
    Z = model.get_latent_representation()
    assert Z.shape == (n, k)
    np.testing.assert_allclose(Z, X @ U, atol=1e-10)


def torch_tensor(a):
    import torch

    return torch.as_tensor(np.asarray(a))


def test_classic_sgd_does_not_beat_exact(data):
    from smoother.models.reduction import SpatialPCA

    adata, _, loss = data
    exact = SpatialPCA(adata, n_latent=3, spatial_loss=loss, lambda_spatial_loss=0.1)
    exact.reduce()
    sgd = SpatialPCA(adata, n_latent=3, spatial_loss=loss, lambda_spatial_loss=0.1)
    sgd.reduce(method="sgd", max_epochs=200, verbose=False)
    assert len(sgd.dr_logs["total_loss"]) > 1
    assert sgd.dr_logs["total_loss"][-1] >= exact.dr_logs["total_loss"][-1] - 1e-9
    assert sgd.dr_logs["total_loss"][-1] < sgd.dr_logs["total_loss"][0]


def test_from_scanpy_and_from_rna_model(data):
    import scanpy as sc

    from smoother.models.reduction import SpatialPCA

    adata, _, loss = data
    a = adata.copy()
    sc.pp.pca(a, n_comps=4, svd_solver="arpack", dtype="float64")
    m = SpatialPCA.from_scanpy(a, spatial_loss=loss, lambda_spatial_loss=0.1)
    assert m.n_latent == 4
    np.testing.assert_allclose(m.U.detach().numpy(), a.varm["PCs"], atol=1e-12)
    m2 = SpatialPCA.from_rna_model(m, adata, spatial_loss=loss, lambda_spatial_loss=0.2)
    assert m2.n_latent == 4 and m2.l_sp_loss == 0.2
    np.testing.assert_allclose(m2.U.detach().numpy(), a.varm["PCs"], atol=1e-12)
    with pytest.raises(KeyError, match="sc.pp.pca"):
        SpatialPCA.from_scanpy(adata)
    with pytest.raises(ValueError, match="n_latent"):
        SpatialPCA(adata, n_latent=30)


def test_sparse_input_same_result(data):
    import anndata as ad

    from smoother.models.reduction import SpatialPCA

    adata, _, loss = data
    m1 = SpatialPCA(adata, n_latent=3, spatial_loss=loss)
    m2 = SpatialPCA(ad.AnnData(sp.csr_matrix(adata.X)), n_latent=3, spatial_loss=loss)
    m1.reduce(quite=True)
    m2.reduce(quite=True)
    np.testing.assert_allclose(m1.U.detach().numpy(), m2.U.detach().numpy(), atol=1e-9)


def test_autoencoder_trains_and_spatial_loss_smooths(data):
    from smoother.models.reduction import SpatialAutoEncoder

    adata, _, loss = data
    kw = {"n_latent": 3, "recon_loss_mode": "mse", "random_state": 0}
    plain = SpatialAutoEncoder(adata, spatial_loss=loss, lambda_spatial_loss=0.0, **kw)
    smooth = SpatialAutoEncoder(adata, spatial_loss=loss, lambda_spatial_loss=5.0, **kw)
    for m in (plain, smooth):
        with pytest.warns(UserWarning, match="did not converge"):
            m.reduce(max_epochs=60, optimizer="Adam", lr=1e-2, tol=0.0)
        logs = m.dr_logs["total_loss"]
        assert len(logs) == 60 and logs[-1] < logs[0]
    Zp, Zs = plain.get_latent_representation(), smooth.get_latent_representation()
    assert Zp.shape == Zs.shape == (adata.n_obs, 3) and np.isfinite(Zs).all()
    import torch

    def roughness(Z):
        Zt = torch.as_tensor(Z.T, dtype=torch.float32)
        return float(loss(Zt, normalize=True)) / float((Zt**2).mean() + 1e-12)

    assert roughness(Zs) < roughness(Zp)
    # from_rna_model copies layout and weights
    clone = SpatialAutoEncoder.from_rna_model(smooth, adata, spatial_loss=loss, lambda_spatial_loss=1.0)
    np.testing.assert_allclose(clone.get_latent_representation(), Zs, atol=1e-6)
