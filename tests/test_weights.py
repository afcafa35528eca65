"""smoother.weights against brute-force references on small problems."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from smoother import weights as wmod
from smoother.weights import SpatialWeightMatrix


@pytest.fixture(scope="module")
def coords():
    rng = np.random.default_rng(11)
    return rng.uniform(0, 10, size=(40, 2))


def brute_knn(coords, k, symmetric):
    D = cdist(coords, coords)
    np.fill_diagonal(D, np.inf)
    nn = np.argsort(D, axis=1, kind="stable")[:, :k]
    A = np.zeros_like(D)
    A[np.repeat(np.arange(len(D)), k), nn.ravel()] = 1
    if symmetric:
        A = A * A.T
    iso = A.sum(1) == 0
    A[iso, iso] = 1
    return A


def rowscale(A):
    return A / A.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# graph construction
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("row_scale", [True, False])
def test_knn_matches_brute_force(coords, symmetric, row_scale):
    ref = brute_knn(coords, 5, symmetric)
    ref = rowscale(ref) if row_scale else ref
    W = wmod.coordinate_to_weights_knn_sparse(coords, k=5, symmetric=symmetric, row_scale=row_scale)
    assert W.is_sparse and W.dtype == torch.float32
    np.testing.assert_allclose(W.to_dense().numpy(), ref, rtol=1e-6)
    Wd = wmod.coordinate_to_weights_knn_dense(coords, k=5, symmetric=symmetric, row_scale=row_scale)
    assert Wd.layout == torch.strided
    np.testing.assert_array_equal(Wd.numpy(), W.to_dense().numpy())
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=5, symmetric=symmetric, row_scale=row_scale, verbose=False)
    np.testing.assert_allclose(swm.swm.to_dense().numpy(), ref, rtol=1e-6)
    np.testing.assert_array_equal(swm.swm_scaled.to_dense().numpy(), swm.swm.to_dense().numpy())
    assert swm.config["weight"] == {"method": "knn", "k": 5, "symmetric": symmetric, "row_scale": row_scale}


def test_isolated_spot_gets_self_edge():
    pts = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [50, 50.0]])
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(pts, k=2, verbose=False)
    W = swm.swm.to_dense().numpy()
    assert W[4, 4] == 1 and W[4, :4].sum() == 0
    assert (W.sum(1) > 0).all()


@pytest.mark.parametrize("scale_coords", [True, False])
def test_dist_matches_brute_force(coords, scale_coords):
    radius, bw = 2.0, 0.3 if not scale_coords else 0.05
    xy = coords
    r = radius
    if scale_coords:
        shifted = coords - coords.min(0)
        s = np.abs(shifted).max()
        xy, r = shifted / s, radius / s
    D = cdist(xy, xy)
    A = np.where((D <= r) & ~np.eye(len(D), dtype=bool), np.exp(-(D**2) / (2 * bw**2)), 0.0)
    iso = A.sum(1) == 0
    A[iso, iso] = 1
    W = wmod.coordinate_to_weights_dist_sparse(
        coords, scale_coords=scale_coords, radius_cutoff=radius, band_width=bw, row_scale=False
    )
    np.testing.assert_allclose(W.to_dense().numpy(), A, rtol=1e-6, atol=1e-8)
    swm = SpatialWeightMatrix()
    swm.calc_weights_dist(
        torch.tensor(coords), scale_coords=scale_coords, radius_cutoff=radius, band_width=bw, verbose=False
    )  # classic default row_scale=True
    np.testing.assert_allclose(swm.swm.to_dense().numpy(), rowscale(A), rtol=1e-6, atol=1e-8)


def test_dist_dense_quantile_threshold(coords):
    shifted = coords - coords.min(0)
    xy = shifted / np.abs(shifted).max()
    D = cdist(xy, xy)
    thr = np.quantile(D.reshape(-1), 0.05)
    A = np.where((D <= thr) & ~np.eye(len(D), dtype=bool), np.exp(-(D**2) / (2 * 0.1**2)), 0.0)
    iso = A.sum(1) == 0
    A[iso, iso] = 1
    W = wmod.coordinate_to_weights_dist_dense(coords, q_threshold=0.05, row_scale=True)
    np.testing.assert_allclose(W.numpy(), rowscale(A), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------------------------------------------
def _cos(F):
    Fn = F / np.linalg.norm(F, axis=1, keepdims=True)
    return np.clip(Fn @ Fn.T, 0, None)


def _gauss(F):
    F = F / np.abs(F).max()
    return np.exp(-(cdist(F, F) ** 2) / (2 * 0.1**2))


def _pca_scores(X, dim):
    """Reference PCA of z-scored genes (spots x genes) by numpy SVD."""
    Z = (X - X.mean(0)) / X.std(0, ddof=1)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, :dim] * S[:dim]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("reduce", ["none", "pca"])
def test_scale_by_expr_matches_all_pairs_reference(coords, metric, reduce):
    rng = np.random.default_rng(2)
    expr = rng.gamma(2.0, size=(15, 40))  # num_gene x num_spot
    F = _pca_scores(expr.T, 5) if reduce == "pca" else expr.T
    S = _cos(F) if metric == "cosine" else _gauss(F)
    W0 = brute_knn(coords, 6, True)
    ref = W0 * S
    iso = ref.sum(1) == 0
    ref[iso, iso] = 1
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=6, verbose=False)
    swm.scale_by_expr(torch.tensor(expr), dist_metric=metric, reduce=reduce, dim=5, verbose=False)
    np.testing.assert_allclose(swm.weights_csr().toarray(), ref, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(swm.swm.to_dense().numpy(), W0)  # unscaled weights untouched
    assert swm.config["similarity"]["source"] == "expression"
    # row scaling and the equivalent external similarity
    swm2 = SpatialWeightMatrix()
    swm2.calc_weights_knn(coords, k=6, verbose=False)
    out = swm2.scale_by_similarity(S, row_scale=True, return_swm=True, verbose=False)
    np.testing.assert_allclose(out.to_dense().numpy(), rowscale(ref), rtol=1e-5, atol=1e-7)


def test_scale_by_similarity_input_types(coords):
    rng = np.random.default_rng(3)
    S = rng.uniform(size=(40, 40))
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4, verbose=False)
    W0 = swm.swm.to_dense().numpy()
    results = []
    for sim in (S, torch.tensor(S), sp.csr_matrix(S), torch.tensor(S).to_sparse()):
        swm.scale_by_similarity(sim, verbose=False)
        results.append(swm.weights_csr().toarray())
    for r in results:
        np.testing.assert_allclose(r, W0 * S, rtol=1e-6)
    # missing sparse entries count as 0 -> spots lose edges; isolated ones get a self edge
    swm.scale_by_similarity(sp.csr_matrix((40, 40)), verbose=False)
    np.testing.assert_array_equal(swm.weights_csr().toarray(), np.eye(40))
    with pytest.raises(ValueError, match="shape"):
        swm.scale_by_similarity(S[:5, :5])


def test_scale_by_identity(coords):
    ids = pd.Series(np.where(coords[:, 0] > 5, "a", "b"))
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=6, verbose=False)
    W0 = swm.swm.to_dense().numpy()
    same = ids.to_numpy()[:, None] == ids.to_numpy()[None, :]
    for bc in (0, 0.25):
        swm.scale_by_identity(ids, boundary_connectivity=bc, verbose=False)
        ref = np.where(same, W0, bc * (W0 != 0))
        iso = ref.sum(1) == 0
        ref[iso, iso] = 1
        np.testing.assert_allclose(swm.weights_csr().toarray(), ref)
    with pytest.raises(ValueError, match="one label per spot"):
        swm.scale_by_identity(ids[:10])


def _ref_patch(image, x, y, radius, sf, padding):
    """smoother-omics 1.1.0's per-spot histology vector, written out for one spot (numpy.pad)."""
    x, y = x * sf, y * sf
    r = int(radius * sf)
    x0, y0 = max(0, int(x - r)), max(0, int(y - r))
    x1, y1 = min(image.shape[0], int(x + r)), min(image.shape[1], int(y + r))
    v = image[x0:x1, y0:y1, :]
    if not padding:
        return v.mean(axis=(0, 1))
    pads = ((r - int(x) + x0, r - x1 + int(x)), (r - int(y) + y0, r - y1 + int(y)), (0, 0))
    return np.pad(v, pad_width=pads, mode="mean").reshape(-1)


