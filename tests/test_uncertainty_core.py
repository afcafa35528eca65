"""Posterior variance factors of the core layer against dense formulas (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core.graph import knn_graph
from smoother._core.linalg import SPDFactor
from smoother._core.precision import precision
from smoother._core.uncertainty import centred_correction, distance_colouring, inv_diag, residual_sigma2


def _system(side=14, lam=1.0, rho=0.99, k=6, seed=0):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float))
    coords = np.column_stack([xx.ravel(), yy.ravel()]) + rng.normal(scale=0.05, size=(side * side, 2))
    W, _ = knn_graph(coords, k=k)
    Q = sp.csr_matrix(precision(W, "icar", rho))
    return (sp.identity(Q.shape[0], format="csr") + lam * Q).tocsr(), Q


@pytest.mark.parametrize("lam", [0.1, 1.0, 10.0])
def test_exact_diag_equals_dense_inverse(lam):
    A, _ = _system(lam=lam)
    res = inv_diag(A, method="exact")
    np.testing.assert_allclose(res.diag, np.diag(np.linalg.inv(A.toarray())), rtol=1e-10)
    assert res.method == "exact" and res.max_rel_error == 0.0


def test_auto_is_exact_below_the_threshold_and_probing_above():
    A, _ = _system()
    assert inv_diag(A).method == "exact"
    assert inv_diag(A, exact_max=10).method == "probing"


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_probing_meets_its_measured_error_and_reports_it_honestly(lam):
    A, _ = _system(side=24, lam=lam)
    true = np.diag(np.linalg.inv(A.toarray()))
    res = inv_diag(A, method="probing", tol=1e-3, n_check=48, seed=1)
    rel = np.abs(res.diag - true) / true
    assert res.max_rel_error <= 1e-3
    # the error measured on the sample is representative of the whole field (within a factor 3 on a lattice)
    assert rel.max() <= 3 * max(res.max_rel_error, 1e-12)
    assert res.n_colors > 1 and res.distance >= 2


def test_distance_colouring_separates_spots_of_one_colour():
    A, _ = _system(side=10)
    for p in (1, 2, 3):
        colour = distance_colouring(A, p)
        P = sp.csr_matrix(A, dtype=bool).astype(np.int64) + sp.identity(A.shape[0], dtype=np.int64)
        reach = P.copy()
        for _ in range(p - 1):
            reach = reach @ P
        reach = reach.tocoo()
        off = reach.row != reach.col
        assert not (colour[reach.row[off]] == colour[reach.col[off]]).any()


@pytest.mark.parametrize("rho", [0.9, 1.0])
def test_centred_correction_equals_the_dense_posterior_of_a_free_intercept(rho):
    A, _ = _system(side=8, lam=2.0, rho=rho)
    n = A.shape[0]
    corr = centred_correction(SPDFactor(A), n)
    # dense joint posterior of (f, mu): precision [[A, 1], [1^T, n]]; covariance of f + mu 1
    H = np.zeros((n + 1, n + 1))
    H[:n, :n] = A.toarray()
    H[:n, n] = H[n, :n] = 1.0
    H[n, n] = n
    T = np.hstack([np.eye(n), np.ones((n, 1))])
    if rho == 1.0:  # Q 1 = 0: the intercept is the unpenalized constant already; the covariance of f + mu 1 is A^-1
        np.testing.assert_allclose(corr, 0.0, atol=1e-10)
        return
    cov = T @ np.linalg.inv(H) @ T.T
    np.testing.assert_allclose(np.diag(np.linalg.inv(A.toarray())) + corr, np.diag(cov), rtol=1e-8)


def test_residual_sigma2_is_unbiased_for_a_linear_smoother():
    A, _ = _system(side=10, lam=1.0)
    n = A.shape[0]
    S = np.linalg.inv(A.toarray())
    rng = np.random.default_rng(0)
    Y = rng.normal(scale=0.7, size=(n, 4000))  # pure noise: E RSS = sigma^2 tr((I - S)^2)
    rss = ((Y - S @ Y) ** 2).sum(0)
    R = np.eye(n) - S
    expected = 0.49 * np.trace(R @ R) / (n - np.trace(S))
    np.testing.assert_allclose(residual_sigma2(rss, n, np.trace(S)).mean(), expected, rtol=0.02)


def test_laplace_block_cov_equals_the_dense_inverse_on_the_active_set():
    from smoother._core.uncertainty import laplace_block_cov, proportion_se

    rng = np.random.default_rng(3)
    _, Q = _system(side=4, rho=0.9)
    n, K = Q.shape[0], 3
    X = rng.gamma(2.0, size=(12, K))
    H = np.stack([X.T @ np.diag(rng.uniform(0.5, 2.0, 12)) @ X for _ in range(n)])
    active = rng.random((n, K)) > 0.25
    lam = 0.7
    cov = laplace_block_cov(H, Q, lam, active)
    dense = np.zeros((n * K, n * K))
    for i in range(n):
        dense[i * K : (i + 1) * K, i * K : (i + 1) * K] = H[i]
    dense += 2 * lam * np.kron(Q.toarray(), np.eye(K))
    free = np.flatnonzero(active.ravel())
    inv = np.zeros_like(dense)
    inv[np.ix_(free, free)] = np.linalg.inv(dense[np.ix_(free, free)])
    for i in range(n):
        np.testing.assert_allclose(cov[i], inv[i * K : (i + 1) * K, i * K : (i + 1) * K], atol=1e-10)
    # delta method of the proportions against finite differences of p(z)
    coef = rng.gamma(2.0, size=(n, K))
    se = proportion_se(coef, cov)
    i = 5
    eps = 1e-6
    J = np.empty((K, K))
    for k in range(K):
        z = coef[i].copy()
        z[k] += eps
        J[:, k] = (z / z.sum() - coef[i] / coef[i].sum()) / eps
    np.testing.assert_allclose(se[i], np.sqrt(np.diag(J @ cov[i] @ J.T)), rtol=1e-4)


def test_gmrf_draws_have_the_prior_covariance():
    from smoother._core.uncertainty import sample_gmrf

    _, Q = _system(side=5, rho=0.9)
    X = sample_gmrf(Q, 40000, seed=0)
    cov = np.linalg.inv(Q.toarray())
    emp = X @ X.T / X.shape[1]
    assert np.abs(emp - cov).max() < 0.05 * np.abs(cov).max()
    np.testing.assert_allclose(np.diag(emp), np.diag(cov), rtol=0.05)


def test_probing_error_predicted_from_exact_columns_is_the_error_probing_makes():
    from smoother._core.uncertainty import _probe, _probing_error

    A, _ = _system(side=16, lam=3.0)
    inv = np.linalg.inv(A.toarray())
    true = np.diag(inv)
    idx = np.array([0, 17, 100, 255])
    for p in (1, 2, 4):
        colour = distance_colouring(A, p)
        d = _probe(SPDFactor(A), colour)
        np.testing.assert_allclose(
            _probing_error(inv[:, idx], idx, colour), np.abs(d[idx] - true[idx]) / true[idx], rtol=1e-8, atol=1e-14
        )
