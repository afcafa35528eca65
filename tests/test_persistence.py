"""Superlevel persistence on the Freudenthal triangulation, checked against gudhi and hand-worked cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from smoother._core.persistence import (
    barcode,
    coords_to_grid,
    partial_sum_barcode_lengths,
    superlevel_persistence,
)

gudhi = pytest.importorskip("gudhi")


def freudenthal_simplices(nx, ny):
    """Vertices, edges and triangles of the Freudenthal triangulation of an nx x ny grid (flat indices)."""
    idx = np.arange(nx * ny).reshape(nx, ny)
    edges = [
        np.column_stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()]),
        np.column_stack([idx[:-1, :].ravel(), idx[1:, :].ravel()]),
        np.column_stack([idx[:-1, :-1].ravel(), idx[1:, 1:].ravel()]),
    ]
    tris = [
        np.column_stack([idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel()]),
        np.column_stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()]),
    ]
    return np.concatenate(edges), np.concatenate(tris)


def gudhi_bars(F):
    """Finite superlevel bars (birth, death), length > 0, per dimension, from gudhi's lower-star of -F."""
    F = np.asarray(F, dtype=float)
    nx, ny = F.shape
    g = -F.ravel()
    st = gudhi.SimplexTree()
    for v in range(nx * ny):
        st.insert([v], filtration=g[v])
    edges, tris = freudenthal_simplices(nx, ny)
    for e in edges:
        st.insert(e.tolist(), filtration=g[e].max())
    for t in tris:
        st.insert(t.tolist(), filtration=g[t].max())
    st.make_filtration_non_decreasing()
    st.persistence(homology_coeff_field=2, min_persistence=-1)
    out = {}
    for k in (0, 1):
        iv = st.persistence_intervals_in_dimension(k)
        iv = iv[np.isfinite(iv[:, 1])] if len(iv) else np.zeros((0, 2))
        bars = -iv  # superlevel units: birth = -b, death = -d
        bars = bars[bars[:, 0] > bars[:, 1]]
        out[k] = bars
    return out


def as_multiset(bars):
    bars = np.asarray(bars, dtype=float).reshape(-1, 2)
    return sorted(map(tuple, np.round(bars, 12)))


def assert_same_as_gudhi(F):
    ref = gudhi_bars(F)
    for k in (0, 1):
        assert as_multiset(barcode(F, k)) == as_multiset(ref[k]), (k, F)


# ---------------------------------------------------------------------------------------------------------- gudhi


@pytest.mark.parametrize("seed", range(4))
def test_random_grids_match_gudhi(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        nx, ny = rng.integers(1, 9, size=2)
        kind = rng.integers(3)
        if kind == 0:
            F = rng.random((nx, ny))
        elif kind == 1:  # heavy ties
            F = rng.integers(0, 3, size=(nx, ny)).astype(float)
        else:
            F = rng.integers(-2, 6, size=(nx, ny)).astype(float)
        assert_same_as_gudhi(F)


def test_larger_nonsquare_grids_match_gudhi():
    rng = np.random.default_rng(7)
    for shape in [(13, 29), (30, 11), (1, 40), (40, 1), (20, 20)]:
        for F in (rng.random(shape), rng.integers(0, 4, size=shape).astype(float)):
            assert_same_as_gudhi(F)


def test_pairs_point_at_birth_and_death_vertices():
    rng = np.random.default_rng(3)
    F = rng.random((9, 14))
    pairs = superlevel_persistence(F)
    for k in (0, 1):
        p = pairs[k]
        assert p.dtype == np.int64 and p.shape[1] == 2
        assert np.all(F.ravel()[p[:, 0]] > F.ravel()[p[:, 1]])
        assert as_multiset(F.ravel()[p]) == as_multiset(gudhi_bars(F)[k])
    # H0 birth vertices are local maxima on the 6-neighbourhood
    b = pairs[0][:, 0]
    i, j = np.divmod(b, F.shape[1])
    for di, dj in [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1)]:
        ii, jj = i + di, j + dj
        ok = (ii >= 0) & (jj >= 0) & (ii < F.shape[0]) & (jj < F.shape[1])
        assert np.all(F[i[ok], j[ok]] >= F[ii[ok], jj[ok]])


