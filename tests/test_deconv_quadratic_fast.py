"""The fused (numba) FISTA path of the quadratic deconvolution: exact against a dense QP / scipy nnls reference,
identical iterates to the general numpy path, sparse streaming of ``Y``, and its memory footprint."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from smoother._core import deconv as core
from smoother._core import knn_graph, precision


def _problem(n=36, G=18, K=4, seed=0, count_like=False):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(size=(n, 2))
    Q = precision(knn_graph(coords, k=5)[0], "icar", 0.99)
    X = rng.gamma(2.0, 1.0, size=(G, K))
    Z = rng.dirichlet(np.ones(K) * 0.5, size=n)
    if count_like:
        Y = rng.poisson(Z @ X.T * 0.5).astype(np.float64)
    else:
        Y = np.abs(Z @ X.T + 0.4 * rng.standard_normal((n, G)))
    return X, Y, sp.csr_matrix(Q)


def _dense_qp(X, Y, Q, lam, bias):
    """F(Z) = 1/2 z^T A z - b^T z + const over z = vec(Z) (row-major), built densely from Y (not from C)."""
    N, G = Y.shape
    K = X.shape[1]
    Xc, Yc = (X - X.mean(axis=0), Y - Y.mean(axis=1, keepdims=True)) if bias else (X, Y)
    Qd = Q.toarray()
    A = 2.0 / (G * N) * np.kron(np.eye(N), Xc.T @ Xc) + 2.0 * lam / (K * N) * np.kron(Qd, np.eye(K))
    b = 2.0 / (G * N) * (Yc @ Xc).ravel()
    return A, b


def _nnls_reference(X, Y, Q, lam, bias):
    """Exact non-negative minimizer by scipy's active-set NNLS on the Cholesky factor of the dense Hessian."""
    A, b = _dense_qp(X, Y, Q, lam, bias)
    R = np.linalg.cholesky(A).T  # A = R^T R
    d = np.linalg.solve(R.T, b)  # R^T d = b, so ||R z - d||^2 = z^T A z - 2 b^T z + const
    z, _ = nnls(R, d, maxiter=50 * A.shape[0])
    return z.reshape(Y.shape[0], X.shape[1])


def _dense_objective(X, Y, Z, Q, lam, bias):
    N, G = Y.shape
    K = X.shape[1]
    R = Y - Z @ X.T
    if bias:
        R = R - R.mean(axis=1, keepdims=True)
    return np.sum(R * R) / (G * N) + lam * np.sum(Z * (Q @ Z)) / (K * N)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lam", [0.0, 3.0, 300.0])
