"""Sparse symmetric positive definite (SPD) linear algebra: factor once, solve many.

Solver choice (measured on this project's 2-core machine, 5-point grid ``I + Q_icar``, 50 right-hand sides,
float64; see ``benchmarks/``):

============  ==================  =================  ==================
n             cholespy (CHOLMOD)  scipy SuperLU      note
============  ==================  =================  ==================
10,000        0.03 s + 0.03 s     0.01 s + 0.01 s    both fine
100,000       0.48 s + 0.23 s     0.39 s + 0.28 s    comparable
1,000,000     12.8 s + 4.2 s      (fill too large)   CHOLMOD supernodal
============  ==================  =================  ==================

CHOLMOD (through the maintained ``cholespy`` wheel) is the default: it scales to 10^6 spots and reports a
matrix that is not positive definite, which we turn into an actionable error. SuperLU with a symmetric
fill-reducing ordering and diagonal pivoting is used where the factors themselves are needed (inertia,
selected inversion).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import threading

import numpy as np
import scipy.sparse as sp

#: CHOLMOD's own report of an indefinite matrix, printed by C ``printf`` before cholespy raises; we raise our own
#: actionable error instead, so this line is filtered out of the captured output.
_CHOLMOD_NOISE = b"CHOLMOD warning: not positive definite"

_quiet_lock = threading.Lock()
_quiet_state: dict = {"depth": 0}


def _c_flush() -> None:
    """Flush every C stdio stream (CHOLMOD writes through a buffered ``stdout`` when it is not a terminal)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - no C runtime symbols (not Linux/macOS)
        pass


