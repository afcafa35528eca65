"""Exact spatial PCA (core solver, sm.tl.spatial_pca) and the classic SpatialPCA."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core.graph import knn_graph
from smoother._core.precision import precision
from smoother._core.spca import lambda_upper_bound, spatial_gram
from smoother._core.spca import spatial_pca as core_spca


def _make_data(n_side=14, n_genes=25, seed=0):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n_side, dtype=float), np.arange(n_side, dtype=float))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    n = coords.shape[0]
    fields = np.column_stack(
        [np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0), (coords[:, 0] + coords[:, 1]) / n_side]
    )
    loadings = rng.standard_normal((3, n_genes))
    X = fields @ loadings + 0.8 * rng.standard_normal((n, n_genes)) + 2.0
    return coords, X


def _brute_force(X, Q, k, lam, zero_center):
    Xc = X - X.mean(axis=0) if zero_center else X
    Qd = Q.toarray() if sp.issparse(Q) else Q
    C = Xc.T @ (np.eye(X.shape[0]) - lam * Qd) @ Xc
    w, V = np.linalg.eigh(C)
    return w[::-1][:k], V[:, ::-1][:, :k]


@pytest.fixture(scope="module")
def problem():
    coords, X = _make_data()
    W, _ = knn_graph(coords, k=4)
    Q = precision(W, "icar", 0.99)
    return coords, X, W, Q


@pytest.mark.parametrize("zero_center", [True, False])
@pytest.mark.parametrize("solver", ["dense", "arpack", "lobpcg"])
@pytest.mark.parametrize("sparse_input", [False, True])
def test_core_matches_brute_force(problem, zero_center, solver, sparse_input):
    _, X, _, Q = problem
    k, lam = 4, 0.05
    w, V = _brute_force(X, Q, k, lam, zero_center)
    Xin = sp.csr_matrix(X) if sparse_input else X
    res = core_spca(Xin, Q, k, lam, zero_center=zero_center, solver=solver)
    np.testing.assert_allclose(res.objective, w, rtol=1e-8, atol=1e-8 * abs(w).max())
    # same subspace and, eigenvalues being simple, the same vectors up to sign
    np.testing.assert_allclose(np.abs(res.loadings.T @ V), np.eye(k), atol=1e-6)
    np.testing.assert_allclose(res.loadings.T @ res.loadings, np.eye(k), atol=1e-10)
    # the per-component split adds up: objective = variance - lambda * spatial loss
    np.testing.assert_allclose(res.variance - lam * res.spatial_loss, res.objective, rtol=1e-9)
    Xc = X - X.mean(axis=0) if zero_center else X
    np.testing.assert_allclose(res.scores, Xc @ res.loadings, atol=1e-9)


def test_core_gram_chunking_independent(problem):
    _, X, _, Q = problem
    C1, m1 = spatial_gram(sp.csr_matrix(X), Q, 0.1, zero_center=True, chunk_size=7)
    C2, m2 = spatial_gram(X, Q, 0.1, zero_center=True, chunk_size=10_000)
    np.testing.assert_allclose(C1, C2, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(m1, m2)


def test_core_gene_order_invariant(problem):
    _, X, _, Q = problem
    perm = np.random.default_rng(1).permutation(X.shape[1])
    a = core_spca(X, Q, 3, 0.05)
    b = core_spca(X[:, perm], Q, 3, 0.05)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-10)
    np.testing.assert_allclose(np.abs(a.loadings[perm]), np.abs(b.loadings), atol=1e-8)
    np.testing.assert_allclose(np.abs(a.scores), np.abs(b.scores), atol=1e-8)


def test_core_spatial_penalty_trades_variance_for_smoothness(problem):
    _, X, _, Q = problem
    a = core_spca(X, Q, 3, 0.0)
    b = core_spca(X, Q, 3, 0.2)
    # PCA maximises variance; the spatial version has a smaller spatial loss for less variance
    assert a.variance.sum() >= b.variance.sum() - 1e-8
    assert b.spatial_loss.sum() < a.spatial_loss.sum()
    # and the spatial optimum beats the PCA loadings on its own objective
    pca_obj = a.variance.sum() - 0.2 * a.spatial_loss.sum()
    assert b.objective.sum() > pca_obj


@pytest.fixture(scope="module")
def tiny():
    """6 x 6 grid, 7 genes: small enough for a dense eigen-decomposition of every matrix involved."""
    rng = np.random.default_rng(5)
    xx, yy = np.meshgrid(np.arange(6.0), np.arange(6.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    X = np.column_stack([np.sin(coords[:, 0]), coords[:, 1] / 3.0]) @ rng.standard_normal((2, 7))
    X += 0.7 * rng.standard_normal(X.shape)
    W, _ = knn_graph(coords, k=4)
    return coords, X, W, precision(W, "icar", 0.99)


@pytest.mark.filterwarnings("ignore:The problem size:UserWarning")  # LOBPCG falls back to dense on 7 genes
@pytest.mark.parametrize("zero_center", [True, False])
@pytest.mark.parametrize("solver", ["dense", "arpack", "lobpcg"])
def test_core_negative_objectives_are_returned_not_refused(tiny, zero_center, solver):
    _, X, _, Q = tiny
    k = 5
    ub = lambda_upper_bound(X, Q, k, zero_center=zero_center)
    assert np.isfinite(ub) and ub > 0
    lam = 3.0 * ub  # beyond the bound: some of the top k eigenvalues are negative
    w, V = _brute_force(X, Q, k, lam, zero_center)
    assert (w < 0).any() and (w > 0).any()
    res = core_spca(X, Q, k, lam, zero_center=zero_center, solver=solver)
    scale = np.abs(w).max()
    np.testing.assert_allclose(res.objective, w, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(np.abs(res.loadings.T @ V), np.eye(k), atol=1e-5)
    np.testing.assert_array_equal(res.info["negative"], np.flatnonzero(w < 0))
    # Ky Fan: no orthonormal U does better on tr(U^T C U), however indefinite C is
    Xc = X - X.mean(axis=0) if zero_center else X
    C = Xc.T @ (np.eye(X.shape[0]) - lam * Q.toarray()) @ Xc
    rng = np.random.default_rng(0)
    for _ in range(200):
        U, _ = np.linalg.qr(rng.standard_normal((X.shape[1], k)))
        assert np.trace(U.T @ C @ U) <= res.objective.sum() + 1e-9 * scale


def test_tl_warns_names_negative_components(tiny):
    import anndata as ad

    import smoother as sm

    coords, X, W, _ = tiny
    a = ad.AnnData(X.copy())
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = W
    k = 5
    Q = precision(W, "icar", 0.99, standardize=True)
    lam = 3.0 * lambda_upper_bound(X, Q, k)
    w, V = _brute_force(X, Q, k, lam, True)
    neg = np.flatnonzero(w < 0)
    assert neg.size and neg.size < k
    names = ", ".join(str(i + 1) for i in neg)
    with pytest.warns(UserWarning, match=rf"Spatial PCs {names} \(of {k}\) have a negative objective"):
        sm.tl.spatial_pca(a, n_comps=k, lambda_spatial=lam)
    u = a.uns["spatial_pca"]
    np.testing.assert_allclose(u["objective"], w / a.n_obs, rtol=1e-7, atol=1e-9 * np.abs(w).max())
    assert u["n_negative"] == neg.size
    np.testing.assert_allclose(np.abs(a.varm["spatial_PCs"].T @ V), np.eye(k), atol=1e-6)
    # below the bound every component is positive and nothing is said
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm.tl.spatial_pca(a, n_comps=k, lambda_spatial=0.5 * lam / 3.0)
    assert a.uns["spatial_pca"]["n_negative"] == 0 and (a.uns["spatial_pca"]["objective"] > 0).all()


# --------------------------------------------------------------------------------------- sm.tl.spatial_pca
@pytest.fixture
def adata(problem):
    import anndata as ad

    coords, X, W, _ = problem
    a = ad.AnnData(X.copy())
    a.var_names = [f"g{i}" for i in range(X.shape[1])]
    a.obsm["spatial"] = coords.copy()
    a.obsp["spatial_connectivities"] = W.copy()
    return a


def _snapshot(a):
    return (set(a.obsm), set(a.varm), set(a.uns), a.X.copy())


def _unchanged(a, snap):
    assert (set(a.obsm), set(a.varm), set(a.uns)) == snap[:3]
    np.testing.assert_array_equal(a.X, snap[3])


def test_tl_lambda0_is_scanpy_pca(adata):
    import scanpy as sc

    import smoother as sm

    ref = adata.copy()
    sc.pp.pca(ref, n_comps=5, svd_solver="arpack", zero_center=True, dtype="float64")
    sm.tl.spatial_pca(adata, n_comps=5, lambda_spatial=0.0)
    ours, theirs = adata.obsm["X_spatial_pca"], ref.obsm["X_pca"]
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-6 * np.abs(theirs).max())
    np.testing.assert_allclose(adata.varm["spatial_PCs"] * signs, ref.varm["PCs"], atol=1e-6)
    np.testing.assert_allclose(adata.uns["spatial_pca"]["variance_ratio"], ref.uns["pca"]["variance_ratio"], rtol=1e-6)


def test_tl_matches_core_and_writes_keys(adata, problem):
    import smoother as sm

    _, X, W, _ = problem
    Q = precision(W, "icar", 0.99, standardize=True)
    res = core_spca(X, Q, 4, 0.05)
    out = sm.tl.spatial_pca(adata, n_comps=4, lambda_spatial=0.05, copy=True)
    assert "X_spatial_pca" not in adata.obsm and "spatial_pca" not in adata.uns  # copy=True leaves adata alone
    np.testing.assert_allclose(out.obsm["X_spatial_pca"], res.scores, atol=1e-9)
    np.testing.assert_allclose(out.varm["spatial_PCs"], res.loadings, atol=1e-12)
    u = out.uns["spatial_pca"]
    n = adata.n_obs
    np.testing.assert_allclose(u["objective"], res.objective / n, rtol=1e-10)
    np.testing.assert_allclose(u["objective"], u["variance"] - 0.05 * u["spatial_loss"], rtol=1e-10)
    assert u["params"]["prior"] == "icar" and u["params"]["lambda_spatial"] == 0.05
    assert u["params"]["zero_center"] is True and u["params"]["standardize"] is True


def test_tl_key_added_hvg_and_sparse(adata):
    import smoother as sm

    hv = np.zeros(adata.n_vars, dtype=bool)
    hv[::2] = True
    adata.var["highly_variable"] = hv
    dense = adata.copy()
    adata.X = sp.csr_matrix(adata.X)
    sm.tl.spatial_pca(adata, n_comps=3, lambda_spatial=0.05, key_added="sp")
    sm.tl.spatial_pca(dense, n_comps=3, lambda_spatial=0.05, key_added="sp", solver="arpack")
    assert adata.obsm["X_sp"].shape == (adata.n_obs, 3)
    L = adata.varm["sp_PCs"]
    assert np.all(L[~hv] == 0) and np.abs(L[hv]).min() > 0
    np.testing.assert_allclose(L, dense.varm["sp_PCs"], atol=1e-7)
    assert adata.uns["sp"]["params"]["use_highly_variable"] is True


def test_tl_bad_input_leaves_adata_unchanged(adata):
    import smoother as sm

    snap = _snapshot(adata)
    with pytest.raises(ValueError, match="n_comps"):
        sm.tl.spatial_pca(adata, n_comps=adata.n_vars)
    with pytest.raises(KeyError, match="spatial_neighbors"):
        sm.tl.spatial_pca(adata, n_comps=3, connectivity_key="other_connectivities")
    with pytest.raises(KeyError, match="highly_variable"):
        sm.tl.spatial_pca(adata, n_comps=3, mask_var="highly_variable")
    _unchanged(adata, snap)
    adata.X[0, 0] = np.nan
    snap = _snapshot(adata)
    with pytest.raises(ValueError, match="NaN"):
        sm.tl.spatial_pca(adata, n_comps=3)
    assert (set(adata.obsm), set(adata.varm), set(adata.uns)) == snap[:3]


def test_tl_sma_prior_matches_dense_precision(adata, problem, dense_precision):
    """prior='sma' goes through the sparse factor B (an operator), never a dense n x n; same result as dense Q."""
    import smoother as sm

    _, X, W, _ = problem
    # B = I + rho W is invertible for every graph of degree <= 4 when rho < 1/4 (|eig(W)| <= 4); at rho = 0.5 it
    # is singular whenever W has the eigenvalue -2, as 4-neighbour lattices can
    Qd = dense_precision(W, "sma", 0.2, standardize=False)
    w, V = _brute_force(X, Qd, 3, 0.3, True)
    sm.tl.spatial_pca(adata, n_comps=3, lambda_spatial=0.3, prior="sma", rho=0.2, standardize=False)
    np.testing.assert_allclose(adata.uns["spatial_pca"]["objective"] * adata.n_obs, w, rtol=1e-8)
    np.testing.assert_allclose(np.abs(adata.varm["spatial_PCs"].T @ V), np.eye(3), atol=1e-6)


# --------------------------------------------------------------------------------------- mask_var (issue 13)
def test_tl_mask_var_as_scanpy(adata, problem):
    import warnings

    import smoother as sm

    _, X, W, _ = problem
    Q = precision(W, "icar", 0.99, standardize=True)
    sel = np.zeros(adata.n_vars, dtype=bool)
    sel[[0, 2, 3, 5, 8, 9, 11, 14, 20]] = True
    w, V = _brute_force(X[:, sel], Q, 3, 0.05, True)  # the reference: the selected genes only

    def run(**kw):
        out = sm.tl.spatial_pca(adata, n_comps=3, lambda_spatial=0.05, copy=True, **kw)
        return out.varm["spatial_PCs"], out.uns["spatial_pca"]

    # a boolean array and a var column give the selected genes' result, loadings 0 elsewhere
    L, u = run(mask_var=sel)
    np.testing.assert_allclose(np.abs(L[sel].T @ V), np.eye(3), atol=1e-6)
    assert np.all(L[~sel] == 0)
    np.testing.assert_allclose(u["objective"] * adata.n_obs, w, rtol=1e-8)
    np.testing.assert_array_equal(u["params"]["mask_var"], sel)
    adata.var["mine"] = sel
    L2, u2 = run(mask_var="mine")
    np.testing.assert_allclose(L2, L, atol=1e-12)
    assert u2["params"]["mask_var"] == "mine" and u2["params"]["use_highly_variable"] is False
    # default: 'highly_variable' when that column exists (scanpy's default); mask_var=None: every gene
    adata.var["highly_variable"] = sel
    L3, u3 = run()
    np.testing.assert_allclose(L3, L, atol=1e-12)
    assert u3["params"]["mask_var"] == "highly_variable" and u3["params"]["use_highly_variable"] is True
    L4, u4 = run(mask_var=None)
    assert np.all(L4 != 0) and u4["params"]["mask_var"] is None
    # the deprecated alias still works, with scanpy's FutureWarning
    with pytest.warns(FutureWarning, match="use_highly_variable"):
        L5, _ = run(use_highly_variable=True)
    np.testing.assert_allclose(L5, L, atol=1e-12)
    with pytest.warns(FutureWarning, match="use_highly_variable"):
        L6, _ = run(use_highly_variable=False)
    np.testing.assert_allclose(L6, L4, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(mask_var="highly_variable")  # the new spelling does not warn
    with pytest.raises(ValueError, match=r"either `mask_var` or the deprecated `use_highly_variable`"):
        run(mask_var="highly_variable", use_highly_variable=True)
    with pytest.raises(ValueError, match=r"either `mask_var` or the deprecated `use_highly_variable`"):
        run(mask_var=None, use_highly_variable=False)
