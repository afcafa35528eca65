"""Exact persistent homology of 2D images on the Freudenthal triangulation, and grids for it.

This replaces the ``topologylayer`` backend of the classic ``TopLoss`` (see ``spec/toploss.md``).

The complex
    Vertices are the cells ``(i, j)`` of an ``nx x ny`` array; edges join ``(i, j)-(i, j+1)``,
    ``(i, j)-(i+1, j)`` and the diagonal ``(i, j)-(i+1, j+1)``; triangles are
    ``{(i, j), (i, j+1), (i+1, j+1)}`` and ``{(i, j), (i+1, j), (i+1, j+1)}``. Every interior vertex has six
    neighbours; the anti-diagonal ``(i, j+1)-(i+1, j)`` is not an edge.

The filtration
    Superlevel sets :math:`K_t = \\{\\sigma : F(v) \\ge t\\ \\forall v \\in \\sigma\\}` for decreasing ``t``.
    Ties between equal values are broken deterministically by the flat (C-order) index, lower index first, so
    the filtration is a total order on vertices and every result below is reproducible.

H0
    Union-find over the vertices in filtration order (the lower-star of ``-F``): a vertex with no earlier
    neighbour is born; when a vertex joins two components, the younger one (elder rule) dies there.
H1
    By Alexander duality on this triangulation, the H1 bars of the superlevel filtration of ``F`` are the H0
    bars of the *sublevel* filtration of ``F`` on the same 6-adjacency, with one extra vertex (born first)
    joined to every border cell; birth and death swap roles. The same union-find computes them.

Both run in :math:`O(n \\log n)` (one argsort) plus a near-linear union-find compiled with numba when it is
installed (a pure-Python fallback gives identical results, slowly).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from .._validation import as_float_array

__all__ = [
    "barcode",
    "coords_to_grid",
    "partial_sum_barcode_lengths",
    "superlevel_persistence",
]

# the six Freudenthal neighbours of (i, j)
_DI = np.array([0, 0, 1, -1, 1, -1], dtype=np.int64)
_DJ = np.array([1, -1, 0, 0, 1, -1], dtype=np.int64)


def _lower_star_h0(order, nx, ny, border_vertex, di, dj):  # pragma: no cover - compiled by numba
    """Union-find over vertices processed in ``order`` on the Freudenthal 6-adjacency.

    Returns ``(births, deaths, n_pairs)``: vertex ``births[k]`` (the root of the younger component) dies when
    vertex ``deaths[k]`` joins it to an older component. With ``border_vertex`` an extra vertex (index
    ``nx * ny``), present from the start, is joined to every border cell.
    """
    n = nx * ny
    parent = np.empty(n + 1, dtype=np.int64)
    pos = np.empty(n + 1, dtype=np.int64)
    done = np.zeros(n + 1, dtype=np.bool_)
    for k in range(n + 1):
        parent[k] = k
    for k in range(n):
        pos[order[k]] = k
    pos[n] = -1
    done[n] = True
    births = np.empty(n, dtype=np.int64)
    deaths = np.empty(n, dtype=np.int64)
    npair = 0
    for k in range(n):
        v = order[k]
        done[v] = True
        i = v // ny
        j = v - i * ny
        on_border = i == 0 or j == 0 or i == nx - 1 or j == ny - 1
        n_nb = 7 if (border_vertex and on_border) else 6
        for t in range(n_nb):
            if t == 6:
                u = n
            else:
                ii = i + di[t]
                jj = j + dj[t]
                if ii < 0 or jj < 0 or ii >= nx or jj >= ny:
                    continue
                u = ii * ny + jj
                if not done[u]:
                    continue
            # roots with path halving
            ru = u
            while parent[ru] != ru:
                parent[ru] = parent[parent[ru]]
                ru = parent[ru]
            rv = v
            while parent[rv] != rv:
                parent[rv] = parent[parent[rv]]
                rv = parent[rv]
            if ru == rv:
                continue
            if pos[ru] < pos[rv]:
                elder = ru
                young = rv
            else:
                elder = rv
                young = ru
            parent[young] = elder
            if young != v:  # v merely joining a component is no bar
                births[npair] = young
                deaths[npair] = v
                npair += 1
    return births, deaths, npair


_KERNEL: Any = None


def _kernel():
    """The union-find kernel, compiled with numba on first use (pure Python when numba is missing)."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            from .._settings import logger

            logger.warning("numba is not installed: persistence runs in pure Python (slow).")
            _KERNEL = _lower_star_h0
        else:
            probe = (np.arange(4, dtype=np.int64), 2, 2, True, _DI, _DJ)
            try:  # compile now; an unwritable cache location must not break the computation
                kern = numba.njit(cache=True, nogil=True)(_lower_star_h0)
                kern(*probe)
            except Exception:  # noqa: BLE001  (numba raises various errors when it cannot cache)
                kern = numba.njit(cache=False, nogil=True)(_lower_star_h0)
                kern(*probe)
            _KERNEL = kern
    return _KERNEL


