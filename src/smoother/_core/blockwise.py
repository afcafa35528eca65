r"""Dask-backed (out-of-core) versions of the exact fits: blocks in, blocks out, on any Dask scheduler.

Nothing here schedules, forks or writes files of its own: every function returns a lazy :mod:`dask.array` built
from :func:`dask.array.map_blocks` / :func:`dask.array.blockwise` tasks, and whatever scheduler is active runs them
(the threaded scheduler by default, a :class:`distributed.Client` when one exists, dask-jobqueue or Kubernetes
clusters alike).

- **Smoothing** (:func:`smooth_blocks`): the matrix :math:`A = I + \lambda Q` travels once as a single graph key
  (each worker fetches it once); neither a Cholesky factor nor an AMG hierarchy is shipped: each worker *process*
  builds its solver (:func:`~smoother._core.linalg.spd_solver`: the Cholesky factor, or preconditioned conjugate
  gradients when the factor does not fit) the first time it needs it and keeps it in a per-process cache keyed by
  the token of ``A`` and the method (:func:`cached_solver`); every gene block then costs two triangular solves or
  one block CG solve. Gene blocks hold all spots (rows unchunked), ``genes_per_block`` columns each.
- **Sparse-times-blocked products** (:func:`sparse_matmul`): :math:`Q X` for a row-chunked ``X`` with one task
  per non-zero block of ``Q`` (few when spots are stored in spatial order), summed per row block.
- **Gram matrices** (:func:`gram`): :math:`X^T (I - \lambda Q) X` reduced over spot blocks into a small
  ``genes x genes`` matrix (spatial PCA).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import scipy.sparse as sp

_FACTORS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_MAX_CACHED = 4
#: Fewest genes per block for the Cholesky solves (two triangular solves read the factor once per block).
CHOLESKY_GENES_PER_BLOCK = 16
#: Bytes of one ``n x genes`` float64 block for the Cholesky solves: more genes per block read the factor fewer
#: times and make the dense products of the supernodal solve larger (at 659,344 spots, 64 genes solve in 0.021 s
#: per gene against 0.028 s for 16); 256 MiB gives 50 genes at 659k spots, 33 at 10^6, at most 64.
CHOLESKY_BLOCK_BYTES = 2**28
#: Bytes of one ``n x genes`` float64 block for conjugate gradients, which holds ~5 such blocks per task (right-hand
#: side, solution, residual, direction, product): 512 MiB gives 6 genes at 10^7 spots, 16 below 4.2 million.
CG_BLOCK_BYTES = 2**29


def is_dask(x: Any) -> bool:
    """Whether ``x`` is a dask array (without importing dask when it is not loaded)."""
    import sys

    if "dask" not in sys.modules:
        return False
    import dask.array as da

    return isinstance(x, da.Array)


def worker_memory() -> int | None:
    """The smallest memory limit (bytes) among the workers of the active :class:`distributed.Client`, ``None``
    without a client (or when no worker states a limit).

    Solvers are built on the workers (:func:`cached_solver`), so whether a Cholesky factor fits is a question
    about a worker's memory, not the client's.
    """
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import get_client

    try:
        client = get_client()
    except ValueError:  # no client
        return None
    workers = client.scheduler_info().get("workers", {})
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    limits = [m for m in limits if m > 0]
    return min(limits) if limits else None


def cached_solver(token: str, A: sp.spmatrix, solver: str = "cholesky", tol: float | None = None):
    """The solver of ``A`` (:func:`~smoother._core.linalg.spd_solver`: ``'cholesky'``, ``'cg'``, ...), built once per
    process and kept under ``(token, solver, tol)``."""
    from .linalg import spd_solver

    key = (token, solver, tol)
    with _LOCK:
        fac = _FACTORS.get(key)
        if fac is None:
            fac = spd_solver(A, solver, tol=tol)
            if len(_FACTORS) >= _MAX_CACHED:
                _FACTORS.pop(next(iter(_FACTORS)))
            _FACTORS[key] = fac
    return fac


def cached_factor(token: str, A: sp.spmatrix):
    """The :class:`~smoother._core.linalg.SPDFactor` of ``A``, built once per process and kept under ``token``."""
    return cached_solver(token, A, "cholesky")


def solver_info(token: str) -> list[dict]:
    """The ``info`` of every solver this process has cached for ``token`` (for conjugate gradients: iterations
    and the largest achieved relative residual of the blocks solved here so far)."""
    with _LOCK:
        return [fac.info for key, fac in _FACTORS.items() if key[0] == token]


def clear_cache() -> None:
    """Drop the cached factors of this process."""
    with _LOCK:
        _FACTORS.clear()


def _dense(block) -> np.ndarray:
    if sp.issparse(block):
        return block.toarray()
    if hasattr(block, "todense") and not isinstance(block, np.ndarray):  # pydata sparse
        return np.asarray(block.todense())
    return np.asarray(block)


def _solve_block(Yb, A, token: str, shift, dtype, diag_scale, solver="cholesky", tol=None):
    fac = cached_solver(token, A, solver, tol)
    snf = getattr(fac, "supernodal", None)
    if snf is not None:
        return _solve_block_supernodal(Yb, snf, shift, dtype, diag_scale)
    # a float64 copy we own (shifted and scaled in place), made once
    # row-major: the solvers gather and scatter whole rows (a CSC chunk would give column-major by default)
    if sp.issparse(Yb):
        Y = Yb.astype(np.float64).toarray(order="C")
    else:
        Y = np.array(_dense(Yb), dtype=np.float64, order="C")
    if shift is not None:
        Y -= shift[None, :]
    if diag_scale is not None:
        Y *= diag_scale[:, None]
    X = fac.solve(Y)
    del Y
    if shift is not None:
        X += shift[None, :]
    return X.astype(dtype, copy=False)


def _solve_block_supernodal(Yb, snf, shift, dtype, diag_scale) -> np.ndarray:
    """:func:`_solve_block` with the supernodal factor, in its order throughout: a sparse block's rows are renumbered
    (``O(nnz)``) instead of gathering the dense block, and the result goes back to spot order, with the shift added
    and cast to ``dtype``, in one fused pass."""
    n = snf.n
    if sp.issparse(Yb):
        Ys = sp.csc_matrix(Yb, dtype=np.float64, copy=True)
        Ys.indices = snf.iperm[Ys.indices].astype(Ys.indices.dtype, copy=False)  # row r -> its place in the order
        Ys.has_sorted_indices = False
        Y = Ys.toarray(order="C")
    else:
        Y = np.take(np.asarray(_dense(Yb), dtype=np.float64).reshape(n, -1), snf.perm, axis=0)
    k = Y.shape[1]
    shift = np.zeros(k) if shift is None else np.asarray(shift, dtype=np.float64)
    if shift.any():
        Y -= shift[None, :]
    if diag_scale is not None:
        Y *= np.asarray(diag_scale, dtype=np.float64)[snf.perm][:, None]
    snf.solve_permuted(Y)
    out = np.empty((n, k), dtype=np.dtype(dtype))
    if n and k:
        from .selinv import unpermute_rows

        unpermute_rows(Y, snf.iperm, shift, out)
    return out


def default_genes_per_block(n: int, solver: str) -> int:
    """Genes per block: for the factor as many as fit :data:`CHOLESKY_BLOCK_BYTES` (16 to 64); for CG as many as fit
    :data:`CG_BLOCK_BYTES` of float64 (1 to 16: 6 at 10^7 spots), for the Chebyshev iteration the same memory
    (9 at 10^7 spots)."""
    if solver in ("cg", "chebyshev"):
        # CG holds ~5 n x genes float64 blocks per task, the Chebyshev iteration ~3.5 (two iterates and the
        # right-hand side, plus the result): the same memory gives it more genes per block (A read fewer times)
        arrays = 5.0 if solver == "cg" else 3.5
        return int(max(1, min(16, 5.0 * CG_BLOCK_BYTES // (arrays * 8 * max(n, 1)))))
    return int(max(CHOLESKY_GENES_PER_BLOCK, min(64, CHOLESKY_BLOCK_BYTES // (8 * max(n, 1)))))


def _to_csc(block):
    return block.tocsc() if sp.issparse(block) else block


def column_blocks(Y, genes_per_block: int):
    """``Y`` rechunked to blocks of all rows x ``genes_per_block`` columns (a no-op when it already is).

    Chunks of scipy CSR matrices (as anndata's lazy readers give them) are turned into CSC first, once per chunk:
    cutting a column block out of a CSR chunk scans every stored entry of the chunk, so cutting ``G / g`` blocks
    would cost ``O(nnz * G / g)`` (at 659k bins x 5,000 genes: 313 scans of every chunk); out of a CSC chunk each
    cut costs only the entries it keeps.
    """
    n, g = Y.shape
    want = (n, max(1, min(genes_per_block, g)))
    if Y.chunks[0] == (n,) and all(c <= want[1] for c in Y.chunks[1]):
        return Y
    if sp.issparse(getattr(Y, "_meta", None)) and max(Y.chunks[1]) > want[1]:
        meta = sp.csc_matrix((0, 0), dtype=Y.dtype)
        Y = Y.map_blocks(_to_csc, dtype=Y.dtype, meta=meta)
    return Y.rechunk(want)


def smooth_blocks(
    Y,
    A: sp.spmatrix,
    *,
    token: str,
    genes_per_block: int | None = None,
    means: np.ndarray | None = None,
    diag_scale: np.ndarray | None = None,
    dtype=np.float32,
    solver: str = "cholesky",
    tol: float | None = None,
):
    r"""Lazy :math:`\hat X = A^{-1} (D (Y - 1 m^T)) + 1 m^T` for a dask array ``Y`` (``n x G``).

    Parameters
    ----------
    Y
        Dask array, dense or scipy-sparse chunks; rechunked to gene blocks holding all spots.
    A
        The sparse SPD system matrix ``(n, n)`` (e.g. ``I + lambda Q``).
    token
        A name unique to ``A`` (e.g. ``dask.base.tokenize(A)``): the per-process solver cache key.
    genes_per_block
        Genes per task (``None``: :func:`default_genes_per_block`).
    means
        ``(G,)`` per-gene means removed before and added back after the solve (``None``: none).
    diag_scale
        ``(n,)`` diagonal ``D`` applied to the right-hand side (``None``: identity).
    dtype
        Result dtype.
    solver
        ``'cholesky'``, ``'cg'`` or ``'chebyshev'`` (iterative, to the relative residual ``tol`` per gene; a block
        that does not reach it raises :class:`~smoother._core.iterative.ConvergenceError` when computed).
    tol
        Relative residual tolerance of ``'cg'`` (``None``: :data:`~smoother._core.iterative.DEFAULT_TOL`).

    Returns
    -------
    dask array ``(n, G)`` of ``dtype``, chunked like the gene blocks.
    """
    import dask
    import dask.array as da

    if solver not in ("cholesky", "cg", "chebyshev"):
        msg = f"Unknown solver `{solver!r}`: expected 'cholesky', 'cg' or 'chebyshev'."
        raise ValueError(msg)
    if genes_per_block is None:
        genes_per_block = default_genes_per_block(Y.shape[0], solver)
    Yc = column_blocks(Y, genes_per_block)
    A_key = dask.delayed(sp.csr_matrix(A), pure=True)
    scale_key = None if diag_scale is None else dask.delayed(np.asarray(diag_scale, dtype=np.float64), pure=True)
    if means is None:
        shifts = None
    else:
        means = np.asarray(means, dtype=np.float64)
        bounds = np.cumsum((0, *Yc.chunks[1]))
        shifts = [means[bounds[i] : bounds[i + 1]] for i in range(len(Yc.chunks[1]))]

    # one map_blocks over the gene blocks (not a delayed call per block: each of those would carry, and compute,
    # its own fused copy of the reading of every input chunk)
    return da.map_blocks(
        _solve_gene_block,
        Yc,
        A_key,
        token,
        shifts,
        np.dtype(dtype),
        scale_key,
        solver,
        tol,
        dtype=np.dtype(dtype),
        chunks=Yc.chunks,
        meta=np.empty((0, 0), dtype=np.dtype(dtype)),
    )


def _solve_gene_block(Yb, A, token, shifts, dtype, diag_scale, solver, tol, block_id=None):
    shift = None if shifts is None else shifts[block_id[1]]
    return _solve_block(Yb, A, token, shift, dtype, diag_scale, solver, tol)


def _row_bounds(chunks) -> np.ndarray:
    return np.cumsum((0, *chunks))


def _matmul_part(Qbc, Xc):
    out = Qbc @ (Xc if sp.issparse(Xc) else np.asarray(Xc, dtype=np.float64))
    return out.toarray() if sp.issparse(out) else np.asarray(out)


def _sum_parts(*parts):
    out = parts[0].astype(np.float64, copy=True)
    for p in parts[1:]:
        out += p
    return out


def sparse_matmul(Q: sp.spmatrix, X):
    """Lazy ``Q @ X`` for a sparse ``(n, n)`` ``Q`` and a row-chunked dask ``X`` (``n x G``): dense float64 blocks.

    One task per non-zero block ``Q[b, c]`` (the graph is local: few per row block when spots are stored in
    spatial order), summed per row block. ``X`` keeps its chunks.
    """
    import dask
    import dask.array as da

    Q = sp.csr_matrix(Q, dtype=np.float64)
    rb = _row_bounds(X.chunks[0])
    nb = len(X.chunks[0])
    Xd = X.to_delayed()  # one graph for every block: a block used by several tasks is read once
    out_blocks = []
    for b in range(nb):
        Qb = Q[rb[b] : rb[b + 1]]
        cols = Qb.indices
        row_parts = []
        for jc in range(len(X.chunks[1])):
            parts = []
            for c in range(nb):
                lo, hi = rb[c], rb[c + 1]
                if not ((cols >= lo) & (cols < hi)).any():
                    continue
                Qbc = dask.delayed(Qb[:, lo:hi].tocsr(), pure=True)
                parts.append(dask.delayed(_matmul_part, pure=True)(Qbc, Xd[c, jc]))
            shape = (rb[b + 1] - rb[b], X.chunks[1][jc])
            if parts:
                total = dask.delayed(_sum_parts, pure=True)(*parts)
                row_parts.append(da.from_delayed(total, shape=shape, dtype=np.float64))
            else:
                row_parts.append(da.zeros(shape, dtype=np.float64))
        out_blocks.append(row_parts)
    return da.block(out_blocks)


def _gram_part(Xb, QXb, lam, mean):
    X = _dense(Xb).astype(np.float64)
    if mean is not None:
        X = X - mean[None, :]
    return X.T @ (X - lam * QXb)


def gram(X, Q: sp.spmatrix, lam: float, *, means: np.ndarray | None = None) -> np.ndarray:
    r""":math:`(X - 1 m^T)^T (I - \lambda Q) (X - 1 m^T)` for a row-chunked dask ``X`` (``n x G``), computed.

    A map-reduce over spot blocks: :math:`\sum_b X_b^T (X_b - \lambda (Q X)_b)`; the result is ``G x G`` float64.
    With ``means`` the columns are centred (:math:`Q` applied to the centred matrix: :math:`Q X - (Q 1) m^T`).
    """
    import dask
    import dask.array as da

    if X.chunks[1] != (X.shape[1],):
        X = X.rechunk({1: X.shape[1]})
    QX = sparse_matmul(Q, X)
    if means is not None:
        q1 = np.asarray(sp.csr_matrix(Q) @ np.ones(X.shape[0])).ravel()
        QX = QX - da.from_array(q1[:, None], chunks=(X.chunks[0], 1)) * means[None, :]
    rb = _row_bounds(X.chunks[0])
    Xd, QXd = X.to_delayed(), QX.to_delayed()
    parts = [dask.delayed(_gram_part, pure=True)(Xd[b, 0], QXd[b, 0], float(lam), means) for b in range(len(rb) - 1)]
    total = dask.delayed(_sum_parts, pure=True)(*parts)
    return np.asarray(total.compute())


# --- spatial PCA statistics (sparse-aware, one pass) -----------------------------------------------------------


def _as_block(b):
    """A chunk as CSR float64 (scipy sparse in) or a dense float64 array."""
    if sp.issparse(b):
        return sp.csr_matrix(b, dtype=np.float64)
    return _dense(b).astype(np.float64, copy=False)


def _gg(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def _stats_part(Xb, q1b, Qbcs, *Xcs):
    """``(X_b^T 1, X_b^T X_b, X_b^T (Q X)_b, X_b^T (Q 1)_b)`` of one row block; ``(Q X)_b = sum_c Q_bc X_c``."""
    X = _as_block(Xb)
    QX = None
    for Qbc, Xc in zip(Qbcs, Xcs, strict=True):
        part = Qbc @ _as_block(Xc)
        QX = part if QX is None else QX + part
    Xt = X.T.tocsr() if sp.issparse(X) else X.T
    A = _gg(Xt @ X)
    B = np.zeros_like(A) if QX is None else _gg(Xt @ QX)
    colsum = np.asarray(Xt @ np.ones(X.shape[0])).ravel()
    b = np.asarray(Xt @ q1b).ravel()
    return colsum, A, B, b


def _add_stats(*parts):
    return tuple(sum(p[i] for p in parts[1:]) + parts[0][i] for i in range(4))


def spatial_stats(X, Q: sp.spmatrix, *, fan_in: int = 4) -> dict[str, np.ndarray]:
    r"""One pass over a row-chunked dask ``X`` (``n x G``, one column chunk): the statistics of spatial PCA.

    Returns (computed, float64) ``colsum`` :math:`X^T 1`, ``xtx`` :math:`X^T X`, ``xtqx`` :math:`X^T Q X`,
    ``xtq1`` :math:`X^T Q 1` and ``q1sum`` :math:`1^T Q 1` — enough for the centred
    :math:`X_c^T (I - \lambda Q) X_c` at every :math:`\lambda` and for the variance and spatial loss of any
    projection. One task per row block; it reads its own block and the blocks its rows are coupled to by ``Q``
    (neighbours when spots are in spatial order). Sparse chunks stay sparse (products of sparse matrices, only the
    ``G x G`` results are dense); the partial sums are added in a tree of ``fan_in`` (few ``G x G`` matrices alive).
    """
    import dask

    if len(X.chunks[1]) != 1:
        msg = "spatial_stats needs every gene in one column chunk; rechunk with X.rechunk({1: -1}) first."
        raise ValueError(msg)
    Q = sp.csr_matrix(Q, dtype=np.float64)
    q1 = np.asarray(Q @ np.ones(Q.shape[0])).ravel()
    rb = _row_bounds(X.chunks[0])
    nb = len(rb) - 1
    owner = np.repeat(np.arange(nb), np.diff(rb))
    Xd = X.to_delayed()[:, 0]  # one graph for every block: each block is read once, not once per task using it
    parts = []
    for b in range(nb):
        Qb = Q[rb[b] : rb[b + 1]]
        used = np.unique(owner[Qb.indices]) if Qb.nnz else np.zeros(0, dtype=int)
        Qbcs = [Qb[:, rb[c] : rb[c + 1]].tocsr() for c in used]
        parts.append(dask.delayed(_stats_part, pure=True)(Xd[b], q1[rb[b] : rb[b + 1]], Qbcs, *[Xd[c] for c in used]))
    while len(parts) > 1:
        parts = [
            dask.delayed(_add_stats, pure=True)(*parts[i : i + fan_in]) if len(parts[i : i + fan_in]) > 1 else parts[i]
            for i in range(0, len(parts), fan_in)
        ]
    colsum, A, B, b = dask.compute(parts[0])[0]
    return {"colsum": colsum, "xtx": A, "xtqx": B, "xtq1": b, "q1sum": float(q1.sum())}


def coupled_blocks(Q: sp.spmatrix, chunks) -> float:
    """Mean number of row blocks (of ``chunks``) that the rows of one block are coupled to by ``Q``."""
    Q = sp.csr_matrix(Q)
    rb = _row_bounds(chunks)
    owner = np.repeat(np.arange(len(rb) - 1), np.diff(rb))
    counts = [np.unique(owner[Q.indices[Q.indptr[rb[b]] : Q.indptr[rb[b + 1]]]]).size for b in range(len(rb) - 1)]
    return float(np.mean(counts)) if counts else 0.0


def _colsum_block(block):
    return np.asarray(block.sum(axis=0), dtype=np.float64).reshape(1, -1)


def column_means(Y) -> np.ndarray:
    """Per-column means of a dask array with dense or scipy-sparse chunks, computed in one pass, ``(G,)``."""
    import dask.array as da

    parts = Y.map_blocks(_colsum_block, dtype=np.float64, chunks=((1,) * len(Y.chunks[0]), Y.chunks[1]))
    return np.asarray(da.sum(parts, axis=0).compute(), dtype=np.float64).ravel() / max(Y.shape[0], 1)