def test_deterministic_and_input_untouched():
    rng = np.random.default_rng(1)
    F = rng.integers(0, 2, size=(12, 7)).astype(float)
    F0 = F.copy()
    a = superlevel_persistence(F, keep_zero=True)
    b = superlevel_persistence(F, keep_zero=True)
    for k in (0, 1):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(F, F0)
    # zero-length pairs exist with ties, and are dropped by default
    assert len(a[0]) > len(superlevel_persistence(F)[0])


def test_torch_input_is_detached_copy():
    torch = pytest.importorskip("torch")
    F = torch.rand(6, 5, dtype=torch.float32, requires_grad=True)
    bars = barcode(F, 0)
    assert as_multiset(bars) == as_multiset(gudhi_bars(F.detach().double().numpy())[0])


# ---------------------------------------------------------------------------------------------------------- hand-worked


def test_single_peak_has_no_finite_bar():
    x = np.arange(7)
    F = -((x[:, None] - 3.0) ** 2 + (x[None, :] - 2.0) ** 2)
    assert barcode(F, 0).shape == (0, 2)
    assert barcode(F, 1).shape == (0, 2)


def test_two_bumps_merge_at_saddle():
    F = np.zeros((3, 7))
    F[1, 1], F[1, 5] = 5.0, 3.0
    F[1, 2:5] = [2.0, 1.5, 2.0]  # ridge: the saddle is the lowest ridge cell, 1.5
    np.testing.assert_allclose(barcode(F, 0), [[3.0, 1.5]])
    assert partial_sum_barcode_lengths(F, 0, skip=1) == 0.0
    assert partial_sum_barcode_lengths(F, 0, skip=0) == pytest.approx(1.5)


def test_three_bumps_elder_rule():
    F = np.zeros((1, 9))
    F[0] = [1, 9, 2, 7, 3, 8, 0, 4, 0]
    # 9 lives forever; 8 dies at 3 (joins 7's side? no: 7 and 8 merge at 3, 7 dies), 8 dies at 2, 4 dies at 0
    np.testing.assert_allclose(as_multiset(barcode(F, 0)), as_multiset([[7, 3], [8, 2], [4, 0]]))


def test_ring_with_gate_spec_example():
    F = np.array([[0, 0, 0, 0, 0], [0, 4, 4, 4, 0], [0, 4, 1, 2, 0], [0, 4, 4, 4, 0], [0, 0, 0, 0, 0]], float)
    assert barcode(F, 0).shape == (0, 2)
    np.testing.assert_allclose(barcode(F, 1), [[2.0, 1.0]])
    assert partial_sum_barcode_lengths(F, 1, skip=0) == 1.0
    assert partial_sum_barcode_lengths(F, 1, skip=1) == 0.0


def test_two_holes():
    F = np.full((5, 7), 5.0)
    F[2, 2], F[2, 4] = 1.0, 2.0
    F[0, :] = F[-1, :] = F[:, 0] = F[:, -1] = 0.0
    F[1:4, 1:6] = np.where(F[1:4, 1:6] == 5.0, 5.0, F[1:4, 1:6])
    np.testing.assert_allclose(as_multiset(barcode(F, 1)), as_multiset([[5, 1], [5, 2]]))
    assert partial_sum_barcode_lengths(F, 1, skip=1) == pytest.approx(3.0)  # the longer (4) is skipped


def test_hole_that_splits():
    # one basin at level < 3 with two pits (0.5 and 1.0) separated by a wall at 2: the loop around the basin
    # closes at 4 (ring), and the wall splits it into two holes when the level drops below 2
    F = np.full((5, 7), 4.0)
    F[0, :] = F[-1, :] = F[:, 0] = F[:, -1] = -1.0
    F[1:4, 1:6] = 4.0
    F[2, 2], F[2, 3], F[2, 4] = 0.5, 2.0, 1.0
    np.testing.assert_allclose(as_multiset(barcode(F, 1)), as_multiset([[4, 0.5], [2, 1.0]]))
    assert_same_as_gudhi(F)


