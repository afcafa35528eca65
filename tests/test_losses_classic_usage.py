"""A script written for smoother-omics 1.1.0 runs unchanged and gives the numbers of the spec's formulas."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import cdist


def test_classic_script_matches_dense_recomputation():
    # --- the classic script -------------------------------------------------------------------------------
    from smoother import SpatialLoss, SpatialWeightMatrix

    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(10.0), np.arange(8.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    expr = torch.tensor(rng.poisson(3.0, size=(10, 80)).astype(np.float32))  # num_gene x num_spot
    beta = torch.tensor(rng.normal(size=(4, 80)), dtype=torch.float32)  # num_group x num_spot

    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4)
    swm.scale_by_expr(expr)  # cosine on the top 10 PCs of the z-scored genes
    sp_loss = SpatialLoss("icar", [swm], rho=0.99)
    value = float(sp_loss(beta))

    # --- dense re-computation from spec/classic_api.md ---------------------------------------------------
    D = cdist(coords, coords)
    np.fill_diagonal(D, np.inf)
    A = (D <= 1.0).astype(float)  # on a unit grid the 4 nearest neighbours are the 4 at distance 1
    X = expr.numpy().T.astype(np.float64)
    Z = (X - X.mean(0)) / X.std(0, ddof=1)  # 10 genes, 10 PCs: PCA is a rotation, cosine is unchanged
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    W = A * np.clip(Zn @ Zn.T, 0, None)
    iso = W.sum(1) == 0
    W[iso, iso] = 1
    Q = np.diag(W.sum(1)) - 0.99 * W
    b = beta.numpy().astype(np.float64)
    expected = np.einsum("gi,ij,gj->", b, Q, b) / b.size
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert sp_loss.inv_cov.shape == (1, 80, 80)
