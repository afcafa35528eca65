"""Selected inversion (nested-dissection LDL^T + Takahashi) against the dense inverse."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core.graph import fill_isolated, knn_graph
from smoother._core.linalg import NotPositiveDefiniteError
from smoother._core.precision import precision
from smoother._core.selinv import LDLFactor, SupernodalFactor, inv_diag_exact, nested_dissection


def _random_spd(n, density, rng):
    A = sp.random(n, n, density=density, random_state=np.random.RandomState(int(rng.integers(1 << 31))))
    A = A + A.T
    # diagonally dominant -> SPD
    return (A + sp.diags(np.asarray(abs(A).sum(axis=1)).ravel() + 0.1)).tocsr()


def _graphs(rng):
    xx, yy = np.meshgrid(np.arange(17.0), np.arange(13.0))
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    scatter = rng.uniform(size=(300, 2))
    W1, _ = knn_graph(grid, 4, symmetrize="union")
    W2, _ = knn_graph(scatter, 6, symmetrize="union")
    # two disconnected pieces
    W3 = fill_isolated(sp.block_diag([W2[:150, :150], W1]).tocsr())
    return [W1, W2, W3]


@pytest.mark.parametrize("prior,rho", [("icar", 0.9), ("car", 0.1), ("sar", 0.1), ("isar", 0.95), ("icar", 0.999)])
def test_inv_diag_matches_dense(prior, rho, rng):
    for W in _graphs(rng):
        Q = precision(W, prior, rho)
        dense = np.diag(np.linalg.inv(Q.toarray()))
        np.testing.assert_allclose(inv_diag_exact(Q), dense, rtol=1e-9)


def test_inv_diag_random_spd(rng):
    for n, dens in [(1, 1.0), (7, 0.5), (200, 0.02), (400, 0.01)]:
        A = _random_spd(n, dens, rng)
        np.testing.assert_allclose(inv_diag_exact(A), np.diag(np.linalg.inv(A.toarray())), rtol=1e-10)


def test_inv_entries_match_dense(rng):
    A = _random_spd(300, 0.02, rng)
    Ainv = np.linalg.inv(A.toarray())
    F = LDLFactor(A)
    src = rng.integers(0, 300, 40)
    tgt = rng.integers(0, 300, (40, 9))
    np.testing.assert_allclose(F.inv_entries(src, tgt), Ainv[tgt, src[:, None]], rtol=1e-9, atol=1e-14)
    # the factorization reproduces A: P A P^T = L D L^T
    n = A.shape[0]
    L = sp.csc_matrix((F.Lx, F.Li, F.Lp), shape=(n, n)) + sp.identity(n)
    P = A[F.perm][:, F.perm].toarray()
    np.testing.assert_allclose((L @ sp.diags(F.D) @ L.T).toarray(), P, atol=1e-10)


def test_nested_dissection_is_a_permutation_and_reduces_fill(rng):
    xx, yy = np.meshgrid(np.arange(40.0), np.arange(40.0))
    W, _ = knn_graph(np.column_stack([xx.ravel(), yy.ravel()]), 4)
    Q = precision(W, "icar", 0.9)
    perm = nested_dissection(Q)
    assert np.array_equal(np.sort(perm), np.arange(1600))
    # natural (banded) order of a 40 x 40 grid fills ~40 entries per column; dissection must beat it
    from smoother._core.selinv import _ldl_symbolic

    def fill(P):
        Ap = sp.triu(Q[P][:, P]).tocsc()
        Ap.sort_indices()
        return _ldl_symbolic(1600, Ap.indptr.astype(np.int64), Ap.indices.astype(np.int64))[1][-1]

    assert fill(perm) < 0.6 * fill(np.arange(1600))


def test_not_positive_definite_raises(rng):
    xx, yy = np.meshgrid(np.arange(8.0), np.arange(8.0))
    W, _ = knn_graph(np.column_stack([xx.ravel(), yy.ravel()]), 4)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        LDLFactor(sp.diags(np.asarray(W.sum(1)).ravel()) - W)  # graph Laplacian (icar, rho = 1)
    with pytest.raises(NotPositiveDefiniteError):
        inv_diag_exact(sp.diags([1.0, -1.0, 2.0]))


def test_standardize_precision_uses_exact_diagonal(rng):
    from smoother._core.precision import standardize_precision

    W, _ = knn_graph(rng.uniform(size=(120, 2)), 6)
    Q = precision(W, "icar", 0.9)
    Qs = standardize_precision(Q)
    np.testing.assert_allclose(np.diag(np.linalg.inv(Qs.toarray())), 1.0, rtol=1e-9)


@pytest.mark.parametrize("relax", [1, 64])
def test_supernodal_factor_matches_dense_and_the_scalar_recurrences(rng, relax):
    """Supernodal selected inversion (dense blocks) against the dense inverse and the scalar Takahashi path,
    with fundamental (``relax=1``) and amalgamated supernodes (explicit zeros)."""
    xx, yy = np.meshgrid(np.arange(45.0), np.arange(40.0))
    W, _ = knn_graph(np.column_stack([xx.ravel(), yy.ravel()]), 4)
    mats = [precision(W, "icar", 0.99), _random_spd(300, 0.02, rng)] + [precision(G, "icar", 0.9) for G in _graphs(rng)]
    for A in mats:
        F = SupernodalFactor(A, relax=relax)
        assert F.n_supernodes < A.shape[0]  # some columns were merged into dense blocks
        d = F.inv_diag()
        np.testing.assert_allclose(d, np.diag(np.linalg.inv(A.toarray())), rtol=1e-9)
        np.testing.assert_allclose(d, LDLFactor(A).inv_diag(), rtol=1e-10)
        with pytest.raises(RuntimeError, match="already"):
            F.inv_diag()  # the factor was overwritten by the inverse


def test_supernodal_factor_rejects_singular_and_indefinite(rng):
    xx, yy = np.meshgrid(np.arange(8.0), np.arange(8.0))
    W, _ = knn_graph(np.column_stack([xx.ravel(), yy.ravel()]), 4)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        SupernodalFactor(sp.diags(np.asarray(W.sum(1)).ravel()) - W)  # graph Laplacian (icar, rho = 1)
    with pytest.raises(NotPositiveDefiniteError):
        SupernodalFactor(sp.diags([1.0, -1.0, 2.0]))
    assert inv_diag_exact(sp.csr_matrix((0, 0))).shape == (0,)


def test_supernodal_solve_matches_dense(rng):
    A = precision(_graphs(rng)[2], "icar", 0.9)
    n = A.shape[0]
    F = SupernodalFactor(A)
    B = rng.normal(size=(n, 4))
    np.testing.assert_allclose(F.solve(B), np.linalg.solve(A.toarray(), B), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F.solve(B[:, 0]), np.linalg.solve(A.toarray(), B[:, 0]), rtol=1e-9, atol=1e-12)
    F.inv_diag()
    with pytest.raises(RuntimeError, match="overwritten"):
        F.solve(B)


def test_triangular_inverse_by_halves_matches_dense(rng):
    from smoother._core.selinv import _tri_inv

    for n in (1, 5, 48, 49, 150):
        L = np.tril(rng.normal(size=(n, n))) + np.diag(np.full(n, 3.0 + n**0.5))
        np.testing.assert_allclose(_tri_inv(L), np.linalg.inv(L), rtol=1e-10, atol=1e-14)


def test_ldl_inv_diag_above_the_supernodal_threshold_equals_the_scalar_recurrences(rng, monkeypatch):
    A = precision(_graphs(rng)[1], "icar", 0.9)
    scalar = LDLFactor(A).inv_diag()
    monkeypatch.setattr(LDLFactor, "supernodal_min", 10)
    F = LDLFactor(A)
    np.testing.assert_allclose(F.inv_diag(), scalar, rtol=1e-10)
    np.testing.assert_allclose(scalar, np.diag(np.linalg.inv(A.toarray())), rtol=1e-9)


def test_spd_factor_uses_the_supernodal_backend_from_its_threshold_and_solves_alike(rng, monkeypatch):
    from smoother._core import linalg

    A = precision(_graphs(rng)[2], "icar", 0.9) + 0.5 * sp.identity(_graphs(rng)[2].shape[0])
    n = A.shape[0]
    B = rng.normal(size=(n, 3))
    ref = np.linalg.solve(A.toarray(), B)
    small = linalg.SPDFactor(A)
    assert small.backend == "cholmod"
    monkeypatch.setattr(linalg, "SUPERNODAL_MIN_SPOTS", n)  # at the threshold: supernodal
    big = linalg.SPDFactor(A)
    assert big.backend == "supernodal"
    for F in (small, big, linalg.SPDFactor(A, backend="supernodal")):
        np.testing.assert_allclose(F.solve(B), ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(F.solve(B[:, 1]), ref[:, 1], rtol=1e-9, atol=1e-12)
        assert F.solve(np.zeros((n, 0))).shape == (n, 0)
    with pytest.raises(NotPositiveDefiniteError):
        linalg.SPDFactor(sp.diags([1.0, -1.0, 2.0]), backend="supernodal")
