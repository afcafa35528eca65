"""Writing AnnData with lazy (dask-backed) results to a ``.zarr`` store, all or nothing."""

from __future__ import annotations

import os
import shutil
import uuid

from ._settings import logger

__all__ = ["write_zarr"]


def write_zarr(adata, store: str | os.PathLike, **kwargs) -> None:
    """Write ``adata`` to a new ``.zarr`` store so that a failed write leaves nothing that looks complete.

    Use it instead of ``adata.write_zarr(store)`` when ``adata`` holds lazy results (e.g. ``layers['smoothed']``
    of :func:`smoother.tl.smooth` on dask input): writing computes them block by block on the active Dask
    scheduler, and if the computation fails part way (a worker that dies for good, a solver that does not
    converge, an interrupt) a zarr store written in place would keep its metadata with missing chunks, which zarr
    reads back as zeros. Here the store is written next to ``store`` under a temporary name and renamed to
    ``store`` only after every block was written; on any error the partial store is deleted and the error
    re-raised. (A worker that dies and comes back is handled by Dask itself: its tasks are rerun, and every
    solver is rebuilt in the new worker process.)

    Parameters
    ----------
    adata
        The AnnData to write (in-memory or dask-backed arrays).
    store
        Path of the ``.zarr`` store; it must not exist yet.
    **kwargs
        Passed to :meth:`anndata.AnnData.write_zarr` (e.g. ``chunks``).

    Examples
    --------
    >>> import os, tempfile
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(100, n_genes=3, random_state=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "field.zarr")
    >>> sm.write_zarr(adata, path)
    >>> import anndata
    >>> anndata.read_zarr(path).shape
    (100, 3)
    """
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        msg = f"Expected `adata` to be an AnnData, found {type(adata).__name__}."
        raise TypeError(msg)
    if not isinstance(store, (str, os.PathLike)):
        msg = f"Expected `store` to be a path (str or os.PathLike), found {type(store).__name__}."
        raise TypeError(msg)
    target = os.path.abspath(os.fspath(store))
    if os.path.exists(target):
        msg = f"`store` {os.fspath(store)!r} already exists; pass a new path (or delete the old store first)."
        raise ValueError(msg)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        msg = f"The folder of `store` ({parent!r}) does not exist; create it first."
        raise ValueError(msg)
    partial = os.path.join(parent, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:8]}")
    try:
        adata.write_zarr(partial, **kwargs)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        logger.warning("writing %s failed; the partial store was removed", target)
        raise
    os.replace(partial, target)
    logger.info("    wrote %s", target)