def test_regions_touching_border():
    # a U-shaped region open to the border encloses nothing; a ring in the corner using the border does
    F = np.zeros((5, 5))
    F[1:4, 1] = F[3, 1:4] = F[1:4, 3] = 3.0  # U open at the top
    assert barcode(F, 1).shape == (0, 2)
    G = np.zeros((4, 4))
    G[0, :3] = G[:3, 0] = G[2, :3] = G[:3, 2] = 3.0  # ring touching two borders, hole at (1, 1)
    np.testing.assert_allclose(barcode(G, 1), [[3.0, 0.0]])
    assert barcode(G, 0).shape == (0, 2)


def test_diagonal_adjacency_spec_example():
    main_diag = np.array([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], float)
    anti_diag = np.array([[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0]], float)
    assert barcode(main_diag, 0).shape == (0, 2)
    np.testing.assert_allclose(barcode(anti_diag, 0), [[1.0, 0.0]])
    # dually, two pits touching along the main diagonal are one hole; along the anti-diagonal, two holes
    F = np.full((5, 5), 3.0)
    F[1, 1], F[2, 2] = 0.0, 1.0
    np.testing.assert_allclose(barcode(F, 1), [[3.0, 0.0]])
    G = np.full((5, 5), 3.0)
    G[1, 2], G[2, 1] = 0.0, 1.0
    np.testing.assert_allclose(as_multiset(barcode(G, 1)), as_multiset([[3.0, 0.0], [3.0, 1.0]]))
    assert_same_as_gudhi(F)
    assert_same_as_gudhi(G)


