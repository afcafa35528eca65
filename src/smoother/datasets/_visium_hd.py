"""A Visium HD-like simulator: square bins over a capture area, generated row by row into dask chunks or a zarr store.

The counts of a bin are Poisson with mean ``umi_density * bin_size**2 * size_factor * p[gene, domain]``, drawn as
one Poisson total per bin spread over the genes by the bin's domain profile (the same law, at the cost of one draw
per UMI instead of one per bin and gene: 2 um bins hold a few UMIs each). Every grid row of bins has its own random
stream (seeded by ``(random_state, row)``), so the data do not depend on the chunking, and any chunk can be made
alone, on any worker, in any order.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import SIMULATION, SPATIAL_KEY
from .._io import write_zarr
from .._settings import log_finish, log_start
from .._validation import check_int, check_real
from ._fields import check_seed

if TYPE_CHECKING:
    from anndata import AnnData

#: Bin sizes (um) of the real technology: 2 um barcoded squares and their 8 um / 16 um aggregates.
BIN_SIZES = (2, 8, 16)
#: Side of a Visium HD capture area (mm).
CAPTURE_AREA_MM = 6.5
DOMAIN_KEY = "domain"
DOMAIN_PROFILE_KEY = "domain_mean"  # varm: expected UMIs per bin of each gene in each domain

_SIZE_FACTOR_SD = 0.25  # log-normal spread of the per-bin capture efficiency
_BASE_LOG_SD = 1.5  # spread of the genes' log abundances (a few genes take most UMIs)
_DOMAIN_LOGFOLD_SD = 1.0  # spread of the per-domain log fold changes
_N_WAVES = 3  # sine waves bending the domain boundaries
_WAVE_AMPLITUDE = 0.04  # of the capture area's side
_QUANTILE_GRID = 400  # coarse grid (per side) on which the equal-area domain boundaries are found


def _geometry(rng: np.random.Generator, n_domains: int) -> dict:
    """The random shape of the domains: curved bands (like cortical layers) of equal area."""
    freq = rng.integers(1, 4, size=_N_WAVES).astype(np.float64)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=_N_WAVES)
    amp = _WAVE_AMPLITUDE * rng.uniform(0.5, 1.0, size=_N_WAVES) / np.arange(1, _N_WAVES + 1)
    tilt = rng.uniform(-0.15, 0.15)
    geo = {"freq": freq, "phase": phase, "amp": amp, "tilt": tilt}
    u = (np.arange(_QUANTILE_GRID) + 0.5) / _QUANTILE_GRID
    uu, vv = np.meshgrid(u, u)
    t = _depth(uu.ravel(), vv.ravel(), geo)
    geo["edges"] = np.quantile(t, np.arange(1, n_domains) / n_domains)
    return geo


def _depth(u: np.ndarray, v: np.ndarray, geo: dict) -> np.ndarray:
    """A smooth 'depth' over the unit square (u: across, v: down); domains are its equal-area level bands."""
    t = v + geo["tilt"] * (u - 0.5)
    for f, ph, a in zip(geo["freq"], geo["phase"], geo["amp"], strict=True):
        t = t + a * np.sin(2.0 * np.pi * f * u + ph)
    return t


def _domains(rows: np.ndarray, cols: np.ndarray, side: int, geo: dict) -> np.ndarray:
    u = (cols + 0.5) / side
    v = (rows + 0.5) / side
    return np.searchsorted(geo["edges"], _depth(u, v, geo)).astype(np.int8)


def _count_rows(r0: int, r1: int, side: int, cum: np.ndarray, mean_umis: float, seed: int, geo: dict) -> sp.csr_matrix:
    """CSR counts (float32) of the bins of grid rows ``r0 .. r1 - 1`` (``side`` bins each, row-major order)."""
    n_genes = cum.shape[0]
    cols = np.arange(side)
    indptr_parts = [np.zeros(1, dtype=np.int64)]
    idx_parts, val_parts = [], []
    offset = 0
    for r in range(r0, r1):
        rng = np.random.default_rng([seed, r])
        dom = _domains(np.full(side, r), cols, side, geo)
        size = np.exp(_SIZE_FACTOR_SD * rng.standard_normal(side) - 0.5 * _SIZE_FACTOR_SD**2)
        total = rng.poisson(mean_umis * size)
        bins = np.repeat(np.arange(side), total)
        genes = np.empty(bins.size, dtype=np.int64)
        owner = dom[bins]
        for d in np.unique(dom):
            sel = owner == d
            genes[sel] = np.searchsorted(cum[:, d], rng.random(int(sel.sum())), side="right")
        np.minimum(genes, n_genes - 1, out=genes)  # a uniform draw at the top of the last bin's rounding
        row = sp.coo_matrix((np.ones(bins.size, dtype=np.float32), (bins, genes)), shape=(side, n_genes)).tocsr()
        row.sum_duplicates()
        row.sort_indices()
        indptr_parts.append(row.indptr[1:].astype(np.int64) + offset)
        idx_parts.append(row.indices)
        val_parts.append(row.data)
        offset += row.nnz
    data = np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32)
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int32)
    indptr = np.concatenate(indptr_parts)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=((r1 - r0) * side, n_genes))


def visium_hd(
    bin_size: Literal[2, 8, 16] = 8,
    *,
    area_mm: float = CAPTURE_AREA_MM,
    n_genes: int = 500,
    n_domains: int = 6,
    umi_density: float = 1.0,
    chunk_size: int = 2**18,
    store: str | os.PathLike | None = None,
    random_state: int | None = 0,
) -> AnnData:
    """Visium HD-like square bins with tissue domains, as a dask-backed AnnData (out of core at any size).

    Square bins of ``bin_size`` um tile a square capture area of side ``area_mm`` (the full 6.5 mm area holds
    3,250 x 3,250 = 10.6 million 2 um bins, 660k 8 um bins, 165k 16 um bins). The area is divided into
    ``n_domains`` tissue domains of equal area (curved bands, like cortical layers). Each gene has a mean
    abundance in each domain (log-normal abundances, log-normal fold changes between domains); a bin's counts
    are Poisson with mean ``umi_density * bin_size**2`` times a per-bin capture efficiency (log-normal, mean 1)
    times its domain's profile, so 2 um bins hold a few UMIs (4 on average at the default density) and 8 um bins
    16 times as many.

    Use it to try smoother at Visium HD scale (10^5 to 10^7 bins) without the data: every ``sm.tl`` function that
    takes dask input runs on it, and the true domains tell how well it did.

    The count matrix is never made whole: it is a :mod:`dask.array` of scipy CSR chunks, one chunk per
    ``chunk_size`` bins (rounded to whole rows of the grid; bins are in row-major spatial order, so a spatial
    graph only couples neighbouring chunks), each generated on demand by whatever dask scheduler computes it. With
    ``store`` the AnnData is first written to that ``.zarr`` store chunk by chunk (anndata's writer) and returned
    read back lazily from it (``X`` a dask array over the store, the rest in memory).

    Parameters
    ----------
    bin_size
        Side of a bin in um: 2, 8 or 16 (the bin sizes of Visium HD).
    area_mm
        Side of the simulated square area in mm (at most 6.5, the capture area); e.g. 0.4 for a quick test.
    n_genes
        Number of genes.
    n_domains
        Number of tissue domains.
    umi_density
        Mean UMIs per square um (``umi_density * bin_size**2`` per bin on average).
    chunk_size
        Bins per dask chunk (rounded to whole grid rows, at least one row).
    store
        Path of a ``.zarr`` store to write the AnnData to (it must not exist yet); ``None`` keeps it lazy in memory.
    random_state
        Seed; every grid row draws from its own stream seeded by ``(random_state, row)``, so the counts do not
        depend on ``chunk_size`` or on the scheduler. ``None`` draws a seed (recorded in ``uns``).

    Returns
    -------
    AnnData with

    - ``X``: ``(n_bins, n_genes)`` float32 counts, a dask array of scipy CSR chunks (rows of bins);
    - ``obs['domain']`` (categorical, the true domain), ``obs['array_row']``, ``obs['array_col']`` (grid indices);
      ``obs_names`` as Space Ranger's (``s_008um_00012_00034-1``);
    - ``obsm['spatial']``: bin centres in um;
    - ``varm['domain_mean']``: ``(n_genes, n_domains)`` expected UMIs per bin of each gene in each domain (at a
      capture efficiency of 1);
    - ``uns['simulation']``: the parameters.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.visium_hd(bin_size=16, area_mm=0.8, n_genes=20)
    >>> adata.shape, adata.obsm["spatial"][1]
    ((2500, 20), array([24.,  8.]))
    >>> type(adata.X).__name__, adata.X.chunks[0][:1]
    ('Array', (2500,))
    """
    bin_size = check_int(bin_size, "bin_size", low=1, example="8")
    if bin_size not in BIN_SIZES:
        msg = f"Expected `bin_size` to be one of {list(BIN_SIZES)} (um), found {bin_size} (e.g. bin_size=8)."
        raise ValueError(msg)
    area_mm = check_real(area_mm, "area_mm", low=0.0, high=CAPTURE_AREA_MM, low_open=True, example="1.0")
    n_genes = check_int(n_genes, "n_genes", low=1, example="500")
    n_domains = check_int(n_domains, "n_domains", low=1, high=127, example="6")
    umi_density = check_real(umi_density, "umi_density", low=0.0, low_open=True, example="1.0")
    chunk_size = check_int(chunk_size, "chunk_size", low=1, example=str(2**18))
    if store is not None and not isinstance(store, (str, os.PathLike)):
        msg = f"Expected `store` to be a path (str or os.PathLike) or None, found {type(store).__name__}."
        raise TypeError(msg)
    if store is not None and os.path.exists(store):
        msg = f"`store` {os.fspath(store)!r} already exists; pass a new path (or delete the old store first)."
        raise FileExistsError(msg)
    random_state = check_seed(random_state, "random_state")
    side = int(round(area_mm * 1000.0 / bin_size))
    if side < 1:
        msg = (
            f"`area_mm` = {area_mm:g} holds no {bin_size} um bin; use area_mm >= {bin_size / 1000:g} "
            f"(e.g. area_mm=1.0)."
        )
        raise ValueError(msg)

    import anndata as ad
    import dask
    import dask.array as da

    start = log_start(f"simulating Visium HD-like {bin_size} um bins ({side} x {side}, {n_genes} genes)")
    rng = np.random.default_rng(random_state)
    geo = _geometry(rng, n_domains)
    base = rng.normal(0.0, _BASE_LOG_SD, size=n_genes)
    logfold = rng.normal(0.0, _DOMAIN_LOGFOLD_SD, size=(n_genes, n_domains))
    prof = np.exp(base[:, None] + logfold)
    prof /= prof.sum(axis=0, keepdims=True)
    cum = np.cumsum(prof, axis=0)
    cum[-1] = 1.0
    mean_umis = umi_density * bin_size**2

    n = side * side
    rows_per_chunk = max(1, chunk_size // side)
    bounds = [*range(0, side, rows_per_chunk), side]
    meta = sp.csr_matrix((0, n_genes), dtype=np.float32)
    blocks = [
        da.from_delayed(
            dask.delayed(_count_rows, pure=True)(r0, r1, side, cum, mean_umis, random_state, geo),
            shape=((r1 - r0) * side, n_genes),
            dtype=np.float32,
            meta=meta,
        )
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    X = da.concatenate(blocks, axis=0)

    grid_row = np.repeat(np.arange(side, dtype=np.int32), side)
    grid_col = np.tile(np.arange(side, dtype=np.int32), side)
    dom = np.empty(n, dtype=np.int8)
    step = max(1, 2**20 // side) * side
    for s in range(0, n, step):  # in pieces: the float64 work arrays stay small at 10^7 bins
        dom[s : s + step] = _domains(grid_row[s : s + step], grid_col[s : s + step], side, geo)
    names = [f"domain_{d}" for d in range(n_domains)]
    tag = f"s_{bin_size:03d}um_"
    obs_names = pd.Index(
        np.char.add(
            np.char.add(np.char.add(tag, np.char.zfill(grid_row.astype(str), 5)), "_"),
            np.char.add(np.char.zfill(grid_col.astype(str), 5), "-1"),
        ).astype(object)
    )
    obs = pd.DataFrame(
        {
            DOMAIN_KEY: pd.Categorical.from_codes(dom, categories=names),
            "array_row": grid_row,
            "array_col": grid_col,
        },
        index=obs_names,
    )
    coords = np.column_stack([(grid_col + 0.5) * bin_size, (grid_row + 0.5) * bin_size]).astype(np.float64)
    var = pd.DataFrame(index=pd.Index([f"gene_{g}" for g in range(n_genes)]))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm[SPATIAL_KEY] = coords
    adata.varm[DOMAIN_PROFILE_KEY] = mean_umis * prof
    adata.uns[SIMULATION] = {
        "generator": "visium_hd",
        "bin_size": bin_size,
        "area_mm": area_mm,
        "n_genes": n_genes,
        "n_domains": n_domains,
        "umi_density": umi_density,
        "chunk_size": chunk_size,
        "random_state": random_state,
        "grid_side": side,
    }
    if store is not None:
        with warnings.catch_warnings():  # anndata's notice that zarr v3 will become its default format
            warnings.filterwarnings("ignore", message="Writing zarr v2", category=UserWarning)
            write_zarr(adata, store)  # all or nothing: an interrupted simulation leaves no partial store
        adata = read_zarr_lazy(store, chunk_rows=rows_per_chunk * side)
    log_finish(start)
    return adata


def read_zarr_lazy(store: str | os.PathLike, *, chunk_rows: int = 2**18) -> AnnData:
    """An AnnData read from a ``.zarr`` store with ``X`` (and the layers) lazy dask arrays, everything else in memory.

    ``X`` and ``layers`` come from :func:`anndata.experimental.read_elem_lazy` in chunks of ``chunk_rows`` rows
    (all columns); ``obs``, ``var``, ``obsm``, ``varm``, ``obsp`` and ``uns`` are read whole (they are O(n)).
    """
    import anndata as ad
    import zarr

    g = zarr.open(os.fspath(store), mode="r")
    parts = {k: ad.io.read_elem(g[k]) for k in ("obs", "var", "obsm", "varm", "obsp", "uns") if k in g}
    n_vars = len(parts["var"])
    chunk_rows = max(1, min(int(chunk_rows), len(parts["obs"]) or 1))
    X = ad.experimental.read_elem_lazy(g["X"], chunks=(chunk_rows, n_vars)) if "X" in g else None
    layers = {}
    if "layers" in g:
        for k in g["layers"]:
            layers[k] = ad.experimental.read_elem_lazy(g["layers"][k], chunks=(chunk_rows, n_vars))
    return ad.AnnData(X=X, layers=layers, **parts)
