"""Dask-backed blocks of the exact fits equal the in-memory solves (issue 12), on threads and on a LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from smoother._core.blockwise import cached_factor, clear_cache, gram, smooth_blocks, sparse_matmul  # noqa: E402
from smoother._core.graph import knn_graph  # noqa: E402
from smoother._core.precision import precision  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    side = 24
    xx, yy = np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    W, _ = knn_graph(coords, k=6)
    Q = sp.csr_matrix(precision(W, "icar", 0.99))
    Y = rng.negative_binomial(3, 0.5, size=(Q.shape[0], 23)).astype(np.float32)
    return Q, Y


@pytest.mark.parametrize("sparse_chunks", [False, True])
def test_smooth_blocks_equal_the_dense_solve(problem, sparse_chunks):
    Q, Y = problem
    n = Q.shape[0]
    A = (sp.identity(n) + 1.5 * Q).tocsr()
    src = sp.csr_matrix(Y) if sparse_chunks else Y
    Yd = da.from_array(src, chunks=(150, 23), asarray=False)
    m = Y.mean(0)
    X = smooth_blocks(Yd, A, token="t-" + dask.base.tokenize(A.data, A.indices), genes_per_block=5, means=m)
    assert isinstance(X, da.Array) and X.shape == Y.shape and X.dtype == np.float32
    assert X.chunks[0] == (n,) and max(X.chunks[1]) <= 5  # gene blocks holding every spot
    ref = np.linalg.solve(A.toarray(), Y - m) + m
    np.testing.assert_allclose(X.compute(), ref, atol=1e-5)


def test_csr_chunks_are_cut_into_gene_blocks_from_csc_with_the_same_values(problem):
    from smoother._core.blockwise import column_blocks, default_genes_per_block

    _, Y = problem
    Yd = da.from_array(sp.csr_matrix(Y), chunks=(150, 23), asarray=False)
    Yc = column_blocks(Yd, 5)
    assert Yc.chunks[0] == (Y.shape[0],) and Yc.chunks[1] == (5, 5, 5, 5, 3)
    parts = dask.compute(*[Yc.blocks[0, j] for j in range(5)], scheduler="sync")
    assert all(sp.issparse(b) and b.format == "csc" for b in parts)  # cut from CSC chunks: O(kept entries) per cut
    np.testing.assert_array_equal(sp.hstack(parts).toarray(), Y)
    assert column_blocks(Yc, 5) is Yc  # already gene blocks
    # factor blocks: as many genes as 256 MiB of float64 hold, between 16 and 64
    assert default_genes_per_block(10**5, "cholesky") == 64
    assert default_genes_per_block(10**6, "cholesky") == 33
    assert default_genes_per_block(10**7, "cholesky") == 16


@pytest.mark.parametrize("sparse_chunks", [False, True])
def test_blocks_solved_in_the_supernodal_order_equal_the_dense_solve(problem, sparse_chunks, monkeypatch):
    from smoother._core import linalg

    monkeypatch.setattr(linalg, "SUPERNODAL_MIN_SPOTS", 10)  # the supernodal factor for this small problem
    Q, Y = problem
    n = Q.shape[0]
    A = (sp.identity(n) + 0.8 * Q).tocsr()
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, n)
    m = Y.mean(0)
    src = sp.csr_matrix(Y) if sparse_chunks else Y
    Yd = da.from_array(src, chunks=(150, 23), asarray=False)
    clear_cache()
    X = smooth_blocks(Yd, A, token=f"sn-{sparse_chunks}", genes_per_block=5, means=m, diag_scale=scale)
    out = X.compute(scheduler="threads")
    assert cached_factor(f"sn-{sparse_chunks}", A).backend == "supernodal" and out.dtype == np.float32
    ref = np.linalg.solve(A.toarray(), scale[:, None] * (Y - m)) + m
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    clear_cache()


def test_every_input_chunk_is_read_once_for_all_gene_blocks(problem, monkeypatch):
    from smoother._core import blockwise, conditional

    Q, Y = problem
    n = Q.shape[0]
    A = (sp.identity(n) + Q).tocsr()
    reads = []

    def read(b):
        reads.append(1)
        return b

    Yd = da.from_array(sp.csr_matrix(Y), chunks=(150, 23), asarray=False).map_blocks(
        read, dtype=Y.dtype, meta=sp.csr_matrix((0, 0), dtype=Y.dtype)
    )
    n_chunks = Yd.numblocks[0]
    X = smooth_blocks(Yd, A, token="once", genes_per_block=4)  # 6 gene blocks
    ref = X.compute(scheduler="threads")
    assert len(reads) == n_chunks  # not once per gene block
    reads.clear()
    rows = np.arange(n)
    F = conditional.lazy_fill(
        Yd,
        A,
        sp.identity(n, format="csr"),
        sys_rows=rows,
        copy_rows=None,
        n_out=n,
        center=False,
        dtype=np.float32,
        genes_per_block=4,
    )
    np.testing.assert_allclose(F.compute(scheduler="threads"), ref, rtol=1e-5, atol=1e-5)
    assert len(reads) == n_chunks
    blockwise.clear_cache()


def test_products_and_statistics_read_every_input_chunk_once(problem):
    from smoother._core.blockwise import spatial_stats

    Q, Y = problem
    reads = []

    def read(b):
        reads.append(1)
        return b

    Yd = da.from_array(Y, chunks=(150, 23)).map_blocks(read, dtype=Y.dtype, meta=np.empty((0, 0), dtype=Y.dtype))
    n_chunks = Yd.numblocks[0]
    G = gram(Yd, Q, 0.3)
    assert len(reads) == n_chunks  # each chunk feeds its own block and its neighbours' products: read once
    Xc = Y.astype(np.float64)
    np.testing.assert_allclose(G, Xc.T @ (Xc - 0.3 * (Q @ Xc)), rtol=1e-6, atol=1e-6)
    reads.clear()
    st = spatial_stats(Yd, Q)
    assert len(reads) == n_chunks
    np.testing.assert_allclose(st["xtqx"], Xc.T @ (Q @ Xc), rtol=1e-8, atol=1e-6)


def test_factor_is_built_once_per_process_and_reused(problem, monkeypatch):
    from smoother._core import linalg

    Q, Y = problem
    A = (sp.identity(Q.shape[0]) + Q).tocsr()
    clear_cache()
    calls = []
    real = linalg.SPDFactor.__init__

    def counting(self, *a, **k):
        calls.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(linalg.SPDFactor, "__init__", counting)
    X = smooth_blocks(da.from_array(Y, chunks=(Y.shape[0], 23)), A, token="reuse", genes_per_block=3)
    X.compute(scheduler="threads")
    assert len(calls) == 1  # 8 gene blocks, one factorization
    assert cached_factor("reuse", A) is cached_factor("reuse", A)
    clear_cache()


def test_sparse_matmul_and_gram_equal_dense(problem):
    Q, Y = problem
    Xd = da.from_array(Y, chunks=(100, 23))
    np.testing.assert_allclose(sparse_matmul(Q, Xd).compute(), Q @ Y.astype(np.float64), atol=1e-10)
    m = Y.mean(0).astype(np.float64)
    Xc = Y.astype(np.float64) - m
    G = gram(Xd, Q, 0.3, means=m)
    np.testing.assert_allclose(G, Xc.T @ (Xc - 0.3 * (Q @ Xc)), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_local_cluster_gives_the_in_memory_result(problem):
    distributed = pytest.importorskip("distributed")
    Q, Y = problem
    A = (sp.identity(Q.shape[0]) + 0.7 * Q).tocsr()
    ref = np.linalg.solve(A.toarray(), Y)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        X = smooth_blocks(da.from_array(Y, chunks=(150, 23)), A, token="cluster", genes_per_block=4)
        out = X.compute()  # the active distributed client runs it
        assert client.run(lambda: 1)  # two live worker processes
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["cg", "chebyshev"])
def test_iterative_blocks_equal_the_dense_solve_and_build_one_solver(problem, solver):
    from smoother._core.blockwise import solver_info

    Q, Y = problem
    n = Q.shape[0]
    A = (sp.identity(n) + 1.5 * Q).tocsr()
    m = Y.mean(0)
    clear_cache()
    Yd = da.from_array(sp.csr_matrix(Y), chunks=(150, 23), asarray=False)
    X = smooth_blocks(Yd, A, token="it", genes_per_block=4, means=m, solver=solver, tol=1e-9, dtype=np.float64)
    out = X.compute(scheduler="threads")
    ref = np.linalg.solve(A.toarray(), Y - m) + m
    np.testing.assert_allclose(out, ref, rtol=1e-7, atol=1e-7)
    (info,) = solver_info("it")  # one solver for the 6 gene blocks, every gene solved to tol
    assert info["method"] == solver and info["solves"] == 6 and info["columns"] == 23
    assert 0 < info["residual_max"] <= 1e-9
    clear_cache()


@pytest.mark.slow
def test_solver_choice_on_a_cluster_uses_the_workers_memory_limit(problem, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from smoother._core import blockwise
    from smoother._core.linalg import factor_nnz_estimate
    from smoother.tl import _smooth

    Q, _ = problem

    class Op:
        pass

    op = Op()
    op.Q = Q
    need = 18 * factor_nnz_estimate(sp.identity(Q.shape[0]) + Q)
    assert blockwise.worker_memory() is None  # no client
    assert _smooth._resolve_solver("auto", op, 1.0, False, lazy=True) == "cholesky"  # this process: plenty
    limit = int(need)  # the factor takes the whole limit: more than half of it
    with (
        distributed.LocalCluster(n_workers=1, processes=False, memory_limit=limit, dashboard_address=None) as lc,
        distributed.Client(lc),
    ):
        assert blockwise.worker_memory() == limit
        assert _smooth._resolve_solver("auto", op, 1.0, False, lazy=True) == "chebyshev"
        assert _smooth._resolve_solver("auto", op, 1.0, False, lazy=False) == "cholesky"  # in memory: this process