def _as_image(F: Any) -> np.ndarray:
    if hasattr(F, "detach"):  # torch tensor
        F = F.detach().cpu().double().numpy()
    arr = np.array(F, dtype=np.float64, copy=True)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        msg = f"Expected a non-empty 2D array (an image), found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        msg = "The image contains NaN or inf values; persistence needs finite values."
        raise ValueError(msg)
    return arr


def superlevel_persistence(F: Any, dims: tuple[int, ...] = (0, 1), *, keep_zero: bool = False) -> dict[int, np.ndarray]:
    """Superlevel-set persistence pairs of a 2D image on the Freudenthal triangulation.

    Parameters
    ----------
    F
        Image of shape ``(nx, ny)`` (numpy array or torch tensor; a detached float64 CPU copy is used).
    dims
        Homology dimensions to compute, a subset of ``(0, 1)``.
    keep_zero
        Keep pairs whose birth and death values are equal (ties). They are dropped by default: they carry no
        length and no gradient.

    Returns
    -------
    ``{k: pairs}`` where ``pairs`` is an ``(n_bars, 2)`` int64 array of flat (C-order) vertex indices
    ``[birth_vertex, death_vertex]`` of the finite dimension-``k`` bars, with
    ``F.flat[birth_vertex] >= F.flat[death_vertex]``. The essential H0 bar (born at the global maximum) is not
    included; it is ``np.argmax(F)`` under the tie-breaking rule.

    Notes
    -----
    Ties are broken by flat index (lower first), which makes the output deterministic.
    """
    dims = tuple(int(d) for d in dims)
    if any(d not in (0, 1) for d in dims):
        msg = f"Only homology dimensions 0 and 1 exist for a 2D image, found dims={dims}."
        raise ValueError(msg)
    arr = _as_image(F)
    nx, ny = arr.shape
    flat = arr.ravel()
    # descending values, ties by ascending flat index: argsort of -F is stable
    order = np.argsort(-flat, kind="stable").astype(np.int64)
    kern = _kernel()
    out: dict[int, np.ndarray] = {}
    for d in dims:
        if d == 0:
            b, de, m = kern(order, nx, ny, False, _DI, _DJ)
            pairs = np.column_stack([b[:m], de[:m]])
        else:
            b, de, m = kern(order[::-1].copy(), nx, ny, True, _DI, _DJ)
            # sublevel H0 pair (min b, merge vertex de) is the superlevel H1 bar (birth de, death b)
            pairs = np.column_stack([de[:m], b[:m]])
        if not keep_zero and len(pairs):
            pairs = pairs[flat[pairs[:, 0]] > flat[pairs[:, 1]]]
        out[d] = pairs
    return out


def barcode(F: Any, dim: int) -> np.ndarray:
    """Finite bars ``(birth, death)`` in F units (``birth > death``) of dimension ``dim``; shape ``(n_bars, 2)``."""
    arr = _as_image(F)
    pairs = superlevel_persistence(arr, (dim,))[dim]
    return arr.ravel()[pairs]


def partial_sum_barcode_lengths(F: Any, dim: int, skip: int = 0) -> float:
    """Sum of the finite dimension-``dim`` bar lengths except the ``skip`` longest (numpy, no gradient)."""
    bars = barcode(F, dim)
    lengths = np.sort(bars[:, 0] - bars[:, 1])[::-1]
    return float(lengths[int(skip) :].sum())


# ----------------------------------------------------------------------------------------------------------
# coordinates -> 4-connected grid


def _is_integer_valued(a: np.ndarray) -> bool:
    return bool(np.all(np.abs(a - np.round(a)) < 1e-8))