@pytest.mark.parametrize("reduce", ["none", "mean", "pca"])
def test_scale_by_histology(reduce):
    from smoother._similarity import histology_features

    rng = np.random.default_rng(4)
    image = rng.uniform(size=(40, 50, 3))
    xx, yy = np.meshgrid(np.arange(2.0, 100, 12), np.arange(3.0, 78, 12))  # full-res pixels, some at the border
    xy = np.column_stack([yy.ravel(), xx.ravel()])
    sf = {"spot_diameter_fullres": 10.0, "tissue_hires_scalef": 0.5}
    ref = np.stack([_ref_patch(image, x, y, 5.0, 0.5, reduce != "mean") for x, y in xy])
    np.testing.assert_allclose(histology_features(xy, image, sf, padding=reduce != "mean"), ref, rtol=1e-12)
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(xy, k=4, verbose=False)
    swm.scale_by_histology(xy, image, sf, dist_metric="cosine", reduce=reduce, dim=3, verbose=False)
    F = _pca_scores(ref, 3) if reduce == "pca" else ref
    expected = swm.swm.to_dense().numpy() * _cos(F)
    iso = expected.sum(1) == 0
    expected[iso, iso] = 1
    np.testing.assert_allclose(swm.weights_csr().toarray(), expected, rtol=1e-6, atol=1e-8)
    assert swm.config["similarity"]["source"] == "histology"


