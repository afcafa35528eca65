"""The input/output contract (issue 11) of ``sm.pp``: ``spatial_graph``, ``scale_by_expr``, ``scale_by_identity``,
``scale_by_histology``.

Rejected input: the right error type, a message naming the user's argument, no work started (no neighbour search,
no PCA, no similarity, no factorization), every AnnData unchanged. Accepted awkward input (1/2 spots, duplicate
coordinates, constant or all-zero expression, int/bool/float32, CSR/CSC, views, non-unique names, re-runs): a
defined result, equal to an independent reference where one exists.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.contract import WorkStarted, assert_unchanged, check_rejects, snapshot

import smoother as sm
from smoother.pp import _graph as graph_mod

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------ data
@functools.cache
def _base() -> ad.AnnData:
    """40 spots on a square grid, 6 genes, a kNN graph, labels and a tiny Visium-style image."""
    xx, yy = np.meshgrid(np.arange(8.0), np.arange(5.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    rng = np.random.default_rng(0)
    left = coords[:, 0] < 4
    profile = np.where(left[:, None], [4.0, 1.0, 0.5, 2.0, 0.1, 1.0], [0.5, 3.0, 2.0, 0.2, 1.5, 1.0])
    a = ad.AnnData((profile * rng.gamma(20.0, 0.05, size=(40, 6))).astype(np.float32))  # two regions + noise
    a.obsm["spatial"] = coords * 10.0 + 20.0  # full-resolution pixels
    a.obs["region"] = pd.Categorical(np.where(left, "a", "b"))
    img = np.zeros((70, 120, 3))
    img[:, 60:] = 1.0
    sf = {"spot_diameter_fullres": 6.0, "tissue_hires_scalef": 1.0}
    a.uns["spatial"] = {"lib": {"images": {"hires": img}, "scalefactors": sf}}
    sm.pp.spatial_graph(a, n_neighs=4)
    return a


@pytest.fixture
def adata():
    return _base().copy()


@contextlib.contextmanager
def no_graph_work():
    """Besides tests.contract.no_work: no neighbour search, feature extraction or similarity may start."""

    def boom(*_a, **_k):
        raise WorkStarted("graph work started before the arguments were checked")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("knn_graph", "radius_graph", "_expression_features", "_histology_features", "_edge_similarity"):
            mp.setattr(graph_mod, name, boom)
        yield


def rejects(func, *args, error, names=(), **kwargs):
    with no_graph_work():
        return check_rejects(func, *args, error=error, names=names, **kwargs)


SPATIAL = sm.pp.spatial_graph
EXPR = sm.pp.scale_by_expr
IDENT = functools.partial(sm.pp.scale_by_identity, groupby="region")
HIST = sm.pp.scale_by_histology
FUNCS = {"spatial_graph": SPATIAL, "scale_by_expr": EXPR, "scale_by_identity": IDENT, "scale_by_histology": HIST}

# every numeric argument: (function, extra kwargs, kind, bad values that are ValueErrors besides NaN/inf)
NUMERIC = [
    ("spatial_graph", "n_neighs", {}, "int", [0, -1]),
    ("spatial_graph", "radius", {"method": "radius"}, "real", [0.0, -1.0]),
    ("spatial_graph", "bandwidth", {"method": "radius", "radius": 15.0}, "real", [0.0, -2.0]),
    ("scale_by_expr", "n_pcs", {}, "int", [0, -3]),
    ("scale_by_expr", "bandwidth", {"metric": "euclidean"}, "real", [0.0, -1.0]),
    ("scale_by_identity", "boundary_connectivity", {}, "real", [-0.1, 1.5]),
    ("scale_by_histology", "n_pcs", {}, "int", [0]),
    ("scale_by_histology", "bandwidth", {}, "real", [0.0, -1.0]),
]
NUMERIC_IDS = [f"{f}-{a}" for f, a, *_ in NUMERIC]


def _bad_values(kind: str, value_errors: list):
    """(value, error) pairs: NaN/inf, strings, bools, non-integers, out-of-range values."""
    out = [("1", TypeError), (True, TypeError), ([1], TypeError)]
    if kind == "int":
        out += [(float("nan"), TypeError), (float("inf"), TypeError), (2.5, TypeError), (np.float64(3.0), TypeError)]
    else:
        out += [(float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError)]
    return out + [(v, ValueError) for v in value_errors]


@pytest.mark.parametrize(("func", "arg", "extra", "kind", "value_errors"), NUMERIC, ids=NUMERIC_IDS)
def test_every_numeric_argument_rejects_nan_inf_str_bool(adata, func, arg, extra, kind, value_errors):
    for value, error in _bad_values(kind, value_errors):
        rejects(FUNCS[func], adata, error=error, names=arg, **{**extra, arg: value})


@given(
    case=st.sampled_from(NUMERIC),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not math.isfinite(v)),
        st.text(max_size=4),
        st.booleans(),
        st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
        st.none(),
    ),
)
@HYP
def test_hypothesis_bad_numbers_rejected_before_work(adata, case, value):
    func, arg, extra, kind, _ = case
    if value is None:
        if arg in ("radius", "n_neighs", "boundary_connectivity"):  # None is not a value of these
            error = ValueError if arg == "radius" else TypeError
            rejects(FUNCS[func], adata, error=error, names=arg, **{**extra, arg: value})
        return
    if kind == "int" or not isinstance(value, float):
        error = TypeError
    else:
        error = ValueError
    rejects(FUNCS[func], adata, error=error, names=arg, **{**extra, arg: value})


@pytest.mark.parametrize(
    ("func", "kwargs", "error", "name"),
    [
        ("spatial_graph", {"method": "delaunay"}, ValueError, "method"),
        ("spatial_graph", {"method": 1}, TypeError, "method"),
        ("spatial_graph", {"mutual": "yes"}, TypeError, "mutual"),
        ("spatial_graph", {"spatial_key": "xy"}, KeyError, "xy"),
        ("spatial_graph", {"spatial_key": 3}, TypeError, "spatial_key"),
        ("spatial_graph", {"key_added": ""}, ValueError, "key_added"),
        ("spatial_graph", {"key_added": None}, TypeError, "key_added"),
        ("spatial_graph", {"copy": "no"}, TypeError, "copy"),
        ("spatial_graph", {"copy": 1}, TypeError, "copy"),
        ("spatial_graph", {"method": "radius"}, ValueError, "radius"),
        ("spatial_graph", {"n_neighs": 40}, ValueError, "n_neighs"),
        ("scale_by_expr", {"metric": "manhattan"}, ValueError, "metric"),
        ("scale_by_expr", {"metric": None}, TypeError, "metric"),
        ("scale_by_expr", {"layer": "counts"}, KeyError, "counts"),
        ("scale_by_expr", {"layer": 1}, TypeError, "layer"),
        ("scale_by_expr", {"connectivity_key": "nope_connectivities"}, KeyError, "nope_connectivities"),
        ("scale_by_expr", {"connectivity_key": 1}, TypeError, "connectivity_key"),
        ("scale_by_expr", {"row_scale": "no"}, TypeError, "row_scale"),
        ("scale_by_expr", {"key_added": ""}, ValueError, "key_added"),
        ("scale_by_expr", {"copy": None}, TypeError, "copy"),
        ("scale_by_identity", {"groupby": "zone"}, KeyError, "zone"),
        ("scale_by_identity", {"groupby": 3}, TypeError, "groupby"),
        ("scale_by_identity", {"connectivity_key": "x"}, KeyError, "x"),
        ("scale_by_histology", {"library_id": "other"}, KeyError, "other"),
        ("scale_by_histology", {"library_id": 1}, TypeError, "library_id"),
        ("scale_by_histology", {"img_key": "lowres"}, KeyError, "lowres"),
        ("scale_by_histology", {"metric": "l1"}, ValueError, "metric"),
        ("scale_by_histology", {"spatial_key": "xy"}, KeyError, "xy"),
        ("scale_by_histology", {"row_scale": 0}, TypeError, "row_scale"),
    ],
)
def test_other_arguments(adata, func, kwargs, error, name):
    rejects(FUNCS[func], adata, error=error, names=name, **kwargs)


def test_not_an_anndata():
    for func in FUNCS.values():
        rejects(func, np.zeros((3, 2)), error=TypeError, names="AnnData")


# ------------------------------------------------------------------------------------------------ bad data
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_coordinates(adata, bad):
    adata.obsm["spatial"] = adata.obsm["spatial"].copy()
    adata.obsm["spatial"][3, 1] = bad
    rejects(SPATIAL, adata, error=ValueError, names=("adata.obsm['spatial']", "1 spot"))
    rejects(HIST, adata, error=ValueError, names="adata.obsm['spatial']")


def test_bad_coordinate_shapes(adata):
    adata.obsm["spatial"] = np.zeros((40, 1))
    rejects(SPATIAL, adata, error=ValueError, names="shape")
    adata.obsm["spatial"] = np.zeros((40, 2), dtype=object)
    adata.obsm["spatial"][0, 0] = "x"
    rejects(SPATIAL, adata, error=TypeError, names="adata.obsm['spatial']")


@pytest.mark.parametrize("func", ["scale_by_expr", "scale_by_identity", "scale_by_histology"])
def test_missing_graph(adata, func):
    del adata.obsp["spatial_connectivities"]
    rejects(FUNCS[func], adata, error=KeyError, names=("spatial_connectivities", "spatial_graph"))


def test_bad_graphs(adata):
    W = adata.obsp["spatial_connectivities"].copy()
    W.data[:2] = -1.0
    adata.obsp["spatial_connectivities"] = W
    rejects(EXPR, adata, error=ValueError, names=("negative", "spatial_connectivities"))
    W.data[:2] = np.nan
    rejects(IDENT, adata, error=ValueError, names=("NaN", "spatial_connectivities"))


def test_nan_expression_and_zero_genes(adata):
    X = adata.X.copy()
    X[0, 0] = np.nan
    adata.X = X
    rejects(EXPR, adata, error=ValueError, names=("NaN", "adata.X"))
    b = _base()[:, :0].copy()
    rejects(EXPR, b, error=ValueError, names="no genes")


def test_missing_labels(adata):
    adata.obs["region"] = adata.obs["region"].cat.add_categories("c")
    adata.obs.loc[adata.obs_names[:2], "region"] = np.nan
    rejects(IDENT, adata, error=ValueError, names=("region", "2 missing"))


@pytest.mark.parametrize(
    ("change", "error", "name"),
    [
        # a 0-d array: tests.contract compares plain floats with ==, which NaN never satisfies
        (
            lambda lib: lib["scalefactors"].update(tissue_hires_scalef=np.array(np.nan)),
            ValueError,
            "tissue_hires_scalef",
        ),
        (lambda lib: lib["scalefactors"].update(tissue_hires_scalef="1"), TypeError, "tissue_hires_scalef"),
        (lambda lib: lib["scalefactors"].update(spot_diameter_fullres=-6.0), ValueError, "spot_diameter_fullres"),
        (lambda lib: lib["scalefactors"].pop("spot_diameter_fullres"), KeyError, "spot_diameter_fullres"),
        (lambda lib: lib["images"].update(hires=np.full((70, 120, 3), np.inf)), ValueError, "inf"),
        (lambda lib: lib["images"].update(hires=np.full((70, 120), "a")), TypeError, "numeric"),
        (lambda lib: lib["images"].update(hires=np.zeros((70,))), ValueError, "shape"),
        (lambda lib: lib["images"].update(hires=np.full((70, 120), np.nan)), ValueError, "all NaN"),
    ],
)
def test_bad_histology(adata, change, error, name):
    lib = adata.uns["spatial"]["lib"]
    lib = {"images": dict(lib["images"]), "scalefactors": dict(lib["scalefactors"])}
    change(lib)
    adata.uns["spatial"] = {"lib": lib}
    rejects(HIST, adata, error=error, names=name)


def test_several_libraries_need_library_id(adata):
    adata.uns["spatial"] = {"a": adata.uns["spatial"]["lib"], "b": adata.uns["spatial"]["lib"]}
    rejects(HIST, adata, error=ValueError, names="library_id")
    sm.pp.scale_by_histology(adata, library_id="b")
    assert adata.uns["smoother_neighbors"]["params"]["library_id"] == "b"


# ------------------------------------------------------------------------------------------------ spot counts
def _spots(coords, n_genes=3):
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    a = ad.AnnData(np.ones((len(coords), n_genes), dtype=np.float32))
    a.obsm["spatial"] = coords
    return a


@pytest.mark.parametrize("func", ["scale_by_expr", "scale_by_identity"])
def test_zero_spots(func):
    a = _spots([])
    a.obs["region"] = pd.Categorical([])
    rejects(SPATIAL, a, error=ValueError, names="at least 1")
    a.obsp["spatial_connectivities"] = sp.csr_matrix((0, 0))
    if func == "scale_by_expr":
        rejects(EXPR, a, error=ValueError, names="n_obs = 0")
    else:  # nothing to rescale, nothing fails: an empty graph
        sm.pp.scale_by_identity(a, "region")
        assert a.obsp["smoother_connectivities"].shape == (0, 0)


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_spots(n):
    a = _spots(np.column_stack([np.arange(n), np.zeros(n)]))
    if n == 1:
        rejects(SPATIAL, a, error=ValueError, names="at least 2 spots")
    else:
        rejects(SPATIAL, a, error=ValueError, names=("n_neighs", "n_neighs=1"))
        sm.pp.spatial_graph(a, n_neighs=1)
        np.testing.assert_array_equal(a.obsp["spatial_connectivities"].toarray(), [[0, 1], [1, 0]])
    sm.pp.spatial_graph(a, method="radius", radius=1.5, key_added="r")
    W = a.obsp["r_connectivities"].toarray()
    np.testing.assert_array_equal(W, np.ones((n, n)) - np.eye(n) if n == 2 else [[1.0]])
    a.obs["region"] = pd.Categorical(["a", "b"][:n])
    for func in (EXPR, IDENT):
        out = func(a, connectivity_key="r_connectivities", copy=True)
        Ws = out.obsp["smoother_connectivities"].toarray()
        assert np.isfinite(Ws).all() and (Ws.sum(1) > 0).all()  # every spot keeps an edge (a self edge if cut)


@pytest.mark.parametrize("method", ["knn", "radius"])
def test_all_spots_at_one_point(method):
    a = _spots(np.full((12, 2), 3.0))
    rejects(SPATIAL, a, error=ValueError, names=("same point", "spatial_key"), method=method, radius=1.0)


def test_duplicate_coordinates_warn_and_join_at_distance_zero():
    coords = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    a = _spots(coords)
    with pytest.warns(UserWarning, match="2 spots share their coordinates"):
        sm.pp.spatial_graph(a, n_neighs=1, mutual=False)
    W, D = a.obsp["spatial_connectivities"], a.obsp["spatial_distances"]
    assert W[0, 1] == 1.0 and W[1, 0] == 1.0
    assert D.nnz == W.nnz and D[0, 1] == 0.0  # stored as an explicit zero: same edges in both matrices
    assert (W.tocoo().row == D.tocoo().row).all() and (W.tocoo().col == D.tocoo().col).all()


# ------------------------------------------------------------------------------------------------ data types
def _reference_expr(adata, **kw):
    b = adata.copy()
    b.X = np.asarray(sp.csr_matrix(b.X).toarray() if sp.issparse(b.X) else b.X, dtype=np.float64)
    return sm.pp.scale_by_expr(b, copy=True, **kw).obsp["smoother_connectivities"].toarray()


@pytest.mark.parametrize("fmt", ["csr", "csc", "int", "bool", "float32", "int_csr"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_expression_types_give_the_float64_dense_result(adata, fmt, metric):
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.5, size=adata.shape)
    X = {
        "csr": sp.csr_matrix(counts.astype(np.float32)),
        "csc": sp.csc_matrix(counts.astype(np.float64)),
        "int": counts.astype(np.int64),
        "bool": counts > 1,
        "float32": counts.astype(np.float32),
        "int_csr": sp.csr_matrix(counts.astype(np.int32)),
    }[fmt]
    adata.X = X
    for n_pcs in (None, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lost-edge / zero-vector warnings are tested elsewhere
            got = sm.pp.scale_by_expr(adata, metric=metric, n_pcs=n_pcs, copy=True).obsp["smoother_connectivities"]
            ref = _reference_expr(adata, metric=metric, n_pcs=n_pcs)
        np.testing.assert_allclose(got.toarray(), ref, rtol=1e-5, atol=1e-6)


@given(
    value=st.floats(min_value=-5, max_value=5, allow_nan=False),
    zero_rows=st.lists(st.integers(0, 39), max_size=10, unique=True),
    n_pcs=st.sampled_from([None, 2, 10]),
)
@HYP
def test_hypothesis_constant_or_zero_expression_never_destroys_the_graph(value, zero_rows, n_pcs):
    """Constant genes plus any set of all-zero spots: finite weights, and the exact rule. Without PCA every pair is
    identical (cosine 1) or involves a zero vector (undefined, set to 1): every edge keeps its weight. With PCA
    (centred) the two groups are anti-parallel: edges inside a group keep their weight, edges across get 0."""
    a = _base().copy()
    X = np.full(a.shape, value, dtype=np.float32)
    X[zero_rows] = 0.0
    a.X = X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.pp.scale_by_expr(a, n_pcs=n_pcs)
    W0, Ws = a.obsp["spatial_connectivities"].toarray(), a.obsp["smoother_connectivities"].toarray()
    assert np.isfinite(Ws).all() and (Ws >= 0).all()
    group = np.zeros(a.n_obs, dtype=bool)
    group[zero_rows] = True
    two_groups = n_pcs is not None and np.float32(value) != 0 and 0 < group.sum() < a.n_obs
    expected = W0 * (group[:, None] == group[None, :]) if two_groups else W0.copy()
    lost = (expected.sum(1) == 0) & (W0.sum(1) > 0)
    expected[lost, lost] = 1.0  # a spot cut from all its neighbours keeps a self edge
    np.testing.assert_allclose(Ws, expected, atol=1e-9)


# ------------------------------------------------------------------------------------------------ views, copies
@pytest.mark.parametrize("name", list(FUNCS))
def test_copy_of_a_view_leaves_the_view_untouched(name):
    parent = _base().copy()
    view = parent[:30]
    snap_view, snap_parent = snapshot(view), snapshot(parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if name == "spatial_graph":
            out = FUNCS[name](view, n_neighs=4, key_added="new", copy=True)
        else:
            out = FUNCS[name](view, connectivity_key="spatial_connectivities", copy=True)
    assert view.is_view and not out.is_view and out.n_obs == 30
    assert_unchanged(view, snap_view)
    assert_unchanged(parent, snap_parent)
    key = "new_connectivities" if name == "spatial_graph" else "smoother_connectivities"
    assert out.obsp[key].shape == (30, 30)


@pytest.mark.parametrize("name", list(FUNCS))
def test_view_without_copy_is_made_actual_like_scanpy(name):
    parent = _base().copy()
    view = parent[:30]
    with pytest.warns(UserWarning, match="view"):
        if name == "spatial_graph":
            FUNCS[name](view, n_neighs=4, key_added="new")
        else:
            FUNCS[name](view)
    assert not view.is_view
    assert ("new_connectivities" if name == "spatial_graph" else "smoother_connectivities") in view.obsp
    assert parent.n_obs == 40 and "smoother_connectivities" not in parent.obsp


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("copy", [False, True])
def test_backed_anndata_is_rejected(tmp_path, name, copy):
    path = tmp_path / "a.h5ad"
    _base().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        rejects(FUNCS[name], backed, error=ValueError, names=("backed", "to_memory()"), copy=copy)
    finally:
        backed.file.close()


@pytest.mark.parametrize("name", list(FUNCS))
def test_copy_true_returns_results_and_leaves_the_input(adata, name):
    snap = snapshot(adata)
    kw = {"key_added": "k"}
    out = FUNCS[name](adata, copy=True, **kw)
    assert_unchanged(adata, snap)
    assert "k_connectivities" in out.obsp and "k_neighbors" in out.uns
    assert FUNCS[name](adata, **kw) is None
    for key in out.obsp:
        assert (out.obsp[key] != adata.obsp[key]).nnz == 0


@pytest.mark.parametrize("name", list(FUNCS))
def test_non_unique_obs_names_follow_row_order(adata, name):
    b = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        b.obs_names = ["spot"] * b.n_obs
    key = {"key_added": "k"}
    ref = FUNCS[name](adata, copy=True, **key)
    got = FUNCS[name](b, copy=True, **key)
    assert (ref.obsp["k_connectivities"] != got.obsp["k_connectivities"]).nnz == 0


def test_rerun_replaces_every_entry_of_the_previous_result(adata):
    sm.pp.spatial_graph(adata, method="radius", radius=15.0, bandwidth=5.0, key_added="g")
    first = dict(adata.uns["g_neighbors"]["params"])
    assert first["radius"] == 15.0 and first["n_neighs"] is None
    sm.pp.spatial_graph(adata, n_neighs=4, key_added="g")
    params = adata.uns["g_neighbors"]["params"]
    assert params["radius"] is None and params["bandwidth"] is None and params["n_neighs"] == 4
    assert set(adata.uns["g_neighbors"]) == {"params", "connectivities_key", "distances_key"}
