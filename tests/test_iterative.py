"""Conjugate gradients as the factor's stand-in (issue 12): against the Cholesky / dense solve, scipy's cg and an
independent residual; the solver choice, its records and its checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import smoother as sm
from smoother._core.iterative import (
    CGSolver,
    ChebyshevSolver,
    ConvergenceError,
    gershgorin_interval,
    jacobi_condition_bound,
)
from smoother._core.linalg import NotPositiveDefiniteError, SPDFactor, choose_solver, spd_solver

from .contract import check_rejects


def grid_icar(side: int, rho: float = 0.99) -> sp.csr_matrix:
    e = np.ones(side - 1)
    T = sp.diags([e, e], [-1, 1], shape=(side, side))
    W = (sp.kron(sp.identity(side), T) + sp.kron(T, sp.identity(side))).tocsr()
    return (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - rho * W).tocsr()


def rel_residual(A, X, B) -> np.ndarray:
    return np.linalg.norm(B - A @ X, axis=0) / np.linalg.norm(B, axis=0)


@pytest.mark.parametrize(("lam", "pre", "tol"), [(1.0, "jacobi", 1e-6), (30.0, "jacobi", 1e-8), (30.0, "amg", 1e-6)])
def test_cg_equals_the_cholesky_solve_to_its_tolerance(lam, pre, tol):
    A = (sp.identity(900) + lam * grid_icar(30)).tocsr()
    B = np.random.default_rng(1).standard_normal((900, 7))
    cg = CGSolver(A, tol=tol, preconditioner=pre)
    X = cg.solve(B)
    ref = SPDFactor(A).solve(B)
    res = rel_residual(A, X, B)
    assert res.max() <= tol
    # the reported residual is the true one, recomputed independently here
    assert cg.info["residual_max"] == pytest.approx(res.max(), rel=1e-6)
    # error bounded by the condition number times the residual
    kappa = np.linalg.cond(A.toarray())
    err = np.linalg.norm(X - ref, axis=0) / np.linalg.norm(ref, axis=0)
    assert err.max() <= kappa * tol
    assert err.max() > 0  # an iterative answer, not the factor's


@pytest.mark.parametrize(("lam", "rho", "tol"), [(1.0, 0.99, 1e-6), (20.0, 0.9, 1e-9), (3.0, 1.0, 1e-6)])
def test_chebyshev_equals_the_dense_solve_to_its_tolerance(lam, rho, tol):
    A = (sp.identity(625) + lam * grid_icar(25, rho)).tocsr()
    B = np.random.default_rng(4).standard_normal((625, 5))
    ch = ChebyshevSolver(A, tol=tol)
    X = ch.solve(B)
    res = rel_residual(A, X, B)
    assert res.max() <= tol
    assert ch.info["residual_max"] == pytest.approx(res.max(), rel=1e-6)
    assert ch.info["method"] == "chebyshev"
    ref = np.linalg.solve(A.toarray(), B)
    err = np.linalg.norm(X - ref, axis=0) / np.linalg.norm(ref, axis=0)
    assert err.max() <= np.linalg.cond(A.toarray()) * tol
    # about as many iterations as Jacobi-CG (same worst-case polynomial bound), never far more
    cg = CGSolver(A, tol=tol, preconditioner="jacobi")
    cg.solve(B)
    assert ch.info["iterations_max"] <= 1.5 * cg.info["iterations_max"] + 2


def test_chebyshev_needs_a_gershgorin_interval():
    # SAR-like precision (I - W)^T (I - W): not diagonally dominant, Gershgorin gives no positive lower bound
    e = np.ones(29)
    W = sp.diags([e, e], [-1, 1], shape=(30, 30)) * 0.5
    M = ((sp.identity(30) - W).T @ (sp.identity(30) - W) * 4.0 + 0.01 * sp.identity(30)).tocsr()
    assert gershgorin_interval(M) is None
    with pytest.raises(ValueError, match="solver='cg'"):
        ChebyshevSolver(M)
    X = CGSolver(M, tol=1e-8).solve(np.ones(30))  # CG (AMG, the bound being infinite) still solves it
    assert rel_residual(M, X[:, None], np.ones((30, 1))).max() <= 1e-8


def test_block_cg_matches_scipy_cg_column_by_column():
    A = (sp.identity(400) + 2.0 * grid_icar(20)).tocsr()
    B = np.random.default_rng(2).standard_normal((400, 3))
    X = CGSolver(A, tol=1e-10, preconditioner="jacobi").solve(B)
    M = sp.diags(1.0 / A.diagonal())
    for j in range(3):
        x, info = spla.cg(A, B[:, j], rtol=1e-10, M=M, maxiter=1000)
        assert info == 0
        np.testing.assert_allclose(X[:, j], x, rtol=1e-7, atol=1e-9)


def test_vector_zero_and_empty_right_hand_sides():
    A = (sp.identity(100) + grid_icar(10)).tocsr()
    cg = CGSolver(A)
    b = np.random.default_rng(3).standard_normal(100)
    x = cg.solve(b)
    assert x.shape == (100,)
    np.testing.assert_allclose(x, np.linalg.solve(A.toarray(), b), rtol=1e-5, atol=1e-6)
    B = np.column_stack([b, np.zeros(100)])
    X = cg.solve(B)
    assert np.all(X[:, 1] == 0)
    assert cg.solve(np.zeros((100, 0))).shape == (100, 0)
    with pytest.raises(ValueError, match="rows"):
        cg.solve(np.ones(99))


@pytest.mark.parametrize(("lam", "rho"), [(0.1, 0.5), (1.0, 0.99), (10.0, 0.99), (5.0, 1.0)])
def test_jacobi_condition_bound_holds(lam, rho):
    A = (sp.identity(144) + lam * grid_icar(12, rho)).toarray()
    s = 1 / np.sqrt(np.diag(A))
    ev = np.linalg.eigvalsh(s[:, None] * A * s[None, :])
    bound = jacobi_condition_bound(sp.csr_matrix(A))
    assert ev.max() / ev.min() <= bound * (1 + 1e-12)
    # and it is the closed form on a grid (row Gershgorin: 1 -/+ lam rho d / (1 + lam d), d = 4)
    if rho < 1:
        r = lam * rho * 4 / (1 + lam * 4)
        assert bound <= (1 + r) / (1 - r) * (1 + 1e-12)


def test_indefinite_and_non_converging_systems_raise():
    Q = grid_icar(10)
    with pytest.raises(NotPositiveDefiniteError):
        CGSolver((Q - 3.0 * sp.identity(100)).tocsr())  # negative diagonal entries
    S = (sp.identity(100) + 1.0 * Q).tocsr()
    with pytest.raises(ConvergenceError, match="tolerance"):
        CGSolver(S, tol=1e-12, maxiter=3).solve(np.ones(100))


def test_curvature_check_catches_an_indefinite_matrix_with_positive_diagonal():
    # positive diagonal, but 1 - 2 = -1 < 0 is an eigenvalue of [[1, 2], [2, 1]] blocks
    A = sp.block_diag([sp.csr_matrix([[1.0, 2.0], [2.0, 1.0]])] * 5).tocsr()
    with pytest.raises(NotPositiveDefiniteError):
        CGSolver(A, preconditioner="jacobi", maxiter=50).solve(np.tile([1.0, -1.0], 5))


def test_choose_solver_by_memory_and_by_name():
    A = (sp.identity(10_000) + grid_icar(100)).tocsr()
    assert choose_solver(A, memory=2**40) == "cholesky"
    assert choose_solver(A, memory=2**20) == "chebyshev"  # factor too big, well conditioned
    big_lam = (sp.identity(10_000) + 1e4 * grid_icar(100, 1.0)).tocsr()
    assert choose_solver(big_lam, memory=2**20) == "cg"  # no useful Gershgorin bound: CG with AMG
    assert choose_solver(A, "cg") == "cg" and choose_solver(A, "cholesky") == "cholesky"
    assert isinstance(spd_solver(A, "chebyshev"), ChebyshevSolver)
    with pytest.raises(ValueError, match="solver"):
        choose_solver(A, "lu")
    assert isinstance(spd_solver(A, "cg", tol=1e-4), CGSolver)
    assert spd_solver(A, "cholesky").info["method"] == "cholesky"


@pytest.fixture(scope="module")
def field():
    a = sm.datasets.simulate_field(n_spots=500, n_genes=9, seed=3)
    sm.pp.spatial_graph(a)
    return a


@pytest.mark.parametrize(("center", "solver"), [(True, "cg"), (False, "cg"), (True, "chebyshev")])
def test_smooth_iterative_equals_cholesky_and_records_the_residual(field, center, solver):
    ref = sm.tl.smooth(field, lambda_spatial=2.0, solver="cholesky", center=center, dtype="float64", copy=True)
    out = sm.tl.smooth(field, lambda_spatial=2.0, solver=solver, tol=1e-8, center=center, dtype="float64", copy=True)
    X, R = out.layers["smoothed"], ref.layers["smoothed"]
    assert np.abs(X - R).max() <= 1e-5 * np.abs(R).max()
    assert out.uns["smoothed"]["params"]["solver"] == solver and out.uns["smoothed"]["params"]["tol"] == 1e-8
    assert ref.uns["smoothed"]["params"]["solver"] == "cholesky" and "solver" not in ref.uns["smoothed"]
    rec = out.uns["smoothed"]["solver"]
    assert rec["method"] == solver and 0 < rec["residual_max"] <= 1e-8
    # the recorded residual against an independent recomputation of (I + lam Q) X = Y - m
    from smoother._anndata import get_prior_operator

    op = get_prior_operator(field.obsp["spatial_connectivities"], "icar", 0.99)
    A = sp.identity(field.n_obs) + 2.0 * op.Q
    Y = np.asarray(field.X, dtype=np.float64)
    m = Y.mean(0) if center else np.zeros(Y.shape[1])
    res = rel_residual(A, X - m, Y - m)
    assert res.max() == pytest.approx(rec["residual_max"], rel=1e-3)


@pytest.mark.parametrize("solver", ["cg", "chebyshev"])
def test_dask_smooth_iterative_equals_memory(field, solver):
    da = pytest.importorskip("dask.array")
    from smoother._core.blockwise import solver_info

    ref = sm.tl.smooth(field, lambda_spatial=1.0, solver="cholesky", copy=True)
    b = field.copy()
    b.X = da.from_array(sp.csr_matrix(np.asarray(field.X)), chunks=(100, 9), asarray=False)
    sm.tl.smooth(b, lambda_spatial=1.0, solver=solver, tol=1e-7)
    assert b.uns["smoothed"]["params"]["solver"] == solver
    rec = b.uns["smoothed"]["solver"]
    out = b.layers["smoothed"].compute(scheduler="threads")
    np.testing.assert_allclose(out, ref.layers["smoothed"], rtol=1e-5, atol=1e-5)
    # built once in this process (per method), every gene block solved to tol
    (info,) = [i for i in solver_info(rec["token"]) if i["method"] == solver]
    assert info["columns"] == 9 and 0 < info["residual_max"] <= 1e-7


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"solver": "lu"}, ValueError, "solver"),
        ({"solver": 1}, TypeError, "solver"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"tol": 1.5}, ValueError, "tol"),
        ({"tol": "small"}, TypeError, "tol"),
        ({"tol": float("nan")}, ValueError, "tol"),
        ({"solver": "cg", "nonneg": True}, ValueError, "nonneg"),
        ({"solver": "cg", "uncertainty": True}, ValueError, "uncertainty"),
        ({"solver": "chebyshev", "nonneg": True}, ValueError, "nonneg"),
    ],
)
def test_bad_solver_arguments_are_rejected_before_work(field, kwargs, error, name):
    check_rejects(sm.tl.smooth, field, lambda_spatial=1.0, error=error, names=name, **kwargs)


def test_auto_lambda_where_the_factor_does_not_fit_uses_a_connected_window(field, monkeypatch):
    da = pytest.importorskip("dask.array")
    from scipy.sparse.csgraph import connected_components

    from smoother.tl import _smooth

    monkeypatch.setattr(_smooth, "AUTO_MAX_SPOTS", 200)
    b = field.copy()
    b.X = da.from_array(np.asarray(field.X), chunks=(100, 9))
    sm.tl.smooth(b, lambda_spatial="auto", solver="chebyshev", random_state=3)
    idx = _smooth.auto_window(field.obsp["spatial_connectivities"], 200, 3)
    W = field.obsp["spatial_connectivities"][idx][:, idx]
    assert idx.size == 200 and connected_components(W, directed=False)[0] == 1  # one connected patch
    # the same choice as the in-memory search on that window alone
    ref = sm.tl.smooth(field[idx].copy(), lambda_spatial="auto", solver="cholesky", random_state=3, copy=True)
    assert b.uns["smoothed"]["gcv"]["n_spots"] == 200
    assert b.uns["smoothed"]["lambda"] == pytest.approx(ref.uns["smoothed"]["lambda"], rel=1e-9)
    assert b.uns["smoothed"]["params"]["solver"] == "chebyshev"
