"""The sparse path of the spatial PCA gram matrix X^T (I - lambda Q) X equals the dense path and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core import spca
from smoother._core.graph import knn_graph
from smoother._core.precision import precision
from smoother._core.spca import spatial_gram
from smoother._core.spca import spatial_pca as core_spca


@pytest.fixture(scope="module")
def sparse_problem():
    rng = np.random.default_rng(3)
    side = 13
    xx, yy = np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    n, g = coords.shape[0], 30
    X = sp.random(n, g, density=0.12, random_state=4, format="csr", dtype=np.float64)
    X.data = np.log1p(rng.poisson(3.0, X.nnz) + 1.0)
    X = X.tolil()
    X[5, :] = 0.0  # an empty row and an empty column must not upset the kernel
    X[:, 7] = 0.0
    X = X.tocsr()
    X.eliminate_zeros()
    W, _ = knn_graph(coords, k=6)
    Q = precision(W, "icar", 0.9, standardize=False)
    return X, sp.csr_matrix(Q)


def _brute(X, Q, lam, zero_center):
    Xd = X.toarray()
    Xc = Xd - Xd.mean(axis=0) if zero_center else Xd
    return Xc.T @ (np.eye(X.shape[0]) - lam * Q.toarray()) @ Xc


@pytest.mark.parametrize("zero_center", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.05, 0.4])
def test_sparse_gram_equals_dense_and_brute_force(sparse_problem, zero_center, lam):
    X, Q = sparse_problem
    ref = _brute(X, Q, lam, zero_center)
    C_sparse, mean_s = spatial_gram(X, Q, lam, zero_center=zero_center, path="sparse")
    C_dense, mean_d = spatial_gram(X, Q, lam, zero_center=zero_center, path="dense")
    scale = np.abs(ref).max()
    np.testing.assert_allclose(C_sparse, ref, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(C_sparse, C_dense, rtol=0, atol=1e-11 * scale)
    np.testing.assert_array_equal(C_sparse, C_sparse.T)
    if zero_center:
        np.testing.assert_allclose(mean_s, X.toarray().mean(axis=0), rtol=1e-14, atol=1e-15)
        np.testing.assert_array_equal(mean_s, mean_d)
    else:
        assert mean_s is None and mean_d is None


def test_sparse_gram_float32_unsorted_duplicates(sparse_problem):
    X, Q = sparse_problem
    coo = X.tocoo()
    # split every value into two duplicate entries, shuffle the order, store as float32
    perm = np.random.default_rng(0).permutation(2 * coo.nnz)
    rows = np.concatenate([coo.row, coo.row])[perm]
    cols = np.concatenate([coo.col, coo.col])[perm]
    vals = np.concatenate([0.25 * coo.data, 0.75 * coo.data])[perm].astype(np.float32)
    X32 = sp.csr_matrix((vals, (rows, cols)), shape=X.shape)
    X32.has_sorted_indices = False
    ref = _brute(sp.csr_matrix(X32, dtype=np.float64), Q, 0.1, True)
    C, _ = spatial_gram(X32, Q, 0.1, zero_center=True, path="sparse")
    np.testing.assert_allclose(
        C, ref, rtol=0, atol=1e-7 * np.abs(ref).max()
    )  # float32 input: duplicates may be summed in float32


def test_sparse_gram_nonsymmetric_Q_is_symmetrised(sparse_problem):
    X, Q = sparse_problem
    A = sp.random(*Q.shape, density=0.02, random_state=1, format="csr")
    Qn = (Q + A).tocsr()  # not symmetric: both paths use sym(I - lambda Q)
    ref = _brute(X, (0.5 * (Qn + Qn.T)).tocsr(), 0.2, True)
    for path in ("sparse", "dense"):
        C, _ = spatial_gram(X, Qn, 0.2, zero_center=True, path=path)
        np.testing.assert_allclose(C, ref, rtol=0, atol=1e-11 * np.abs(ref).max())


def test_auto_path_choice(sparse_problem, monkeypatch):
    X, Q = sparse_problem
    n, g = X.shape
    M = spca._sym_operator(Q, 0.1, n)
    assert spca._choose_gram_path(X, Q, 0.1, "auto")[0] == "sparse"  # 12% dense: far fewer scatter-adds
    assert spca._choose_gram_path(X.toarray(), Q, 0.1, "auto")[0] == "dense"
    assert spca._choose_gram_path(X, Q, 0.1, "dense")[0] == "dense"
    # the choice follows the cost model: make scattering look expensive and 'auto' goes dense
    ratio = n * g * g / spca._sparse_cost(X, M)
    monkeypatch.setattr(spca, "SPARSE_COST_FACTOR", 2 * ratio)
    assert spca._choose_gram_path(X, Q, 0.1, "auto")[0] == "dense"
    assert spca._choose_gram_path(X, Q, 0.1, "sparse")[0] == "sparse"


def test_sparse_cost_counts_scatter_adds(sparse_problem):
    X, Q = sparse_problem
    M = spca._sym_operator(Q, 0.1, X.shape[0])
    k = np.diff(X.indptr)
    U = sp.triu(M).tocoo()
    assert spca._sparse_cost(X, M) == float(np.sum(k[U.row] * k[U.col]))


def test_bad_path_raises(sparse_problem):
    X, Q = sparse_problem
    with pytest.raises(ValueError, match="path"):
        spatial_gram(X, Q, 0.1, path="fast")
    with pytest.raises(ValueError, match="sparse X"):
        spatial_gram(X.toarray(), Q, 0.1, path="sparse")


@pytest.mark.parametrize("zero_center", [False, True])
def test_spatial_pca_sparse_input_equals_dense_input(sparse_problem, zero_center):
    X, Q = sparse_problem
    rs = core_spca(X, Q, 5, 0.1, zero_center=zero_center)
    rd = core_spca(X.toarray(), Q, 5, 0.1, zero_center=zero_center)
    np.testing.assert_allclose(rs.objective, rd.objective, rtol=1e-10)
    np.testing.assert_allclose(rs.loadings, rd.loadings, atol=1e-8)
    np.testing.assert_allclose(rs.scores, rd.scores, atol=1e-8)


@pytest.mark.parametrize("block_bytes", [1, 8 * 30 * 11, 2**20])  # blocks of 8 and 11 features (ragged), one
def test_sparse_gram_tiling_and_unsorted_rows(sparse_problem, monkeypatch, block_bytes):
    X, Q = sparse_problem
    monkeypatch.setattr(spca, "SPARSE_BLOCK_BYTES", block_bytes)
    # the same matrix with every row's column indices reversed (unsorted CSR)
    indices, data = X.indices.copy(), X.data.copy()
    for i in range(X.shape[0]):
        s = slice(X.indptr[i], X.indptr[i + 1])
        indices[s], data[s] = indices[s][::-1], data[s][::-1]
    Xu = sp.csr_matrix((data, indices, X.indptr.copy()), shape=X.shape)
    Xu.has_sorted_indices = False
    ref = _brute(X, Q, 0.2, False)
    for M in (X, Xu):
        C, _ = spatial_gram(M, Q, 0.2, zero_center=False, path="sparse")
        np.testing.assert_allclose(C, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_array_equal(Xu.indices, indices)  # the caller's matrix is not re-sorted in place