@contextlib.contextmanager
def quiet_cholmod():
    """Capture what C code writes to file descriptors 1 and 2 inside the block; re-emit all but CHOLMOD's
    "not positive definite" warning afterwards.

    CHOLMOD prints that warning from C (through cholespy) before the Python exception that we turn into an
    actionable message. Nested and concurrent uses (threads) share one redirection, restored by the last one to
    leave. Where the descriptors cannot be redirected the block runs unchanged.
    """
    with _quiet_lock:
        st = _quiet_state
        if st["depth"] == 0:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (AttributeError, ValueError):  # pragma: no cover - replaced or closed streams
                pass
            _c_flush()
            try:
                saved = {fd: os.dup(fd) for fd in (1, 2)}
            except OSError:  # pragma: no cover - no descriptors 1/2 (e.g. a daemon)
                saved = None
            files = {}
            if saved is not None:
                for fd in (1, 2):
                    files[fd] = tempfile.TemporaryFile()
                    os.dup2(files[fd].fileno(), fd)
            st.update(saved=saved, files=files)
        st["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            st = _quiet_state
            st["depth"] -= 1
            if st["depth"] == 0 and st["saved"] is not None:
                _c_flush()
                for fd, f in st["files"].items():
                    os.dup2(st["saved"][fd], fd)
                    os.close(st["saved"][fd])
                    f.seek(0)
                    kept = b"".join(line for line in f.read().splitlines(keepends=True) if _CHOLMOD_NOISE not in line)
                    f.close()
                    if kept:
                        os.write(fd, kept)
                st.update(saved=None, files={})


class NotPositiveDefiniteError(ValueError):
    """Raised when a matrix that must be symmetric positive definite is not."""


#: From this many spots on, :class:`SPDFactor` (``backend='auto'``) uses the supernodal factor. Measured on this
#: machine (4-neighbour grid, I + Q with ICAR rho 0.99, one thread): at 659,344 spots it factors in 4.4 s against
#: CHOLMOD's (cholespy) 17.3 s and solves 16 genes in 0.44 s against 0.72 s, at 10^6 spots 17 s against 61 s
#: (peak memory 1.26 against 1.11 GB); at 10^5 spots (kNN graphs of 10 neighbours) both take ~1.8 s, and below
#: CHOLMOD is faster.
SUPERNODAL_MIN_SPOTS = 200_000


class SPDFactor:
    """Cholesky factorization of a sparse SPD matrix ``A``, reused for many right-hand sides.

    Parameters
    ----------
    A
        Sparse symmetric positive definite matrix, shape ``(n, n)``.
    backend
        ``'cholmod'`` (cholespy), ``'supernodal'`` (:class:`~smoother._core.selinv.SupernodalFactor`: nested
        dissection and dense BLAS blocks), ``'superlu'`` (scipy) or ``'auto'``: the supernodal factor from
        :data:`SUPERNODAL_MIN_SPOTS` spots on, cholmod below (superlu when cholespy is missing).

    Raises
    ------
    NotPositiveDefiniteError
        When the factorization finds ``A`` is not positive definite.
    """

    def __init__(self, A: sp.spmatrix, *, backend: str = "auto") -> None:
        A = sp.csr_matrix(A, dtype=np.float64)
        if A.shape[0] != A.shape[1]:
            msg = f"Expected a square matrix, found shape {A.shape}."
            raise ValueError(msg)
        self.n = A.shape[0]
        if self.n == 0:  # nothing to factor (cholespy cannot allocate an empty matrix)
            self.backend = "empty"
            return
        if backend == "auto":
            if self.n >= SUPERNODAL_MIN_SPOTS:
                backend = "supernodal"
            else:
                try:
                    import cholespy  # noqa: F401

                    backend = "cholmod"
                except ImportError:  # pragma: no cover - cholespy is a declared dependency
                    backend = "superlu"
        self.backend = backend
        if backend == "supernodal":
            from .selinv import SupernodalFactor

            self._snf = SupernodalFactor(A)
        elif backend == "cholmod":
            from cholespy import CholeskySolverD, MatrixType

            # cholespy takes numpy arrays directly (no torch import on the exact paths)
            C = A.tocoo()
            try:
                with quiet_cholmod():
                    self._solver = CholeskySolverD(
                        self.n,
                        np.ascontiguousarray(C.row, dtype=np.int32),
                        np.ascontiguousarray(C.col, dtype=np.int32),
                        np.ascontiguousarray(C.data, dtype=np.float64),
                        MatrixType.COO,
                    )
            except ValueError as e:
                raise NotPositiveDefiniteError(str(e)) from e
        elif backend == "superlu":
            self._lu = superlu_symmetric(A)
            d = self._lu.U.diagonal()
            if not (d > 0).all():
                msg = "Matrix is not positive definite!"
                raise NotPositiveDefiniteError(msg)
        else:
            msg = f"Unknown backend `{backend!r}`: expected 'auto', 'cholmod', 'supernodal' or 'superlu'."
            raise ValueError(msg)

    @property
    def supernodal(self):
        """The :class:`~smoother._core.selinv.SupernodalFactor` behind this factor (``None`` for other backends):
        solves can then stay in its order (:meth:`~smoother._core.selinv.SupernodalFactor.solve_permuted`)."""
        return getattr(self, "_snf", None)

    @property
    def info(self) -> dict:
        """``{'method': 'cholesky', 'backend': ...}`` (the same record as :attr:`CGSolver.info` has)."""
        return {"method": "cholesky", "backend": self.backend}

    def solve(self, B: np.ndarray) -> np.ndarray:
        """Return ``A^{-1} B`` for ``B`` of shape ``(n,)`` or ``(n, k)`` (float64)."""
        B = np.asarray(B, dtype=np.float64)
        if B.shape[0] != self.n:
            msg = f"Right-hand side has {B.shape[0]} rows, expected {self.n}."
            raise ValueError(msg)
        if self.backend == "empty":
            return B.copy()
        if self.backend == "superlu":
            return self._lu.solve(B)
        if B.ndim == 2 and B.shape[1] == 0:
            return B.copy()
        if self.backend == "supernodal":
            return self._snf.solve(B)
        b = np.ascontiguousarray(B)
        x = np.zeros_like(b)
        self._solver.solve(b, x)
        return x


#: Share of the available memory that the estimated Cholesky factor (with its factorization workspace) may take
#: before ``solver='auto'`` switches to conjugate gradients.
FACTOR_MEMORY_SHARE = 0.5
#: Bytes per non-zero of the factor (value + row index) times the factorization's peak over the factor (CHOLMOD
#: supernodal workspace, the matrix and its permuted copy).
_FACTOR_BYTES_PER_NNZ = 12 * 1.5


def factor_nnz_estimate(A: sp.spmatrix) -> float:
    r"""Estimated non-zeros of the Cholesky factor of ``A`` (spatial graphs: planar, fill-reducing order).

    Nested dissection of a 2D grid with 4 neighbours gives :math:`\mathrm{nnz}(L) \approx \tfrac{31}{8} n \log_2 n`
    (George, 1973); denser graphs scale it by their mean number of neighbours over 4.
    """
    n = A.shape[0]
    if n < 2:
        return float(n)
    per_row = max(1.0, (A.nnz - n) / n)
    return 31 / 8 * n * math.log2(n) * max(1.0, per_row / 4)


def available_memory() -> int:
    """Bytes of memory available to this process now (psutil when installed, else ``/proc/meminfo``)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 8 * 2**30


#: The solvers behind :func:`spd_solver`.
SOLVERS = ("auto", "cholesky", "cg", "chebyshev")


def choose_solver(A: sp.spmatrix, solver: str = "auto", *, memory: int | None = None) -> str:
    """``'cholesky'``, ``'cg'`` or ``'chebyshev'`` for ``A``: as asked, or (``'auto'``) the Cholesky factor unless
    its estimated memory (:func:`factor_nnz_estimate`, 18 bytes per non-zero at the peak) exceeds
    :data:`FACTOR_MEMORY_SHARE` of ``memory`` (default: :func:`available_memory`); then the Chebyshev iteration
    when the Gershgorin bound on the Jacobi-scaled condition number is at most
    :data:`~smoother._core.iterative.JACOBI_MAX_KAPPA`, else conjugate gradients (with AMG).

    Measured on this machine (4-neighbour grid, ICAR rho 0.99, float64): at 10^6 spots and lambda 1 the factor
    solves a gene in ~0.08 s after a 13 s factorization; Jacobi-CG needs 20 iterations to 1e-6, ~0.29 s CPU per
    gene, the Chebyshev iteration as many iterations in ~0.17 s (lambda 10: 51/54 iterations, 0.7/0.4 s). The
    factor is the fastest whenever it fits; at 10^7 spots it does not (est. 16 GiB at the peak).
    """
    if solver in ("cholesky", "cg", "chebyshev"):
        return solver
    if solver != "auto":
        msg = f"Unknown solver `{solver!r}`: expected one of {SOLVERS}."
        raise ValueError(msg)
    need = _FACTOR_BYTES_PER_NNZ * factor_nnz_estimate(A)
    avail = available_memory() if memory is None else memory
    if need <= FACTOR_MEMORY_SHARE * avail:
        return "cholesky"
    from .iterative import JACOBI_MAX_KAPPA, jacobi_condition_bound

    return "chebyshev" if jacobi_condition_bound(A) <= JACOBI_MAX_KAPPA else "cg"


def spd_solver(A: sp.spmatrix, solver: str = "cholesky", *, tol: float | None = None, preconditioner: str = "auto"):
    """The one way to get something with ``.solve(B)`` for a sparse SPD ``A``: an :class:`SPDFactor`
    (``'cholesky'``), a :class:`~smoother._core.iterative.CGSolver` (``'cg'``) or a
    :class:`~smoother._core.iterative.ChebyshevSolver` (``'chebyshev'``), the iterative ones to the relative
    residual ``tol``; ``'auto'``: :func:`choose_solver`."""
    method = choose_solver(A, solver)
    if method == "cholesky":
        return SPDFactor(A)
    from .iterative import DEFAULT_TOL, CGSolver, ChebyshevSolver

    tol = DEFAULT_TOL if tol is None else tol
    if method == "chebyshev":
        return ChebyshevSolver(A, tol=tol)
    return CGSolver(A, tol=tol, preconditioner=preconditioner)


def superlu_symmetric(A: sp.spmatrix):
    """SuperLU factorization with a symmetric fill-reducing ordering and diagonal pivoting.

    For a symmetric matrix this is ``P A P^T = L U`` with unit-lower ``L`` and ``U = diag(U) L^T``; the signs of
    ``diag(U)`` give the inertia of ``A`` (Sylvester).
    """
    from scipy.sparse.linalg import splu

    return splu(
        sp.csc_matrix(A, dtype=np.float64),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )


def is_positive_definite(A: sp.spmatrix) -> bool:
    """Whether the sparse symmetric matrix ``A`` is positive definite (by attempting a Cholesky factorization)."""
    try:
        SPDFactor(A)
    except NotPositiveDefiniteError:
        return False
    return True


def inv_diag(A: sp.spmatrix, *, factor: SPDFactor | None = None, batch_size: int = 256) -> np.ndarray:
    """Exact diagonal of ``A^{-1}`` for a sparse SPD matrix, without forming ``A^{-1}``.

    Solves for unit vectors in batches of ``batch_size`` columns (memory ``n x batch_size``); the cost grows as
    ``n`` solves, so prefer :func:`selected_inverse_diag` when it is available for large ``n``.
    """
    A = sp.csr_matrix(A, dtype=np.float64)
    n = A.shape[0]
    factor = factor if factor is not None else SPDFactor(A)
    out = np.empty(n)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        E = np.zeros((n, stop - start))
        E[np.arange(start, stop), np.arange(stop - start)] = 1.0
        X = factor.solve(E)
        out[start:stop] = X[np.arange(start, stop), np.arange(stop - start)]
    return out
