"""Core graphs and precision matrices against dense formulas on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core.graph import knn_graph, radius_graph
from smoother._core.linalg import NotPositiveDefiniteError, SPDFactor, inv_diag
from smoother._core.precision import precision, rho_upper_bound, standardize_precision


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
    with pytest.warns(UserWarning, match="negative weight"):
        Q = precision(W, "car", 0.2)
    np.testing.assert_allclose(Q.toarray(), precision(small_W, "car", 0.2).toarray())


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


# --------------------------------------------------------------------------------------------------------------
# the not-positive-definite message states the admissible rho of THAT graph (issue 11)
# --------------------------------------------------------------------------------------------------------------
def _directed_knn(coords, k):
    """squidpy's generic kNN graph: row i lists the k nearest spots of i (not symmetric)."""
    A, _ = _brute_knn(coords, k)
    return sp.csr_matrix(A)


def _min_eig(W, prior, rho):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Q = precision(W, prior, rho).toarray()
    return np.linalg.eigvalsh(0.5 * (Q + Q.T)).min()


def _numbers(msg):
    import re

    upper = float(re.search(r"0 <= rho < ([0-9]+\.?[0-9]*)", msg).group(1))
    example = float(re.search(r"e\.g\. rho=([0-9]+\.?[0-9]*)", msg).group(1))
    return upper, example


def test_not_pd_message_is_true_on_a_directed_knn_graph(rng):
    """The old hint said "positive definite for rho < 1; e.g. rho=0.95" here, and 0.95 failed too."""
    from smoother._core.precision import not_pd_message

    W = _directed_knn(rng.uniform(0, 10, size=(60, 2)), 6)
    assert abs(W - W.T).sum() > 0
    for prior, rho in (("icar", 0.99), ("car", 0.5)):
        assert _min_eig(W, prior, rho) < 0  # really not positive definite
        msg = not_pd_message(prior, rho, W)
        upper, example = _numbers(msg)
        assert example < upper <= rho
        assert _min_eig(W, prior, example) > 0  # the suggested rho works
        assert _min_eig(W, prior, 0.999 * upper) > 0  # the stated range is right (and tight)
        assert _min_eig(W, prior, upper * 1.001 + 1e-4) < 0
        assert "max(W, W.T)" in msg
    # after symmetrizing (what the sm.tl functions do), 'icar' is proper for every rho < 1, as the message says
    assert _min_eig(W.maximum(W.T), "icar", 0.999) > 0


def test_not_pd_message_names_isolated_spots(rng):
    from smoother._core.precision import isolated_spots, not_pd_message

    W = _directed_knn(rng.uniform(0, 10, size=(30, 2)), 3).tolil()
    W[[4, 17], :] = 0
    W[:, [4, 17]] = 0
    W = W.tocsr()
    np.testing.assert_array_equal(isolated_spots(W), [4, 17])
    Ws = W.maximum(W.T)
    for rho in (0.0, 0.5, 0.99):
        assert _min_eig(Ws, "icar", rho) <= 1e-12  # improper at every rho ...
    msg = not_pd_message("icar", 0.5, Ws, names=[f"spot{i}" for i in range(30)])
    assert "2 spot(s) have no neighbour" in msg and "spot4, spot17" in msg and "at any rho" in msg
    assert _min_eig(Ws, "isar", 0.99) > 0  # ... and the suggested 'isar' is proper with isolated spots


def test_not_pd_message_only_outgoing_edges_missing():
    """A directed graph where a spot lists no neighbour but is listed by others: symmetrizing fixes it."""
    from smoother._core.precision import not_pd_message

    W = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 1], [0, 0, 0]], dtype=float))
    msg = not_pd_message("icar", 0.5, W)
    assert "no outgoing edge" in msg and "max(W, W.T)" in msg
    assert _min_eig(W.maximum(W.T), "icar", 0.99) > 0


def test_rho_upper_bound_exact_for_directed_icar(rng):
    W = _directed_knn(rng.uniform(0, 10, size=(40, 2)), 5)
    d = np.asarray(W.sum(1)).ravel()
    S = 0.5 * (W + W.T).toarray() / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(rho_upper_bound(W, "icar"), 1 / np.linalg.eigvalsh(S).max(), rtol=1e-10)
    np.testing.assert_allclose(rho_upper_bound(W.maximum(W.T), "icar"), 1.0)
    Wi = W.tolil()
    Wi[3, :] = 0
    assert rho_upper_bound(Wi.tocsr(), "icar") == 0.0  # a zero row: no rho works
    # sar/isar/sma: a guaranteed bound (I - rho W non-singular below it)
    b = rho_upper_bound(W, "sar")
    assert np.abs(np.linalg.eigvals(W.toarray())).max() * b <= 1 + 1e-12