# ---------------------------------------------------------------------------------------------------------------
# precisions, caching, logging
# ---------------------------------------------------------------------------------------------------------------
def test_get_inv_cov_cache_and_invalidation(coords):
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=6, verbose=False)
    Q1 = swm.get_inv_cov("car", rho=0.1)
    assert swm.get_inv_cov("car", rho=0.1) is Q1
    assert "car_0.1_nsd_sp" in swm.inv_covs
    W0 = swm.swm.to_dense().double().numpy()
    np.testing.assert_allclose(Q1.to_dense().numpy(), np.eye(40) - 0.1 * W0, rtol=1e-6)
    swm.scale_by_identity(np.arange(40) % 2, verbose=False)
    assert swm.inv_covs == {}
    Q2 = swm.get_inv_cov("car", rho=0.1, return_sparse=False)
    np.testing.assert_allclose(Q2.numpy(), np.eye(40) - 0.1 * swm.weights_csr().toarray(), rtol=1e-6)
    # module functions agree with the method
    np.testing.assert_allclose(
        wmod.sparse_weights_to_inv_cov(swm.swm_scaled, "icar", rho=0.9, return_sparse=True).to_dense().numpy(),
        wmod.weights_to_inv_cov(swm.swm_scaled.to_dense(), "icar", rho=0.9).numpy(),
        rtol=1e-6,
    )
    # an indefinite CAR precision warns with a valid range (classic behaviour)
    with pytest.warns(UserWarning, match="not positive definite"):
        wmod.weights_to_inv_cov(swm.swm.to_dense(), "car", rho=0.9)


def test_from_graph(coords):
    ref = SpatialWeightMatrix()
    ref.calc_weights_knn(coords, k=6, verbose=False)
    swm = SpatialWeightMatrix.from_graph(ref.weights_csr())
    np.testing.assert_array_equal(swm.swm.to_dense().numpy(), ref.swm.to_dense().numpy())


def test_verbose_logs_stats(coords):
    import smoother as sm

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("smoother")
    log.addHandler(handler)
    try:
        with sm.settings.verbosity_context(2):
            swm = SpatialWeightMatrix()
            swm.calc_weights_knn(coords, k=6, verbose=True)
            swm.calc_weights_knn(coords, k=6, verbose=False)
    finally:
        log.removeHandler(handler)
    msgs = [r.getMessage() for r in records]
    nnz = swm.weights_csr().nnz
    assert msgs == [f"Number of spots: 40. Average number of neighbors per spot: {nnz / 40:.2f}."]


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
def test_bad_input(coords):
    swm = SpatialWeightMatrix()
    bad = coords.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        swm.calc_weights_knn(bad)
    with pytest.raises(ValueError, match="shape"):
        swm.calc_weights_knn(coords[:, 0])
    with pytest.raises(ValueError, match="k \\+ 1"):
        swm.calc_weights_knn(coords[:5], k=6)
    with pytest.raises(ValueError, match="calc_weights_knn"):
        swm.scale_by_expr(np.ones((3, 40)))
    with pytest.raises(ValueError, match="euclidean"):
        swm.calc_weights_dist(coords, dist_metric="manhattan")
    with pytest.raises(ValueError, match="radius_cutoff"):
        swm.calc_weights_dist(coords, radius_cutoff=-1)
    swm.calc_weights_knn(coords, k=6, verbose=False)
    with pytest.raises(ValueError, match="transpose"):
        swm.scale_by_expr(np.ones((40, 7)))
    with pytest.raises(ValueError, match="dist_metric"):
        swm.scale_by_expr(np.ones((7, 40)), dist_metric="manhattan")
    with pytest.raises(ValueError, match="reduce"):
        swm.scale_by_expr(np.ones((7, 40)), reduce="umap")
    with pytest.raises(ValueError, match="Unknown prior"):
        swm.get_inv_cov("gp")
    with pytest.raises(ValueError, match="rho"):
        swm.get_inv_cov("icar", rho=2.0)
    with pytest.raises(ValueError, match="Unknown prior"):
        wmod.sparse_weights_to_inv_cov(swm.swm, "gp")


