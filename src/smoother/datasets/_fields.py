"""Lattices and smooth random fields evaluated at spot coordinates (numpy/scipy only, no AnnData).

Everything here is vectorized over spots: the cost of a random field is one small FFT on a regular grid whose
resolution follows the length scale (not the number of spots) plus one spline interpolation per field.
"""

from __future__ import annotations

import numbers

import numpy as np

LAYOUTS = ("hex", "square")

# Row distance of a hexagonal lattice relative to the spot spacing (6 neighbours at distance `spacing`).
_HEX_ROW = np.sqrt(3.0) / 2.0


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"Expected `{name}` to be an integer >= {minimum}, found `{value!r}`."
        raise TypeError(msg)
    if value < minimum:
        msg = f"Expected `{name}` >= {minimum}, found `{value}`."
        raise ValueError(msg)
    return int(value)


def check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        kind = "non-negative" if allow_zero else "positive"
        msg = f"Expected `{name}` to be a finite {kind} number, found `{value!r}`."
        raise TypeError(msg)
    if value < 0 or (value == 0 and not allow_zero):
        msg = f"Expected `{name}` {'>=' if allow_zero else '>'} 0, found `{value}`."
        raise ValueError(msg)
    return float(value)


def check_choice(value, name: str, options: tuple[str, ...]) -> str:
    """One of ``options`` (case-insensitive)."""
    if not isinstance(value, str) or value.lower() not in options:
        msg = f"Unknown {name} `{value!r}`: expected one of {list(options)}."
        raise ValueError(msg)
    return value.lower()


def check_seed(seed) -> int:
    """A non-negative integer seed; ``None`` draws one (so that it can be recorded)."""
    if seed is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    msg = f"Expected `seed` to be a non-negative integer (or None for a random one), found `{seed!r}`."
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(msg)
    if seed < 0:
        raise ValueError(msg)
    return int(seed)


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


def default_length_scale(coords: np.ndarray, spacing: float) -> float:
    """A sixth of the longest side of the bounding box, but at least three spot spacings."""
    extent = float(np.ptp(coords, axis=0).max()) if coords.shape[0] > 1 else 0.0
    return max(extent / 6.0, 3.0 * spacing)


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
    cell = ell / 4.0
    pad = 3.0 * ell
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
