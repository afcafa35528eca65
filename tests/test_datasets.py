"""sm.datasets: lattices, simulated fields and cell-type mixtures with ground truth."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

import smoother as sm

PATTERNS = ["zones", "donut", "gp", "blobs"]


def _edges(coords, spacing=1.0):
    """Pairs of lattice neighbours (distance == spacing)."""
    pairs = cKDTree(coords).query_pairs(spacing * 1.001, output_type="ndarray")
    return pairs[:, 0], pairs[:, 1]


def _interior(coords, margin):
    lo, hi = coords.min(0), coords.max(0)
    return np.all((coords > lo + margin) & (coords < hi - margin), axis=1)


# ---------------------------------------------------------------- lattice


@pytest.mark.parametrize("n", [1, 2, 7, 100, 997, 2500])
@pytest.mark.parametrize("layout", ["hex", "square"])
def test_lattice_exact_count_and_nearly_square(n, layout):
    xy = sm.datasets.lattice(n, layout)
    assert xy.shape == (n, 2)
    assert xy.dtype == np.float64
    assert len(np.unique(xy, axis=0)) == n  # no duplicate points
    if n >= 100:
        w, h = np.ptp(xy, axis=0)
        assert 0.8 < w / h < 1.25


@pytest.mark.parametrize("spacing", [1.0, 2.5])
def test_hex_lattice_has_six_neighbours_at_spacing(spacing):
    xy = sm.datasets.lattice(900, "hex", spacing=spacing)
    tree = cKDTree(xy)
    dist, _ = tree.query(xy, k=8)
    inner = _interior(xy, 1.5 * spacing)
    assert inner.sum() > 600
    # nearest neighbour distance is exactly `spacing`, 6 of them, the 7th is farther (sqrt(3) * spacing)
    np.testing.assert_allclose(dist[inner, 1:7], spacing, rtol=1e-12)
    np.testing.assert_allclose(dist[inner, 7], np.sqrt(3) * spacing, rtol=1e-12)
    # boundary spots never have a neighbour closer than `spacing`
    assert dist[:, 1].min() == pytest.approx(spacing)
    # row distance sqrt(3)/2 * spacing, odd rows offset by half a spacing
    ys = np.unique(xy[:, 1])
    np.testing.assert_allclose(np.diff(ys), spacing * np.sqrt(3) / 2)


def test_square_lattice_has_four_neighbours():
    xy = sm.datasets.lattice(400, "square", spacing=2.0)
    dist, _ = cKDTree(xy).query(xy, k=6)
    inner = _interior(xy, 2.5)
    np.testing.assert_allclose(dist[inner, 1:5], 2.0)
    np.testing.assert_allclose(dist[inner, 5], 2.0 * np.sqrt(2))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (sm.datasets.lattice, {"n_spots": 10, "layout": "triangle"}, r"layout.*\['hex', 'square'\]"),
        (sm.datasets.lattice, {"n_spots": 0}, "n_spots"),
        (sm.datasets.lattice, {"n_spots": 10, "spacing": 0.0}, "spacing"),
        (sm.datasets.simulate_field, {"pattern": "stripes"}, r"pattern.*\['zones', 'donut', 'gp', 'blobs'\]"),
        (sm.datasets.simulate_field, {"noise": "zip"}, r"noise.*\['gaussian', 'poisson', 'nb'\]"),
        (sm.datasets.simulate_field, {"layout": "tri"}, "layout"),
        (sm.datasets.simulate_field, {"n_spots": 0}, "n_spots"),
        (sm.datasets.simulate_field, {"n_genes": 0}, "n_genes"),
        (sm.datasets.simulate_field, {"n_zones": 0}, "n_zones"),
        (sm.datasets.simulate_field, {"noise_level": -1.0}, "noise_level"),
        (sm.datasets.simulate_field, {"noise": "nb", "noise_level": 0.0}, "noise_level"),
        (sm.datasets.simulate_field, {"length_scale": -2.0}, "length_scale"),
        (sm.datasets.simulate_field, {"seed": -1}, "seed"),
        (sm.datasets.simulate_mixture, {"n_types": 5, "n_genes": 4}, "n_genes"),
        (sm.datasets.simulate_mixture, {"n_types": 0}, "n_types"),
        (sm.datasets.simulate_mixture, {"n_cells_per_type": 0}, "n_cells_per_type"),
        (sm.datasets.simulate_mixture, {"depth": 0}, "depth"),
        (sm.datasets.simulate_mixture, {"noise": "zip"}, "noise"),
    ],
)
def test_bad_arguments_raise_value_error(func, kwargs, match):
    with pytest.raises(ValueError, match=match):
        func(**kwargs)


@pytest.mark.parametrize("kwargs", [{"n_spots": 10.5}, {"n_spots": True}, {"seed": "a"}, {"n_genes": "3"}])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        sm.datasets.simulate_field(**kwargs)


# ---------------------------------------------------------------- simulate_field


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("layout", ["hex", "square"])
def test_field_structure(pattern, layout):
    a = sm.datasets.simulate_field(300, layout=layout, pattern=pattern, n_genes=6, seed=3)
    assert a.shape == (300, 6)
    assert a.X.dtype == np.float32 and a.layers["truth"].dtype == np.float32
    assert isinstance(a.X, np.ndarray)
    assert list(a.var_names[:2]) == ["gene_0", "gene_1"] and a.obs_names[-1] == "spot_299"
    np.testing.assert_array_equal(a.obsm["spatial"], sm.datasets.lattice(300, layout))
    params = a.uns["simulation"]
    assert params["pattern"] == pattern and params["layout"] == layout and params["seed"] == 3
    assert params["length_scale"] > 0
    # truth standardized per gene; genes differ from one another
    t = a.layers["truth"]
    np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(0), 1, rtol=1e-4)
    corr = np.corrcoef(t.T)
    assert np.abs(corr[np.triu_indices(6, 1)]).min() < 0.99
    assert ("zone" in a.obs) == (pattern == "zones")


def test_zones_labels_match_truth():
    a = sm.datasets.simulate_field(1000, pattern="zones", n_zones=4, n_genes=5, noise_level=0.0)
    zone = a.obs["zone"]
    assert isinstance(zone.dtype, pd.CategoricalDtype)
    assert list(zone.cat.categories) == ["zone_0", "zone_1", "zone_2", "zone_3"]
    counts = zone.value_counts()
    assert counts.min() >= 240 and counts.max() <= 260  # equal-size layers
    t = pd.DataFrame(a.layers["truth"], index=a.obs_names)
    # truth is constant inside a zone and differs between zones
    assert t.groupby(zone.values, observed=True).std().to_numpy().max() < 1e-5
    assert t.groupby(zone.values, observed=True).mean().std().min() > 0.1
    # layers are bands: zone index increases with y in the middle column
    mid = np.abs(a.obsm["spatial"][:, 0] - np.median(a.obsm["spatial"][:, 0])) < 1.0
    codes = zone.cat.codes.to_numpy()[mid]
    order = np.argsort(a.obsm["spatial"][mid, 1])
    assert np.all(np.diff(codes[order]) >= 0)
    # noise_level=0 -> X equals the truth
    np.testing.assert_array_equal(a.X, a.layers["truth"])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_truth_is_spatially_smooth(pattern):
    a = sm.datasets.simulate_field(2500, pattern=pattern, n_genes=8, noise_level=0.5, seed=1)
    i, j = _edges(a.obsm["spatial"])
    t = a.layers["truth"]
    e = a.X - t
    d_truth = np.mean((t[i] - t[j]) ** 2)
    d_noise = np.mean((e[i] - e[j]) ** 2)
    assert d_noise == pytest.approx(2 * 0.25, rel=0.05)  # iid noise with sd 0.5
    if pattern == "zones":  # piecewise constant: jumps only across the few edges between layers
        assert np.mean(np.any(t[i] != t[j], axis=1)) < 0.1
        assert d_truth < 0.5 * d_noise
    else:
        assert d_truth < 0.1 * d_noise
    # ... while the truth varies across the tissue (not a constant)
    assert t.std() > 0.9


def test_gaussian_noise_level():
    a = sm.datasets.simulate_field(2000, pattern="gp", n_genes=10, noise_level=0.3, seed=2)
    resid = a.X - a.layers["truth"]
    assert resid.std() == pytest.approx(0.3, rel=0.03)
    assert abs(resid.mean()) < 0.01


def test_gp_has_squared_exponential_covariance():
    ell = 3.0
    a = sm.datasets.simulate_field(
        40_000, layout="square", pattern="gp", n_genes=4, length_scale=ell, noise_level=0, seed=0
    )
    xy, f = a.obsm["spatial"], a.X.astype(np.float64)
    pairs = cKDTree(xy).query_pairs(4.001, output_type="ndarray")
    lag = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    for h in (1.0, 2.0, 4.0):
        p = pairs[np.isclose(lag, h)]
        semivariogram = np.mean((f[p[:, 0]] - f[p[:, 1]]) ** 2) / 2
        # unit variance, correlation exp(-h^2 / (2 l^2))
        assert semivariogram == pytest.approx(1 - np.exp(-(h**2) / (2 * ell**2)), rel=0.1)


def test_length_scale_controls_smoothness():
    rough = sm.datasets.simulate_field(1600, pattern="gp", n_genes=4, length_scale=2.0, noise_level=0)
    smooth = sm.datasets.simulate_field(1600, pattern="gp", n_genes=4, length_scale=10.0, noise_level=0)
    i, j = _edges(rough.obsm["spatial"])
    d = [np.mean((x.X[i] - x.X[j]) ** 2) for x in (rough, smooth)]
    assert d[0] > 5 * d[1]
    assert rough.uns["simulation"]["length_scale"] == 2.0


@pytest.mark.parametrize("noise", ["poisson", "nb"])
def test_count_noise(noise):
    a = sm.datasets.simulate_field(3000, pattern="gp", n_genes=20, noise=noise, noise_level=0.5, seed=4)
    X, mu = a.X, a.layers["truth"].astype(np.float64)
    assert X.dtype == np.float32
    assert X.min() >= 0 and np.all(X == np.round(X))
    assert mu.min() > 0
    assert np.mean(X) == pytest.approx(np.mean(mu), rel=0.03)
    # variance around the mean: mu (Poisson) or mu + phi mu^2 (NB)
    r = (X - mu) ** 2 - mu
    if noise == "poisson":
        assert np.mean(r) / np.mean(mu) == pytest.approx(0, abs=0.05)
    else:
        assert np.sum(r) / np.sum(mu**2) == pytest.approx(0.5, rel=0.15)


def test_seed_reproducibility():
    kw = {"n_spots": 500, "pattern": "blobs", "n_genes": 5, "noise": "nb"}
    a, b = sm.datasets.simulate_field(seed=7, **kw), sm.datasets.simulate_field(seed=7, **kw)
    c = sm.datasets.simulate_field(seed=8, **kw)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.layers["truth"], b.layers["truth"])
    assert not np.array_equal(a.X, c.X)
    assert not np.array_equal(a.layers["truth"], c.layers["truth"])
    # seed=None draws a seed, records it, and the record reproduces the data
    d = sm.datasets.simulate_field(seed=None, **kw)
    e = sm.datasets.simulate_field(seed=d.uns["simulation"]["seed"], **kw)
    np.testing.assert_array_equal(d.X, e.X)


def test_field_h5ad_roundtrip(tmp_path):
    a = sm.datasets.simulate_field(200, pattern="zones", n_genes=4)
    path = tmp_path / "field.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.layers["truth"], b.layers["truth"])
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    pd.testing.assert_series_equal(a.obs["zone"], b.obs["zone"])
    assert dict(b.uns["simulation"]) == a.uns["simulation"]


def test_large_build_works():
    a = sm.datasets.simulate_field(100_000, pattern="gp", n_genes=2, seed=0)
    assert a.shape == (100_000, 2)
    assert np.isfinite(a.X).all()
    i, j = _edges(a.obsm["spatial"][:5000])
    t = a.layers["truth"][:5000]
    assert np.mean((t[i] - t[j]) ** 2) < 0.01  # length scale ~ 53 spacings at this size


# ---------------------------------------------------------------- simulate_mixture


@pytest.fixture(scope="module")
def mixture():
    return sm.datasets.simulate_mixture(900, n_types=4, n_genes=40, n_cells_per_type=30, depth=500.0, seed=5)


def test_mixture_structure(mixture):
    sp, ref = mixture
    assert sp.shape == (900, 40) and ref.shape == (120, 40)
    assert list(sp.var_names) == list(ref.var_names)
    assert sp.X.dtype == np.float32 and ref.X.dtype == np.float32 and sp.layers["truth"].dtype == np.float32
    assert sp.uns["cell_types"] == ["type_0", "type_1", "type_2", "type_3"]
    assert ref.uns["cell_types"] == sp.uns["cell_types"]
    props = sp.obsm["props_truth"]
    assert isinstance(props, pd.DataFrame)
    assert list(props.columns) == sp.uns["cell_types"] and props.index.equals(sp.obs_names)
    assert (props.to_numpy() >= 0).all()
    np.testing.assert_allclose(props.sum(1), 1.0, atol=1e-12)
    sig = sp.varm["signature_truth"]
    assert sig.shape == (40, 4) and (sig > 0).all()
    np.testing.assert_allclose(sig.sum(0), 1.0)
    np.testing.assert_array_equal(ref.varm["signature_truth"], sig)
    # truth = depth * props @ signatures^T
    np.testing.assert_allclose(sp.layers["truth"], 500.0 * props.to_numpy() @ sig.T, rtol=1e-5)
    # counts
    assert sp.X.min() >= 0 and np.all(sp.X == np.round(sp.X))
    assert ref.X.min() >= 0 and np.all(ref.X == np.round(ref.X))
    assert sp.X.sum(1).mean() == pytest.approx(500.0, rel=0.05)
    # reference cell types
    ct = ref.obs["cell_type"]
    assert isinstance(ct.dtype, pd.CategoricalDtype)
    assert list(ct.cat.categories) == sp.uns["cell_types"]
    assert (ct.value_counts() == 30).all()


def test_mixture_markers_and_reference(mixture):
    sp, ref = mixture
    sig = sp.varm["signature_truth"]
    # marker blocks of n_genes // n_types = 10 genes: highest relative expression in their own type
    rel = sig / sig.mean(1, keepdims=True)
    np.testing.assert_array_equal(rel.argmax(1), np.repeat(np.arange(4), 10))
    # reference cells are drawn around the signatures: per-type mean profiles recover them
    X = ref.X / ref.X.sum(1, keepdims=True)
    prof = pd.DataFrame(X).groupby(ref.obs["cell_type"].to_numpy(), observed=True).mean().to_numpy().T
    for t in range(4):
        assert np.corrcoef(np.log(prof[:, t] + 1e-4), np.log(sig[:, t]))[0, 1] > 0.9


def test_mixture_props_smooth_and_varied(mixture):
    sp, _ = mixture
    p = sp.obsm["props_truth"].to_numpy()
    i, j = _edges(sp.obsm["spatial"])
    assert np.mean(np.abs(p[i] - p[j])) < 0.2 * np.mean(np.abs(p[i] - p[np.random.default_rng(0).permutation(j)]))
    assert (p.argmax(1)[:, None] == np.arange(4)).any(0).all()  # every type dominates somewhere


@pytest.mark.parametrize("noise", ["nb", "gaussian"])
def test_mixture_noise_models(noise):
    sp, _ = sm.datasets.simulate_mixture(400, n_types=3, n_genes=30, noise=noise, noise_level=0.2, seed=1)
    resid = sp.X - sp.layers["truth"]
    if noise == "gaussian":
        sd = sp.layers["truth"].std(0)
        np.testing.assert_allclose(resid.std(0) / sd, 0.2, rtol=0.25)
    else:
        assert sp.X.min() >= 0 and np.all(sp.X == np.round(sp.X))
        mu = sp.layers["truth"].astype(np.float64)
        assert np.sum(resid.astype(np.float64) ** 2 - mu) / np.sum(mu**2) == pytest.approx(0.2, rel=0.3)


def test_mixture_reproducible_and_roundtrip(tmp_path):
    kw = {"n_spots": 150, "n_types": 3, "n_genes": 12, "n_cells_per_type": 5}
    a_sp, a_ref = sm.datasets.simulate_mixture(seed=2, **kw)
    b_sp, b_ref = sm.datasets.simulate_mixture(seed=2, **kw)
    c_sp, _ = sm.datasets.simulate_mixture(seed=3, **kw)
    np.testing.assert_array_equal(a_sp.X, b_sp.X)
    np.testing.assert_array_equal(a_ref.X, b_ref.X)
    assert not np.array_equal(a_sp.obsm["props_truth"], c_sp.obsm["props_truth"])
    a_sp.write_h5ad(tmp_path / "sp.h5ad")
    a_ref.write_h5ad(tmp_path / "ref.h5ad")
    sp, ref = ad.read_h5ad(tmp_path / "sp.h5ad"), ad.read_h5ad(tmp_path / "ref.h5ad")
    pd.testing.assert_frame_equal(sp.obsm["props_truth"], a_sp.obsm["props_truth"])
    np.testing.assert_array_equal(sp.varm["signature_truth"], a_sp.varm["signature_truth"])
    assert list(sp.uns["cell_types"]) == a_sp.uns["cell_types"]
    pd.testing.assert_series_equal(ref.obs["cell_type"], a_ref.obs["cell_type"])


# ---------------------------------------------------------------- issue 11: bounded work, checked first


def test_tiny_length_scale_is_a_clear_error_naming_a_working_value():
    from smoother.datasets import _fields

    with pytest.raises(ValueError, match=r"length_scale=1e-06.*Use length_scale >= ") as info:
        sm.datasets.simulate_field(400, pattern="gp", length_scale=1e-6)
    suggested = float(str(info.value).rsplit("length_scale=", 1)[1].rstrip(")."))
    coords = sm.datasets.lattice(400, "hex")
    _fields.check_field_grid(np.ptp(coords, axis=0), suggested)  # the value named in the message works ...
    with pytest.raises(ValueError):
        _fields.check_field_grid(np.ptp(coords, axis=0), 0.98 * suggested)  # ... close to the smallest that does
    assert _fields._grid_cells(np.ptp(coords, axis=0), suggested) <= _fields.MAX_GRID_CELLS
    with pytest.raises(ValueError, match="length_scale"):
        sm.datasets.simulate_mixture(300, length_scale=1e-5)
    # blobs draw no grid: a tiny length scale is allowed there
    a = sm.datasets.simulate_field(50, pattern="blobs", length_scale=1e-6, n_genes=2)
    assert np.isfinite(a.X).all()


def test_too_large_for_memory_is_checked_before_allocating(monkeypatch):
    from smoother.datasets import _fields

    monkeypatch.setattr(_fields, "_physical_memory", lambda: 2**30)  # a 1 GiB machine
    with pytest.raises(ValueError, match=r"`n_spots` x `n_genes` = 10000000 x 50 .* n_spots=(\d+)") as info:
        sm.datasets.simulate_field(10_000_000, n_genes=50)
    fit = int(str(info.value).split("n_spots=")[1].split(" ")[0])
    _fields.check_size(fit, 50, "n_spots", "n_genes")  # the suggested size passes the same check
    with pytest.raises(ValueError, match="n_types \\* n_cells_per_type"):
        sm.datasets.simulate_mixture(10, n_types=1000, n_cells_per_type=1000, n_genes=1000)
    with pytest.raises(ValueError, match="`n_spots` = "):
        sm.datasets.lattice(100_000_000)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_level": 1e300}, "noise_level"),
        ({"spacing": 1e300}, "spacing"),
        ({"spacing": 1e-300}, "spacing"),
    ],
)
def test_values_that_would_overflow_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sm.datasets.simulate_field(50, **kwargs)


def test_mixture_depth_bound():
    with pytest.raises(ValueError, match=r"`depth` in \(0, 1e\+12\]"):
        sm.datasets.simulate_mixture(50, depth=1e300)


@pytest.mark.parametrize("layout", ["hex", "square"])
def test_lattice_extent_without_building_the_lattice(layout):
    """The grid check runs before the lattice is built, from this closed form: compare with the lattice itself."""
    from smoother.datasets import _fields

    for n in [1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 30, 31, 97, 1000, 1001]:
        for spacing in (1.0, 0.37):
            xy = sm.datasets.lattice(n, layout, spacing=spacing)
            np.testing.assert_allclose(_fields.lattice_extent(n, layout, spacing), np.ptp(xy, axis=0), atol=1e-12)