def test_fused_nnls_matches_scipy_nnls(bias, lam):
    X, Y, Q = _problem(seed=1)
    r = core.deconvolve_quadratic(X, Y, model="nnls", Q=Q, lam=lam, bias=bias, tol=1e-11, max_iter=50000)
    assert r.extra.get("kernel") == "numba"
    assert r.converged and r.kkt_residual <= 1e-11
    ref = _nnls_reference(X, Y, Q, lam, bias)
    np.testing.assert_allclose(r.coef, ref, atol=1e-7 * np.abs(ref).max())
    assert (r.coef >= 0).all()
    assert r.objective == pytest.approx(_dense_objective(X, Y, r.coef, Q, lam, bias), rel=1e-10)
    assert r.objective <= _dense_objective(X, Y, ref, Q, lam, bias) * (1 + 1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_lr_matches_linear_solve(bias):
    X, Y, Q = _problem(seed=2)
    r = core.deconvolve_quadratic(X, Y, model="lr", Q=Q, lam=5.0, bias=bias, tol=1e-11, max_iter=50000)
    assert r.extra.get("kernel") == "numba" and r.converged
    A, b = _dense_qp(X, Y, Q, 5.0, bias)
    ref = np.linalg.solve(A, b).reshape(r.coef.shape)
    np.testing.assert_allclose(r.coef, ref, atol=1e-7 * np.abs(ref).max())
    if bias:  # the eliminated intercept is the mean residual of each spot
        np.testing.assert_allclose(r.bias, (Y - ref @ X.T).mean(axis=1), atol=1e-6 * np.abs(Y).max())


def test_fused_and_general_paths_take_identical_steps(monkeypatch):
    X, Y, Q = _problem(n=60, seed=3)
    data = core.quadratic_data(X, Y, bias=True)
    spatial = core.SpatialTerm(Q, 20.0, 1.0, X.shape[1], Y.shape[0])
    kw = {"tol": 1e-8, "max_iter": 20000, "check_every": 5, "show_progress": False}
    r_fast = core.solve_quadratic(data, spatial, **kw)
    monkeypatch.setattr(core, "_KERNELS", False)  # numba unavailable: the general numpy path
    r_gen = core.solve_quadratic(data, spatial, **kw)
    assert "kernel" not in r_gen.extra and r_fast.extra["kernel"] == "numba"
    assert r_fast.n_iter == r_gen.n_iter and r_fast.n_iter % 5 == 0
    np.testing.assert_allclose(r_fast.coef, r_gen.coef, rtol=0, atol=1e-10 * np.abs(r_gen.coef).max())
    assert r_fast.extra["lipschitz"] == pytest.approx(r_gen.extra["lipschitz"], rel=1e-12)
    assert r_fast.kkt_residual == pytest.approx(r_gen.kkt_residual, rel=1e-6)
    assert r_fast.objective == pytest.approx(r_gen.objective, rel=1e-12)


def test_fused_default_checks_every_iteration():
    X, Y, Q = _problem(n=60, seed=3)
    data = core.quadratic_data(X, Y, bias=True)
    spatial = core.SpatialTerm(Q, 20.0, 1.0, X.shape[1], Y.shape[0])
    r1 = core.solve_quadratic(data, spatial, tol=1e-8, show_progress=False)
    r5 = core.solve_quadratic(data, spatial, tol=1e-8, check_every=5, show_progress=False)
    assert r1.converged and r1.kkt_residual <= 1e-8
    assert r5.n_iter - 5 < r1.n_iter <= r5.n_iter  # stops at the first iterate below tol
    # the reported residual is the projected gradient of the returned coefficients, recomputed densely
    A, b = _dense_qp(X, Y, Q, 20.0, True)
    z = r1.coef.ravel()
    g = A @ z - b
    pg = np.where(z > 0, g, np.minimum(g, 0.0))
    assert r1.kkt_residual == pytest.approx(np.linalg.norm(pg) / np.linalg.norm(b), rel=1e-6)


def test_fused_warns_at_max_iter_and_keeps_feasible():
    X, Y, Q = _problem(seed=4)
    with pytest.warns(core.ConvergenceWarning, match="before converging"):
        r = core.deconvolve_quadratic(X, Y, Q=Q, lam=50.0, tol=1e-14, max_iter=4, init_with_lr_sol=False)
    assert not r.converged and r.n_iter == 4 and (r.coef >= 0).all()
    assert r.objective == pytest.approx(_dense_objective(X, Y, r.coef, Q, 50.0, True), rel=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_quadratic_data_sparse_rows_equal_dense(bias):
    X, Y, _ = _problem(n=50, G=25, seed=5, count_like=True)
    dense = core.quadratic_data(X, Y, bias=bias, chunk_size=7)
    # a CSR matrix with duplicate entries (summed by scipy) and int counts
    Ys = sp.coo_matrix(Y)
    dup = sp.coo_matrix((np.r_[Ys.data - 1, np.ones(Ys.nnz)], (np.r_[Ys.row, Ys.row], np.r_[Ys.col, Ys.col])))
    order = np.argsort(dup.row, kind="stable")
    Ycsr = sp.csr_matrix(
        (dup.data[order].astype(np.int64), dup.col[order], np.r_[0, np.cumsum(np.bincount(dup.row, minlength=50))]),
        shape=Y.shape,
    )
    assert Ycsr.nnz > np.count_nonzero(Y)  # duplicates present
    sparse = core.quadratic_data(X, Ycsr, bias=bias, chunk_size=7)
    np.testing.assert_allclose(sparse.C, dense.C, rtol=1e-12)
    assert sparse.const == pytest.approx(dense.const, rel=1e-12)
    # the reduction is exact: model loss at a random Z equals the dense mean squared residual
    Z = np.random.default_rng(0).uniform(size=(50, X.shape[1]))
    R = Y - Z @ X.T
    if bias:
        R = R - R.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(sparse.my, Y.mean(axis=1), rtol=1e-12)
    assert sparse.model_loss(Z) == pytest.approx(np.mean(R * R), rel=1e-10)


def test_fused_solver_keeps_few_spot_by_type_arrays():
    rng = np.random.default_rng(6)
    side, K, G = 120, 8, 30
    n = side * side
    ii, jj = np.divmod(np.arange(n), side)
    coords = np.column_stack([ii, jj]).astype(float)
    Q = sp.csr_matrix(precision(knn_graph(coords, k=4)[0], "icar", 0.99))
    X = rng.gamma(2.0, 1.0, size=(G, K))
    data = core.quadratic_data(X, sp.csr_matrix(rng.poisson(1.0, size=(n, G)).astype(float)), bias=False)
    spatial = core.SpatialTerm(Q, 1.0, 1.0, K, n)
    core._fista_kernels()  # compile outside the measurement
    tracemalloc.start()
    r = core.solve_quadratic(data, spatial, tol=1e-3, max_iter=40, show_progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.extra["kernel"] == "numba"
    # three iterates (start, previous, next) plus small vectors; the general path held ~15 (N, K) temporaries
    assert peak < 3.6 * n * K * 8


@pytest.mark.parametrize("chunks", ["dense", "csr", "csr_split_genes"])
@pytest.mark.parametrize("weights", [None, "dwls"])
def test_quadratic_data_streams_dask_rows(chunks, weights):
    da = pytest.importorskip("dask.array")
    X, Y, _ = _problem(n=45, G=16, seed=7, count_like=True)
    Y = Y + (weights == "dwls")  # DWLS weights need positive expression
    ref = core.quadratic_data(X, Y, bias=True, weights=weights)
    Yd = da.from_array(Y, chunks=(10, 16 if chunks != "csr_split_genes" else 5))
    if chunks != "dense":
        Yd = Yd.map_blocks(sp.csr_matrix, dtype=Y.dtype)
    got = core.quadratic_data(X, Yd, bias=True, weights=weights)
    np.testing.assert_allclose(got.C, ref.C, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.H, ref.H, rtol=1e-12)
    np.testing.assert_allclose(got.my, ref.my, rtol=1e-12)
    assert got.const == pytest.approx(ref.const, rel=1e-12)
    # and against the dense residual directly (not through the in-memory reduction)
    if weights is None:
        Z = np.random.default_rng(1).uniform(size=(45, X.shape[1]))
        R = Y - Z @ X.T
        R = R - R.mean(axis=1, keepdims=True)
        assert got.model_loss(Z) == pytest.approx(np.mean(R * R), rel=1e-10)