def _lattice_directions(coords: np.ndarray, n_dir: int) -> list[np.ndarray] | None:
    """Mean nearest-neighbour difference vector along each of the ``n_dir`` lattice directions.

    ``n_dir`` is 2 for a square lattice (directions 90 degrees apart) and 3 for a hexagonal one (60 degrees).
    Works for rotated, sheared and anisotropically scaled lattices. ``None`` when a direction is missing.
    """
    from scipy.spatial import cKDTree

    k = min(len(coords) - 1, 2 * n_dir)
    dist, nn = cKDTree(coords).query(coords, k=k + 1)
    dist, nn = dist[:, 1:], nn[:, 1:]
    first = dist[:, 0][dist[:, 0] > 0]
    if first.size == 0:
        msg = "All coordinates coincide; cannot infer a grid spacing."
        raise ValueError(msg)
    spacing = float(np.median(first))
    ok = (dist > 0) & (dist < 1.3 * spacing)
    vec = (coords[nn] - coords[:, None, :])[ok]
    ang = np.arctan2(vec[:, 1], vec[:, 0])
    period = np.pi / n_dir  # angle between lattice directions, as lines (mod pi)
    scale = 2 * np.pi / period
    base = np.angle(np.exp(1j * ang * scale).mean()) / scale
    out = []
    for m in range(n_dir):
        theta = base + m * period
        u = np.array([np.cos(theta), np.sin(theta)])
        proj = vec @ u
        along = np.abs(u[0] * vec[:, 1] - u[1] * vec[:, 0]) < 0.35 * np.abs(proj)
        if not along.any():
            return None
        out.append((vec[along] * np.sign(proj[along])[:, None]).mean(axis=0))
    return out