# ---------------------------------------------------------------------------------------------------------------
# issue 11: negative weights and zero feature vectors are never handled silently
# ---------------------------------------------------------------------------------------------------------------
def test_negative_weights_warn_with_their_count(coords):
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4, verbose=False)
    S = np.ones((40, 40))
    rows, cols = swm.weights_csr().nonzero()
    S[rows[:3], cols[:3]] = -0.5  # three edges get a negative similarity
    with pytest.warns(UserWarning, match=r"has 3 negative weight\(s\).*set them to 0"):
        swm.scale_by_similarity(S, verbose=False)
    W = -sp.identity(5, format="csr")
    with pytest.warns(UserWarning, match=r"`W` has 5 negative weight"):
        SpatialWeightMatrix.from_graph(W)
    with pytest.warns(UserWarning, match=r"`swm` has 1 negative weight"):
        swm.swm = sp.csr_matrix(np.array([[0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="boundary_connectivity"):
        swm.scale_by_identity(np.arange(2) % 2, boundary_connectivity=-0.1, verbose=False)
    with pytest.raises(TypeError, match="boundary_connectivity"):
        swm.scale_by_identity(np.arange(2) % 2, boundary_connectivity="0", verbose=False)


@pytest.mark.parametrize("reduce", ["none", "pca"])
def test_cosine_of_zero_vectors_keeps_edges(coords, reduce):
    rng = np.random.default_rng(5)
    expr = rng.gamma(2.0, size=(12, 40))
    expr[:, :6] = 0.0  # six empty spots
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=6, verbose=False)
    W0 = swm.swm.to_dense().numpy()
    if reduce == "none":
        with pytest.warns(UserWarning, match=r"spot\(s\) have a zero feature vector"):
            swm.scale_by_expr(expr, reduce="none", verbose=False)
        F = expr.T
        n = np.linalg.norm(F, axis=1)
        S = np.clip(F @ F.T / np.outer(np.where(n > 0, n, 1), np.where(n > 0, n, 1)), 0, None)
        S[n == 0] = 1.0
        S[:, n == 0] = 1.0
        ref = W0 * S
        iso = ref.sum(1) == 0
        ref[iso, iso] = 1
        np.testing.assert_allclose(swm.weights_csr().toarray(), ref, rtol=1e-10)
    # constant expression: every spot identical (z-scored genes all dropped, or equal non-zero vectors)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        swm.scale_by_expr(np.full((12, 40), 2.0), reduce=reduce, verbose=False)
    assert any("zero feature vector" in str(w.message) for w in rec) == (reduce == "pca")
    np.testing.assert_allclose(swm.weights_csr().toarray(), W0, rtol=1e-12)  # was: every edge cut


def test_classic_argument_types(coords):
    swm = SpatialWeightMatrix()
    with pytest.raises(TypeError, match="`k`"):
        swm.calc_weights_knn(coords, k=2.5)
    with pytest.raises(TypeError, match="radius_cutoff"):
        swm.calc_weights_dist(coords, radius_cutoff="1")
    with pytest.raises(ValueError, match="band_width"):
        swm.calc_weights_dist(coords, band_width=float("nan"))
    with pytest.raises(ValueError, match="q_threshold"):
        wmod.coordinate_to_weights_dist_dense(coords, q_threshold=2.0)
    with pytest.raises(TypeError, match="symmetric"):
        swm.calc_weights_knn(coords, symmetric="yes")
    with pytest.raises(ValueError, match="at least 1 spots"):
        swm.calc_weights_knn(np.zeros((0, 2)))


def test_all_spots_at_one_point_is_a_clear_error():
    swm = SpatialWeightMatrix()
    with pytest.raises(ValueError, match="same point"):
        swm.calc_weights_knn(np.ones((10, 2)), k=3)
    with pytest.raises(ValueError, match="same point"):
        swm.calc_weights_dist(np.ones((10, 2)), scale_coords=False)
    with pytest.raises(ValueError, match="same coordinates"):
        swm.calc_weights_dist(np.ones((10, 2)))  # scale_coords=True: the scaling itself says so