def test_single_row_column_and_cell():
    np.testing.assert_allclose(barcode([[3.0, 1.0, 2.0]], 0), [[2.0, 1.0]])
    np.testing.assert_allclose(barcode([[3.0], [1.0], [2.0]], 0), [[2.0, 1.0]])
    assert barcode([[1.0]], 0).shape == (0, 2)
    assert barcode([[1.0]], 1).shape == (0, 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="2D"):
        superlevel_persistence(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        superlevel_persistence(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="dimensions 0 and 1"):
        superlevel_persistence(np.zeros((2, 2)), dims=(2,))


# ---------------------------------------------------------------------------------------------------------- grids


def visium_offsets(nrow, ncol):
    r, c = np.meshgrid(np.arange(nrow), np.arange(ncol), indexing="ij")
    r, c = r.ravel(), c.ravel()
    keep = (r + c) % 2 == 0
    return np.column_stack([r[keep], c[keep]])


def test_coords_to_grid_visium_offsets_fill_the_grid():
    rc = visium_offsets(8, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = coords_to_grid(rc)
    assert g.min() == 0 and g.shape == rc.shape
    assert tuple(g.max(0) + 1) == (8, 6)
    assert len(np.unique(g, axis=0)) == len(g)
    # same-row hex neighbours (col +- 2) are grid neighbours
    np.testing.assert_array_equal(g[:, 1], rc[:, 1] // 2)
    # odd-parity offsets work too
    g2 = coords_to_grid(rc + [0, 1])
    assert tuple(g2.max(0) + 1) == (8, 6) and len(np.unique(g2, axis=0)) == len(g2)


def test_coords_to_grid_square_layout_warns_on_checkerboard():
    rc = visium_offsets(8, 12)
    with pytest.warns(UserWarning, match="empty"):
        g = coords_to_grid(rc, layout="square")
    np.testing.assert_array_equal(g, rc)


def test_coords_to_grid_float_lattices():
    rng = np.random.default_rng(0)
    # rotated, scaled, shifted square lattice
    xx, yy = np.meshgrid(np.arange(9.0), np.arange(6.0), indexing="ij")
    sq = np.column_stack([xx.ravel(), yy.ravel()])
    th = 0.2
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    pts = (sq * 13.7) @ R.T + [100.0, 50.0] + rng.normal(0, 0.3, sq.shape)
    g = coords_to_grid(pts)
    assert len(np.unique(g, axis=0)) == len(g)
    assert sorted(g.max(0) + 1) == [6, 9]
    # hex lattice in pixel units (Visium-like spacing), rotated slightly
    rc = visium_offsets(10, 16)
    pix = np.column_stack([rc[:, 1] * 50.0, rc[:, 0] * 50.0 * np.sqrt(3)])  # col spacing 100 px
    pix = pix @ np.array([[np.cos(0.05), -np.sin(0.05)], [np.sin(0.05), np.cos(0.05)]]).T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gh = coords_to_grid(pix)
    assert len(np.unique(gh, axis=0)) == len(gh)
    assert np.prod(gh.max(0) + 1) == len(gh)  # a dense grid


def test_coords_to_grid_errors():
    with pytest.raises(ValueError, match="shape"):
        coords_to_grid(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="layout"):
        coords_to_grid(np.zeros((4, 2)), layout="tri")
    with pytest.raises(ValueError, match="more than one spot"):
        coords_to_grid(np.array([[0, 0], [0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="do not lie on"):
        coords_to_grid(np.random.default_rng(0).random((50, 2)) * 100)
    with pytest.raises(ValueError, match="parity"):
        coords_to_grid(np.array([[0, 0], [0, 1], [1, 1]]), layout="hex")


def test_pure_python_kernel_matches_compiled():
    from smoother._core import persistence as P

    rng = np.random.default_rng(4)
    for shape in [(5, 7), (1, 6), (6, 1), (8, 8)]:
        F = rng.integers(0, 4, size=shape).astype(float)
        order = np.argsort(-F.ravel(), kind="stable").astype(np.int64)
        for border, o in ((False, order), (True, order[::-1].copy())):
            b1, d1, m1 = P._kernel()(o, *shape, border, P._DI, P._DJ)
            b2, d2, m2 = P._lower_star_h0(o, *shape, border, P._DI, P._DJ)
            assert m1 == m2
            np.testing.assert_array_equal(b1[:m1], b2[:m2])
            np.testing.assert_array_equal(d1[:m1], d2[:m2])


def _grid_neighbour_distances(grid, pos):
    """Distances in `pos` between spots that are 4-neighbours on `grid`."""
    key = {tuple(g): i for i, g in enumerate(grid)}
    out = []
    for i, (x, y) in enumerate(grid):
        for nb in ((x + 1, y), (x, y + 1)):
            j = key.get(nb)
            if j is not None:
                out.append(np.linalg.norm(pos[i] - pos[j]))
    return np.array(out)


def test_coords_to_grid_neighbours_are_lattice_neighbours():
    rc = visium_offsets(12, 20)
    pos = np.column_stack([rc[:, 1] * 50.0, rc[:, 0] * 50.0 * np.sqrt(3)]) * [1.0, 1.02]  # anisotropic pixels
    g = coords_to_grid(pos)
    d = _grid_neighbour_distances(g, pos)
    assert len(d) > 1.5 * len(g)  # a dense, connected grid
    assert d.max() < 1.3 * 100.0


def test_coords_to_grid_real_visium_pixels(shared_data_dir):
    import pandas as pd

    pos = pd.read_csv(shared_data_dir / "DLPFC_151673_coords.txt", sep=" ").to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = coords_to_grid(pos)
    assert len(np.unique(g, axis=0)) == len(g)
    fill = len(g) / np.prod(g.max(0) + 1)
    assert fill > 0.7
    d = _grid_neighbour_distances(g, pos)
    spacing = np.median(d)
    assert d.max() < 1.3 * spacing and len(d) > 1.5 * len(g)


def test_hypothesis_tie_heavy_grids_match_gudhi():
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    shapes = st.tuples(st.integers(1, 7), st.integers(1, 7))

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(shapes.flatmap(lambda s: arrays(np.int8, s, elements=st.integers(-2, 2))))
    def check(F):
        assert_same_as_gudhi(F.astype(float))

    assert hyp is not None
    check()
