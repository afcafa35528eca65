"""sm.tl.smooth: exact solutions against dense references, lambda='auto', the AnnData contract, bad inputs."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import lsq_linear

import smoother as sm
from smoother._core.smooth import prior_operator

PRIORS = ["sma", "sar", "isar", "car", "icar"]


def _adata(n_side=12, n_genes=5, seed=0, k=4):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(float(n_side)), np.arange(float(n_side)))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    truth = np.sin(coords[:, :1] / 3.0) + np.cos(coords[:, 1:] / 4.0) * np.linspace(0.5, 1.5, n_genes)
    a = ad.AnnData((truth + rng.normal(scale=0.5, size=truth.shape)).astype(np.float32))
    a.layers["truth"] = truth
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a, n_neighs=k)
    return a


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("center", [False, True])
def test_exact_equals_dense_solve(prior, standardize, center, dense_precision):
    a = _adata()
    rho = 0.2 if prior == "car" else 0.9
    lam = 1.7
    sm.tl.smooth(a, prior=prior, rho=rho, lambda_spatial=lam, standardize=standardize, center=center, dtype="float64")
    Q = dense_precision(a.obsp["spatial_connectivities"], prior, rho, standardize)
    Y = np.asarray(a.X, dtype=np.float64)
    m = Y.mean(axis=0) if center else np.zeros(a.n_vars)  # centre: the prior's mean is each gene's mean
    ref = m + np.linalg.solve(np.eye(a.n_obs) + lam * Q, Y - m)
    np.testing.assert_allclose(a.layers["smoothed"], ref, rtol=1e-9, atol=1e-9)
    assert a.layers["smoothed"].dtype == np.float64
    assert a.uns["smoothed"]["params"]["prior"] == prior
    assert a.uns["smoothed"]["params"]["lambda"] == lam
    assert a.uns["smoothed"]["params"]["center"] is center
    if center:  # levels are not shrunk: shifting a gene by a constant shifts its smoothed values by it
        b = a.copy()
        b.X = Y + 5.0
        sm.tl.smooth(b, prior=prior, rho=rho, lambda_spatial=lam, standardize=standardize, dtype="float64")
        np.testing.assert_allclose(b.layers["smoothed"], a.layers["smoothed"] + 5.0, atol=1e-9)


def test_icar_rho_one_is_fine_and_matches_laplacian():
    a = _adata()
    sm.tl.smooth(a, prior="icar", rho=1.0, lambda_spatial=2.0, dtype="float64")
    b = sm.tl.smooth(a, prior="icar", rho=1.0, lambda_spatial=2.0, dtype="float64", center=False, copy=True)
    np.testing.assert_allclose(a.layers["smoothed"], b.layers["smoothed"], atol=1e-10)  # Q 1 = 0: no change
    W = a.obsp["spatial_connectivities"].toarray()
    L = np.diag(W.sum(1)) - W
    ref = np.linalg.solve(np.eye(a.n_obs) + 2.0 * L, np.asarray(a.X, np.float64))
    np.testing.assert_allclose(a.layers["smoothed"], ref, atol=1e-9)
    # the constant is in the null space of L: smoothing keeps every gene's mean
    np.testing.assert_allclose(a.layers["smoothed"].mean(0), np.asarray(a.X, np.float64).mean(0), atol=1e-9)


def test_sparse_int_and_dense_inputs_agree_and_chunking_is_invisible():
    a = _adata(n_genes=7)
    counts = np.random.default_rng(1).poisson(3.0, size=(a.n_obs, a.n_vars))
    a.layers["counts"] = sp.csr_matrix(counts)
    a.layers["dense_int"] = counts
    sm.tl.smooth(a, layer="counts", key_added="s1", chunk_size=2)
    sm.tl.smooth(a, layer="dense_int", key_added="s2", dtype="float64")
    assert sp.issparse(a.layers["counts"])  # the input stays sparse
    assert a.layers["s1"].dtype == np.float32
    np.testing.assert_allclose(a.layers["s1"], a.layers["s2"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior", ["sar", "icar"])
@pytest.mark.parametrize("center", [False, True])
def test_nonneg_is_the_exact_constrained_optimum(prior, center, dense_precision):
    a = _adata(n_side=8, n_genes=3)
    Y = np.asarray(a.X, np.float64) - 0.8  # some negative values: the constraint binds
    a.X = Y
    lam, rho = 3.0, 0.9
    sm.tl.smooth(a, prior=prior, rho=rho, lambda_spatial=lam, nonneg=True, center=center, dtype="float64")
    X = a.layers["smoothed"]
    assert X.min() >= 0
    Q = dense_precision(a.obsp["spatial_connectivities"], prior, rho)
    L = np.linalg.cholesky(Q + 1e-12 * np.eye(a.n_obs))
    A = np.vstack([np.eye(a.n_obs), np.sqrt(lam) * L.T])
    for g in range(a.n_vars):
        m = Y[:, g].mean() if center else 0.0  # prior centred at m: ||y - x||^2 + lam (x - m)' Q (x - m)
        b = np.r_[Y[:, g], np.sqrt(lam) * L.T @ np.full(a.n_obs, m)]
        ref = lsq_linear(A, b, bounds=(0, np.inf), tol=1e-12).x

        def obj(x, y=Y[:, g], m=m):
            return ((y - x) ** 2).sum() + lam * (x - m) @ Q @ (x - m)

        assert obj(X[:, g]) <= obj(ref) * (1 + 1e-6)
        np.testing.assert_allclose(X[:, g], ref, atol=1e-4)


def test_auto_lambda_within_10_percent_of_best_fixed():
    a = sm.datasets.simulate_field(n_spots=1600, n_genes=20, noise_level=0.5, seed=3)
    sm.pp.spatial_graph(a)
    truth = a.layers["truth"]
    sm.tl.smooth(a, lambda_spatial="auto")
    err_auto = np.mean((a.layers["smoothed"] - truth) ** 2)
    lam = a.uns["smoothed"]["lambda"]
    assert a.uns["smoothed"]["params"]["lambda"] == lam and lam > 0
    gcv = a.uns["smoothed"]["gcv"]
    assert len(gcv["lambda"]) == len(gcv["score"]) == len(gcv["trace"])
    errs = []
    for lam_fixed in np.logspace(-2, 2, 25):
        b = sm.tl.smooth(a, lambda_spatial=float(lam_fixed), key_added="s", copy=True)
        errs.append(np.mean((b.layers["s"] - truth) ** 2))
    assert err_auto <= 1.10 * min(errs)
    assert err_auto < np.mean((np.asarray(a.X) - truth) ** 2) / 2  # smoothing helps a lot here


def test_auto_per_gene_matches_fixed_solutions():
    a = _adata(n_genes=4)
    a.X = a.X * np.array([0.2, 1.0, 3.0, 10.0], dtype=np.float32)  # genes on different scales
    sm.tl.smooth(a, lambda_spatial="auto", per_gene=True, dtype="float64")
    lams = a.var["smoothed_lambda"].to_numpy()
    assert a.uns["smoothed"]["params"]["lambda"] == "per_gene"
    for g, lam in enumerate(lams):
        b = sm.tl.smooth(a, lambda_spatial=float(lam), dtype="float64", copy=True, key_added="one")
        np.testing.assert_allclose(a.layers["smoothed"][:, g], b.layers["one"][:, g], atol=1e-9)


def test_hutchinson_trace_is_close_to_exact():
    from smoother._core.smooth import SmoothSolver

    a = _adata(n_side=20)
    op = prior_operator(a.obsp["spatial_connectivities"], "icar", 0.99)
    s = SmoothSolver(op, 1.0)
    exact = s.trace(method="exact")
    approx = s.trace(method="hutchinson", n_probes=64, seed=1)
    assert abs(approx - exact) / exact < 0.05


def test_squidpy_graph_and_smoother_graph_give_identical_results():
    sq = pytest.importorskip("squidpy")
    rng = np.random.default_rng(0)
    coords = rng.random((300, 2)) * 20  # random positions: no distance ties, so kNN is unambiguous
    a = ad.AnnData(rng.normal(size=(300, 4)).astype(np.float32))
    a.obsm["spatial"] = coords
    # squidpy's generic graph is the *directed* 6-NN graph (row i lists the 6 nearest spots of i, weight 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sq.gr.spatial_neighbors(a, n_neighs=6, coord_type="generic", key_added="sq")
    # smoother's symmetrized (union) 6-NN graph; sm.tl.smooth symmetrizes squidpy's graph the same way
    sm.pp.spatial_graph(a, n_neighs=6, mutual=False, key_added="sm")
    Wsq = a.obsp["sq_connectivities"]
    Wsm = a.obsp["sm_connectivities"]
    assert (Wsq != Wsq.T).nnz > 0  # really directed
    assert (Wsq.maximum(Wsq.T) != Wsm).nnz == 0  # the same graph after symmetrization
    sm.tl.smooth(a, connectivity_key="sq_connectivities", key_added="from_sq")
    sm.tl.smooth(a, connectivity_key="sm_connectivities", key_added="from_sm")
    np.testing.assert_array_equal(a.layers["from_sq"], a.layers["from_sm"])
    assert set(a.uns["sq_neighbors"]) >= {"connectivities_key", "distances_key", "params"}
    assert set(a.uns["sm_neighbors"]) >= {"connectivities_key", "distances_key", "params"}


def test_copy_returns_new_object_and_leaves_input_unchanged():
    a = _adata()
    before = a.copy()
    b = sm.tl.smooth(a, copy=True)
    assert b is not a and "smoothed" in b.layers and "smoothed" in b.uns
    assert "smoothed" not in a.layers and "smoothed" not in a.uns
    np.testing.assert_array_equal(a.X, before.X)
    assert sm.tl.smooth(a) is None and "smoothed" in a.layers
    sm.tl.smooth(a, lambda_spatial="auto", key_added="auto")
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # every recorded param is writable to h5ad
        a.write_h5ad(os.path.join(d, "x.h5ad"))
        back = ad.read_h5ad(os.path.join(d, "x.h5ad"))
    assert back.uns["auto"]["params"]["lambda_spatial"] == "auto"
    np.testing.assert_allclose(back.uns["auto"]["lambda"], a.uns["auto"]["lambda"])


def _state(a):
    return (set(a.layers), set(a.uns), set(a.obsp), a.X.copy())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"connectivity_key": "nope_connectivities"}, KeyError, "sm.pp.spatial_graph"),
        ({"layer": "missing"}, KeyError, "available layers"),
        ({"lambda_spatial": -1.0}, ValueError, ">= 0"),
        ({"lambda_spatial": "big"}, TypeError, "auto"),
        ({"rho": 1.5}, ValueError, r"\[0, 1\]"),
        ({"prior": "gauss"}, ValueError, "Unknown prior"),
        ({"prior": "car", "rho": 0.99}, ValueError, "positive definite .*for 0 <= rho <"),
        ({"prior": "icar", "rho": 1.0, "standardize": True}, ValueError, "rho < 1"),
        ({"dtype": "int32"}, ValueError, "float32"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"per_gene": True, "lambda_spatial": 1.0}, ValueError, "auto"),
    ],
)
def test_bad_inputs_raise_and_leave_adata_unchanged(kwargs, exc, match):
    a = _adata()
    layers, uns, obsp, X = _state(a)
    with pytest.raises(exc, match=match):
        sm.tl.smooth(a, **kwargs)
    assert (set(a.layers), set(a.uns), set(a.obsp)) == (layers, uns, obsp)
    np.testing.assert_array_equal(a.X, X)


def test_bad_data_raise():
    a = _adata()
    a.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sm.tl.smooth(a)
    assert "smoothed" not in a.layers
    # AnnData itself refuses an obsp matrix of the wrong size; the helper checks objects that bypass it
    from types import SimpleNamespace

    from smoother._anndata import get_graph

    fake = SimpleNamespace(obsp={"spatial_connectivities": sp.csr_matrix((5, 5))}, n_obs=7)
    with pytest.raises(ValueError, match=r"expected \(n_obs, n_obs\)"):
        get_graph(fake, "spatial_connectivities")
    with pytest.raises(TypeError, match="AnnData"):
        sm.tl.smooth(np.zeros((3, 3)))
    c = _adata()
    del c.obsm["spatial"]
    with pytest.raises(KeyError, match="obsm"):
        sm.pp.spatial_graph(c)


def test_auto_is_never_worse_than_no_smoothing_by_its_criterion():
    a = _adata(n_side=14, n_genes=4)
    sm.tl.smooth(a, dtype="float64")  # the default is 'auto'
    rec = a.uns["smoothed"]["gcv"]
    lams, score = np.asarray(rec["lambda"]), np.asarray(rec["score"])
    assert lams[0] == 0.0 and np.isinf(rec["gcv"][0])  # no smoothing is a candidate; GCV is 0/0 there
    # closed form at lambda = 0: X = Y, RSS = 0, tr S = n, so the risk estimate is the noise variance itself
    np.testing.assert_allclose(score[0], rec["sigma2_mean"], rtol=1e-12)
    lam = a.uns["smoothed"]["lambda"]
    assert lam > 0 and score[np.argmin(np.abs(lams - lam))] <= score[0]
    # constant genes: every lambda fits them exactly; the tie goes to no smoothing and the data come back
    c = _adata(n_side=6, n_genes=2)
    c.X = np.full(c.shape, 2.5)
    sm.tl.smooth(c, dtype="float64")
    assert c.uns["smoothed"]["lambda"] == 0.0
    np.testing.assert_array_equal(c.layers["smoothed"], c.X)


@pytest.mark.parametrize("center", [False, True])
def test_auto_with_sar_on_an_unnormalized_graph_is_never_worse_than_raw(center):
    # SAR on an unnormalized kNN graph (row sums 4) favours fields that oscillate between neighbours, not smooth
    # ones; issue 11 saw 'auto' go to the top of the grid there, twice as far from the truth as the raw data
    a = sm.datasets.simulate_field(n_spots=400, n_genes=6, noise_level=0.5, seed=1)
    a.X = a.X + 5.0
    truth = a.layers["truth"] + 5.0
    sm.pp.spatial_graph(a, n_neighs=4)
    raw = np.mean((np.asarray(a.X) - truth) ** 2)
    sm.tl.smooth(a, prior="sar", rho=0.99, center=center)
    assert a.uns["smoothed"]["lambda"] < 1.0
    assert np.mean((a.layers["smoothed"] - truth) ** 2) <= raw * (1 + 1e-3)
    # a grid of large values only: no smoothing wins, with a warning that names the fix
    with pytest.warns(UserWarning, match=r"chose 0 \(no smoothing\).*prior='isar'.*row-normalize"):
        b = sm.tl.smooth(a, prior="sar", rho=0.99, center=center, gcv_grid=[10.0, 100.0, 1000.0], copy=True)
    np.testing.assert_array_equal(b.layers["smoothed"], a.X)
    # the advice works: 'isar' (SAR on the row-normalized graph) chooses inside the grid and beats the raw data
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        c = sm.tl.smooth(a, prior="isar", rho=0.99, center=center, copy=True)
    assert np.mean((c.layers["smoothed"] - truth) ** 2) < 0.7 * raw
    assert 0 < c.uns["smoothed"]["lambda"] < 1e3


def test_auto_at_the_top_of_the_grid_warns():
    a = _adata(n_side=12, n_genes=3)
    a.X = np.random.default_rng(9).normal(size=a.shape)  # no spatial signal: the smoothest fit (the mean) wins
    with pytest.warns(UserWarning, match=r"largest value of the grid.*gcv_grid"):
        sm.tl.smooth(a, gcv_grid=[0.1, 1.0, 10.0])
    assert a.uns["smoothed"]["lambda"] == 10.0


def test_noise_variance_estimate_is_capped_by_neighbour_differences():
    from smoother._core.smooth import _difference_variance

    a = _adata(n_side=8, n_genes=2)
    W = a.obsp["spatial_connectivities"]
    Y = np.asarray(a.X, np.float64)
    d = np.ones(a.n_obs)
    d[:5] = 0.0  # unobserved spots do not enter
    Wd = W.toarray()
    keep = d > 0
    ref = [
        sum(Wd[i, j] * (Y[i, g] - Y[j, g]) ** 2 for i in range(64) for j in range(64) if keep[i] and keep[j] and i != j)
        / (2 * Wd[np.ix_(keep, keep)].sum())
        for g in range(2)
    ]
    np.testing.assert_allclose(_difference_variance(Y, W, d, None), ref, rtol=1e-12)


def test_per_gene_choices_at_the_grid_edge_warn_with_their_count():
    a = _adata(n_side=10, n_genes=3)
    noise = np.random.default_rng(8).normal(size=a.shape)
    a.X = np.column_stack([np.asarray(a.layers["truth"])[:, :2] * 3.0, noise[:, 2]])  # gene 3: pure noise
    with pytest.warns(UserWarning, match=r"for 1 of 3 genes \(adata.var\['smoothed_lambda'\]\)"):
        sm.tl.smooth(a, per_gene=True, gcv_grid=[0.01, 0.1, 1.0, 10.0])
    lams = a.var["smoothed_lambda"].to_numpy()
    assert lams[2] == 10.0 and (lams[:2] < 10.0).all()
