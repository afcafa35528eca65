"""Lattices and smooth random fields evaluated at spot coordinates (numpy/scipy only, no AnnData).

Everything here is vectorized over spots: the cost of a random field is one small FFT on a regular grid whose
resolution follows the length scale (not the number of spots) plus one spline interpolation per field.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _validation as _v

LAYOUTS = ("hex", "square")

# Row distance of a hexagonal lattice relative to the spot spacing (6 neighbours at distance `spacing`).
_HEX_ROW = np.sqrt(3.0) / 2.0


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """An integer ``>= minimum``: ``TypeError`` for a float, string or bool, ``ValueError`` below ``minimum``."""
    return _v.check_int(value, name, low=minimum, example=str(max(minimum, 10)))


def check_positive(value, name: str, *, allow_zero: bool = False, example: str = "1.0") -> float:
    """A finite real number ``> 0`` (or ``>= 0`` with ``allow_zero``): ``TypeError`` for a non-number,
    ``ValueError`` for NaN, inf or a value out of range."""
    return _v.check_real(value, name, low=0.0, low_open=not allow_zero, example=example)


def check_choice(value, name: str, options: tuple[str, ...]) -> str:
    """One of ``options`` (case-insensitive): ``TypeError`` for a non-string, ``ValueError`` for an unknown one."""
    return _v.check_choice(value.lower() if isinstance(value, str) else value, name, options)


def check_seed(seed, name: str = "seed") -> int:
    """A non-negative integer seed; ``None`` draws one (so that it can be recorded)."""
    if seed is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    return _v.check_int(seed, name, low=0, example="0")


#: Bytes of memory per (spot x gene) entry at the peak of a simulation (float32 X and truth, float64 work arrays).
_BYTES_PER_ENTRY = 32


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # not available on this platform
        return None


def check_size(n_rows: int, n_cols: int, rows: str, cols: str | None) -> None:
    """``ValueError`` when an ``n_rows x n_cols`` simulation cannot fit in this machine's memory (checked before
    anything is allocated; the message names a size that fits). ``cols=None``: ``n_cols`` is fixed, not an argument."""
    total = _physical_memory()
    need = float(n_rows) * float(n_cols) * _BYTES_PER_ENTRY
    if total is None or need <= 0.8 * total:
        return
    fit = max(1, int(0.8 * total / (_BYTES_PER_ENTRY * max(n_cols, 1))))
    what = f"`{rows}` = {n_rows}" if cols is None else f"`{rows}` x `{cols}` = {n_rows} x {n_cols}"
    fix = f"{rows}={fit}" if cols is None else f"{rows}={fit} with {cols}={n_cols}"
    msg = (
        f"{what} needs about {need / 2**30:.3g} GiB, more than this machine's {total / 2**30:.3g} GiB of memory; "
        f"use fewer (e.g. {fix})."
    )
    raise ValueError(msg)


#: Largest FFT grid (number of cells) a Gaussian field may be drawn on: about 1 GiB at the peak of one draw.
MAX_GRID_CELLS = 2**25
_CELLS_PER_LENGTH = 4.0  # grid cell = length_scale / 4
_PAD_LENGTHS = 3.0  # the grid extends 3 length scales beyond the tissue on every side


def _grid_cells(extent: np.ndarray, ell: float) -> float:
    """Number of cells (as a float: no overflow) of the FFT grid of :func:`gaussian_fields`."""
    cell = ell / _CELLS_PER_LENGTH
    span = np.asarray(extent, dtype=np.float64) + 2 * _PAD_LENGTHS * ell
    return float(np.prod(np.ceil(span / cell) + 4))


def check_field_grid(extent: np.ndarray, length_scale: float, name: str = "length_scale") -> None:
    """``ValueError`` when a Gaussian field of this length scale over a tissue of this extent (per axis) needs more
    than :data:`MAX_GRID_CELLS` grid cells; the message names the smallest length scale that works."""
    extent = np.asarray(extent, dtype=np.float64)
    cells = _grid_cells(extent, length_scale)
    if cells <= MAX_GRID_CELLS:
        return
    # at length scale 2 * extent + 1 the grid has at most 30 cells per axis: the smallest working value is below
    lo, hi = length_scale, 2.0 * float(extent.max()) + 1.0
    for _ in range(200):  # bisection on a monotone function: the smallest length scale that fits
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _grid_cells(extent, mid) > MAX_GRID_CELLS else (lo, mid)
    ok = float(f"{hi * 1.001:.3g}")
    while _grid_cells(extent, ok) > MAX_GRID_CELLS:
        ok = float(f"{ok * 1.01:.3g}")
    msg = (
        f"`{name}={length_scale!r}` is too small for a tissue of extent {float(extent.max()):.4g}: the smooth field "
        f"is drawn on a grid of cell {name}/4, which would need {cells:.3g} cells ({cells * 8 / 2**30:.3g} GiB per "
        f"array; the limit is {MAX_GRID_CELLS} cells). Use {name} >= {ok:.3g} (e.g. {name}={ok:.3g})."
    )
    raise ValueError(msg)


def lattice_shape(n_spots: int, layout: str) -> tuple[int, int]:
    """Columns and rows of the nearly square patch holding ``n_spots`` (the last row may be partial)."""
    row = _HEX_ROW if layout == "hex" else 1.0
    # width n_cols * 1 ~ height n_rows * row  and  n_cols * n_rows >= n_spots
    n_cols = max(1, int(np.ceil(np.sqrt(n_spots * row))))
    n_rows = int(np.ceil(n_spots / n_cols))
    return n_cols, n_rows


def make_lattice(n_spots: int, layout: str, spacing: float) -> np.ndarray:
    """Row-major points of a hexagonal or square lattice, float64 ``(n_spots, 2)``."""
    n_cols, _ = lattice_shape(n_spots, layout)
    idx = np.arange(n_spots)
    row, col = np.divmod(idx, n_cols)
    if layout == "hex":
        x = (col + 0.5 * (row % 2)) * spacing
        y = row * (_HEX_ROW * spacing)
    else:
        x = col * float(spacing)
        y = row * float(spacing)
    return np.column_stack([x, y]).astype(np.float64)


def lattice_extent(n_spots: int, layout: str, spacing: float) -> np.ndarray:
    """``np.ptp(make_lattice(n_spots, layout, spacing), axis=0)`` without building the lattice (O(rows) work)."""
    n_cols, n_rows = lattice_shape(n_spots, layout)
    rows = np.arange(n_rows)
    count = np.full(n_rows, n_cols)
    count[-1] = n_spots - n_cols * (n_rows - 1)
    shift = 0.5 * (rows % 2) if layout == "hex" else np.zeros(n_rows)
    width = float((count - 1 + shift).max() - shift.min())
    height = (n_rows - 1) * (_HEX_ROW if layout == "hex" else 1.0)
    return np.array([width, height]) * float(spacing)


def default_length_scale(extent: np.ndarray, spacing: float) -> float:
    """A sixth of the longest side of the bounding box (``extent`` per axis), but at least three spot spacings."""
    return max(float(np.max(extent)) / 6.0, 3.0 * spacing)


def standardize_columns(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation per column (columns that are constant are only centred)."""
    a = a - a.mean(axis=0, keepdims=True)
    sd = a.std(axis=0, keepdims=True)
    sd[sd == 0] = 1.0
    a /= sd
    return a