def _solve_lattice(coords: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> tuple[np.ndarray, float]:
    A = np.column_stack([a1, a2])
    if abs(np.linalg.det(A)) < 1e-9 * float(a1 @ a1):
        return np.zeros((len(coords), 2), dtype=np.int64), np.inf
    lat = np.linalg.solve(A, (coords - coords[0]).T).T
    idx = np.round(lat)
    resid = float(np.abs(lat - idx).max())
    idx = idx.astype(np.int64)
    return idx - idx.min(axis=0), resid


def _square_fit(coords: np.ndarray) -> tuple[np.ndarray, float]:
    """Grid indices of points on a square lattice, and the worst rounding residual (lattice units)."""
    dirs = _lattice_directions(coords, 2)
    if dirs is None:
        return np.zeros((len(coords), 2), dtype=np.int64), np.inf
    return _solve_lattice(coords, dirs[0], dirs[1])


def _hex_doubled(coords: np.ndarray) -> tuple[np.ndarray, float]:
    """Visium-style doubled offset indices ``(row, col)`` of points on a hex lattice, and the rounding residual.

    Axial coordinates ``(i, j)`` along two lattice directions 60 degrees apart become ``row = j``,
    ``col = 2 i + j``. Of the three choices of the row direction, the one giving the smallest grid is kept.
    """
    dirs = _lattice_directions(coords, 3)
    if dirs is None:
        return np.zeros((len(coords), 2), dtype=np.int64), np.inf
    cands = []
    for a1, a2 in ((dirs[0], dirs[1]), (dirs[1], dirs[2]), (dirs[2], -dirs[0])):
        ij, resid = _solve_lattice(coords, a1, a2)
        rc = np.column_stack([ij[:, 1], 2 * ij[:, 0] + ij[:, 1]])
        rc = rc - rc.min(axis=0)
        area = float(np.prod(_hex_to_grid(rc).max(axis=0) + 1))
        cands.append((rc, resid, area))
    tol = min(c[1] for c in cands) + 0.05
    rc, resid, _ = min((c for c in cands if c[1] <= tol), key=lambda c: c[2])
    return rc, resid


def _hex_to_grid(rc: np.ndarray) -> np.ndarray:
    """Doubled offset hex indices (``row + col`` of one parity) to a dense 4-connected grid ``(row, col // 2)``."""
    row = rc[:, 0] - rc[:, 0].min()
    col = rc[:, 1] - rc[:, 1].min()
    col = col + (row + col) % 2  # odd parity -> even parity, so that halving keeps row neighbours adjacent
    grid = np.column_stack([row, col // 2]).astype(np.int64)
    return grid - grid.min(axis=0)


def coords_to_grid(
    coords: Any,
    layout: Literal["auto", "hex", "square"] = "auto",
    *,
    max_empty_fraction: float = 0.5,
) -> np.ndarray:
    """Map spot coordinates to the cells of a 4-connected grid (the ``coords_xy`` that ``TopLoss`` takes).

    Use it before building a :class:`smoother.losses.TopLoss` on Visium spots or on any square or hexagonal
    lattice of positions; ``sm.tl.deconvolve(top_loss=...)`` calls it for you.

    Parameters
    ----------
    coords
        ``(n_spots, 2)`` coordinates: Visium ``array_row, array_col`` (hex offsets, ``row + col`` of one parity),
        integer grid indices, or positions (e.g. pixels, ``adata.obsm['spatial']``) on a square or hexagonal
        lattice, possibly rotated, sheared or scaled differently along the axes.
    layout
        ``'hex'`` for a hexagonal lattice (Visium), ``'square'`` for a square lattice, ``'auto'`` to decide:
        integer coordinates whose ``x + y`` all share one parity (and that use both row parities) are hex
        offsets; other coordinates are fitted to both lattices (basis vectors estimated from nearest-neighbour
        differences) and the one with the smaller rounding error wins.
    max_empty_fraction
        Warn when at least this fraction of the bounding grid has no spot.

    Returns
    -------
    ``(n_spots, 2)`` int64 array of grid indices ``(x, y)`` starting at 0. Hex offsets map to
    ``(row, col // 2)``: neighbours in a row stay neighbours, and each spot keeps grid neighbours in the rows
    above and below, so a full Visium slide (78 x 128 offsets) becomes a dense 78 x 64 grid instead of a
    checkerboard with half of its cells empty.

    Raises
    ------
    ValueError
        When two spots fall on the same cell (coordinates are not on one lattice) or the input is malformed.

    Examples
    --------
    Visium array coordinates are hex offsets (``row + col`` of one parity); each row keeps its neighbours:

    >>> import numpy as np
    >>> from smoother.utils import coords_to_grid
    >>> rows, cols = np.meshgrid(np.arange(4), np.arange(8), indexing="ij")
    >>> on = (rows + cols) % 2 == 0
    >>> grid = coords_to_grid(np.column_stack([rows[on], cols[on]]))
    >>> grid.shape, grid.max(axis=0).tolist()
    ((16, 2), [3, 3])
    """
    arr = as_float_array(coords, "coords", expected="a numeric array of shape (n_spots, 2)")
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        msg = f"Expected `coords` of shape (n_spots, 2), found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        msg = "`coords` contains NaN or inf; drop or fix those spots first."
        raise ValueError(msg)
    if layout not in ("auto", "hex", "square"):
        msg = f"Unknown `layout` {layout!r}: expected one of 'auto', 'hex', 'square'."
        raise ValueError(msg)

    # integer indices (grid or Visium array offsets) have nearest neighbours at distance 1, sqrt(2) or 2;
    # integer-valued positions with larger spacing (e.g. pixels) are fitted to a lattice like float ones
    integer = _is_integer_valued(arr)
    if integer and arr.shape[0] > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(arr).query(arr, k=2)
        integer = bool(np.median(d[:, 1]) <= 2.0)
    if integer:
        ia = np.round(arr).astype(np.int64)
        par = (ia[:, 0] + ia[:, 1]) % 2
        hex_like = arr.shape[0] > 1 and par.min() == par.max() and len(np.unique(ia[:, 0] % 2)) == 2
        if layout == "auto":
            layout = "hex" if hex_like else "square"
        if layout == "hex":
            if not par.min() == par.max():
                msg = (
                    "`layout='hex'` expects Visium-style offsets where `row + col` has one parity for all "
                    "spots; these integer coordinates are not. Use layout='square'."
                )
                raise ValueError(msg)
            grid = _hex_to_grid(ia)
        else:
            grid = ia - ia.min(axis=0)
    elif arr.shape[0] <= 2:
        grid = np.array([[0, 0], [0, 1]], dtype=np.int64)[: arr.shape[0]]
    else:
        sq, sq_res = _square_fit(arr) if layout in ("auto", "square") else (None, np.inf)
        hx, hx_res = _hex_doubled(arr) if layout in ("auto", "hex") else (None, np.inf)
        if layout == "auto":
            layout = "hex" if hx_res < sq_res else "square"
        res = hx_res if layout == "hex" else sq_res
        if not res < 0.35:
            msg = (
                f"The coordinates do not lie on a {layout} lattice (worst spot is {res:.2f} lattice spacings "
                "off). TopLoss needs spots on a grid: pass Visium `array_row, array_col` or grid indices, "
                "or bin irregular positions (e.g. cells) to a grid first."
            )
            raise ValueError(msg)
        if layout == "hex":
            grid = _hex_to_grid(hx)
        else:
            grid = sq
        grid = grid - grid.min(axis=0)

    keys = grid[:, 0] * (int(grid[:, 1].max()) + 1) + grid[:, 1]
    uniq, counts = np.unique(keys, return_counts=True)
    if counts.max() > 1:
        msg = (
            f"{int((counts > 1).sum())} grid cell(s) received more than one spot with layout='{layout}': "
            "the coordinates do not lie on one lattice. Pass integer lattice indices (e.g. Visium "
            "`adata.obs[['array_row', 'array_col']]`) or bin the spots to a grid first."
        )
        raise ValueError(msg)
    shape = grid.max(axis=0) + 1
    empty = 1.0 - arr.shape[0] / float(np.prod(shape))
    if empty >= max_empty_fraction:
        warnings.warn(
            f"The {shape[0]} x {shape[1]} grid leaves {empty:.0%} of its cells empty; empty cells are padded "
            "with the minimum value and can dominate a topological loss. Check the `layout` (Visium array "
            "coordinates need layout='hex').",
            UserWarning,
            stacklevel=2,
        )
    return grid
