"""Core graphs and precision matrices against dense formulas on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core import knn_graph, precision, radius_graph, rho_upper_bound, standardize_precision
from smoother._core.linalg import NotPositiveDefiniteError, SPDFactor, inv_diag


def _brute_knn(coords, k):
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    A = np.zeros_like(d)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    A[np.arange(len(d))[:, None], order] = 1
    return A, d


def test_knn_mutual_union_none_match_brute_force(rng):
    coords = rng.uniform(size=(40, 2))
    A, _ = _brute_knn(coords, 4)
    W, D = knn_graph(coords, 4, symmetrize="none")
    np.testing.assert_array_equal(W.toarray(), A)
    Wm, _ = knn_graph(coords, 4, symmetrize="mutual")
    M = A * A.T
    iso = M.sum(1) == 0
    M[iso, iso] = 1
    np.testing.assert_array_equal(Wm.toarray(), M)
    Wu, Du = knn_graph(coords, 4, symmetrize="union")
    np.testing.assert_array_equal(Wu.toarray(), np.maximum(A, A.T))
    dd = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.testing.assert_allclose(Du.toarray(), dd * np.maximum(A, A.T))


def test_knn_isolated_spot_gets_self_edge_and_row_scale():
    coords = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [50, 50]], dtype=float)
    W, _ = knn_graph(coords, 1, symmetrize="mutual")
    assert W[4, 4] == 1.0
    assert (np.asarray(W.sum(1)).ravel() > 0).all()
    Wr, _ = knn_graph(coords, 2, symmetrize="none", row_scale=True)
    np.testing.assert_allclose(np.asarray(Wr.sum(1)).ravel(), 1.0)


def test_radius_graph_gaussian_weights(rng):
    coords = rng.uniform(size=(30, 2))
    W, D = radius_graph(coords, 0.3, bandwidth=0.1)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    expected = np.where((d <= 0.3) & (d > 0), np.exp(-(d**2) / (2 * 0.01)), 0.0)
    iso = expected.sum(1) == 0
    expected[iso, iso] = 1.0
    np.testing.assert_allclose(W.toarray(), expected, atol=1e-12)


@pytest.mark.parametrize("bad", [np.array([[0, np.nan], [1, 1]]), np.zeros((4, 4)), np.zeros(5)])
def test_bad_coords_raise(bad):
    with pytest.raises(ValueError):
        knn_graph(bad, 1)


def test_too_few_spots_for_k():
    with pytest.raises(ValueError, match="k \\+ 1"):
        knn_graph(np.zeros((3, 2)) + np.arange(3)[:, None], 5)


@pytest.fixture
def small_W():
    # hand-built weighted graph on 5 spots: a path 0-1-2-3 plus 4 joined to 1 and 3
    W = np.zeros((5, 5))
    for i, j, w in [(0, 1, 1.0), (1, 2, 0.5), (2, 3, 1.0), (1, 4, 2.0), (3, 4, 1.0)]:
        W[i, j] = W[j, i] = w
    return W


@pytest.mark.parametrize("prior", ["sma", "sar", "isar", "car", "icar"])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
def test_precision_matches_dense_formula(small_W, prior, rho):
    W = small_W
    eye = np.eye(5)
    Wr = W / W.sum(1, keepdims=True)
    expected = {
        "sma": np.linalg.inv((eye + rho * W) @ (eye + rho * W).T),
        "sar": (eye - rho * W).T @ (eye - rho * W),
        "isar": (eye - rho * Wr).T @ (eye - rho * Wr),
        "car": eye - rho * W,
        "icar": np.diag(W.sum(1)) - rho * W,
    }[prior]
    Q = precision(sp.csr_matrix(W), prior, rho)
    Qd = Q if isinstance(Q, np.ndarray) else Q.toarray()
    np.testing.assert_allclose(Qd, expected, atol=1e-12)


def test_negative_weights_are_clipped(small_W):
    W = small_W.copy()
    W[0, 2] = W[2, 0] = -3.0
    np.testing.assert_allclose(precision(W, "car", 0.2).toarray(), precision(small_W, "car", 0.2).toarray())


@pytest.mark.parametrize("prior", ["sar", "car", "icar", "sma"])
def test_standardize_gives_unit_implied_variance(small_W, prior):
    Q = precision(small_W, prior, 0.2, standardize=True)
    Qd = Q if isinstance(Q, np.ndarray) else Q.toarray()
    np.testing.assert_allclose(np.diag(np.linalg.inv(Qd)), 1.0, rtol=1e-10)


def test_standardize_singular_falls_back_to_unit_diagonal(small_W):
    with pytest.warns(UserWarning, match="singular"):
        Q = precision(small_W, "icar", 1.0, standardize=True)
    np.testing.assert_allclose(Q.diagonal(), 1.0, rtol=1e-6)


def test_unknown_prior_and_bad_rho(small_W):
    with pytest.raises(ValueError, match="Unknown prior"):
        precision(small_W, "gp", 0.5)
    with pytest.raises(ValueError, match=r"`rho` in \[0, 1\]"):
        precision(small_W, "car", 1.5)
    with pytest.raises(NotImplementedError, match="Unknown prior"):  # what smoother-omics scripts catch
        precision(small_W, "gp", 0.5)
    with pytest.raises(TypeError):
        precision(small_W, "car", "high")


def test_rho_upper_bound_car(small_W):
    ub = rho_upper_bound(small_W, "car")
    np.testing.assert_allclose(ub, 1 / np.linalg.eigvalsh(small_W).max())
    assert rho_upper_bound(small_W, "icar") == pytest.approx(1.0)


def test_factor_solves_and_detects_non_pd(small_W):
    Q = precision(small_W, "icar", 0.9)
    A = sp.identity(5) + Q
    F = SPDFactor(A)
    B = np.arange(10.0).reshape(5, 2)
    np.testing.assert_allclose(F.solve(B), np.linalg.solve(A.toarray(), B))
    np.testing.assert_allclose(inv_diag(Q), np.diag(np.linalg.inv(Q.toarray())))
    with pytest.raises(NotPositiveDefiniteError):
        SPDFactor(precision(small_W, "car", 0.9))  # 0.9 > 1 / lambda_max(W)
    lu_f = SPDFactor(A, backend="superlu")
    np.testing.assert_allclose(lu_f.solve(B), np.linalg.solve(A.toarray(), B))


def test_standardize_precision_dense_and_sparse_agree(small_W):
    Q = precision(small_W, "car", 0.2)
    np.testing.assert_allclose(standardize_precision(Q).toarray(), standardize_precision(Q.toarray()), atol=1e-12)