def gaussian_fields(coords: np.ndarray, n_fields: int, length_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Independent draws of a stationary Gaussian field with squared-exponential covariance, at ``coords``.

    White noise on a regular grid (cell ``length_scale / 4``, padded by ``3 * length_scale`` so that the periodic
    FFT does not wrap) is filtered in Fourier space so that its covariance is
    :math:`\\exp(-d^2 / (2 \\ell^2))`, then read off at the spots by cubic spline interpolation. Each field is
    standardized over the spots. Returns float64 ``(n_spots, n_fields)``.
    """
    from scipy import ndimage

    ell = float(length_scale)
    check_field_grid(np.ptp(coords, axis=0), ell)
    cell = ell / _CELLS_PER_LENGTH
    pad = _PAD_LENGTHS * ell
    lo = coords.min(axis=0) - pad
    span = np.ptp(coords, axis=0) + 2 * pad
    shape = tuple(int(np.ceil(s / cell)) + 4 for s in span)
    # Convolving white noise with a Gaussian kernel of sd ell/sqrt(2) gives covariance exp(-d^2 / (2 ell^2)).
    s = ell / np.sqrt(2.0)
    f0 = np.fft.fftfreq(shape[0], d=cell)
    f1 = np.fft.rfftfreq(shape[1], d=cell)
    transfer = np.exp(-2.0 * np.pi**2 * s**2 * (f0[:, None] ** 2 + f1[None, :] ** 2))
    pos = ((coords - lo) / cell).T  # fractional grid indices, (2, n_spots)
    out = np.empty((coords.shape[0], n_fields), dtype=np.float64)
    for k in range(n_fields):  # loop over fields, never over spots
        noise = rng.standard_normal(shape)
        grid = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
        out[:, k] = ndimage.map_coordinates(grid, pos, order=3, mode="nearest")
    return standardize_columns(out)
