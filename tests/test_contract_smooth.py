"""The input/output contract (issue 11) of ``sm.tl.smooth``, ``sm.tl.impute``, ``sm.tl.enhance`` and the classic
``smoother.models.impute`` models.

Rejected input: the right error type, a message naming the user's argument (``lambda_spatial_loss`` in the
classic API), no factorization/solve/training started, every AnnData unchanged (``tests.contract.check_rejects``).
Accepted awkward input (0/1/2 spots, 0 genes, constant genes, int/bool/float32, CSR/CSC, views, backed objects,
duplicate names where harmless, duplicate coordinates, re-runs): the result of an independent reference.
"""

from __future__ import annotations

import functools
import math
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.contract import assert_unchanged, check_rejects, snapshot

import smoother as sm
from smoother import SpatialLoss, SpatialWeightMatrix
from smoother.models.impute import ImputeConvex, ImputeTorch

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------ data
def _grid(n_side: int) -> np.ndarray:
    xx, yy = np.meshgrid(np.arange(float(n_side)), np.arange(float(n_side)))
    return np.column_stack([xx.ravel(), yy.ravel()])


@functools.cache
def _base() -> ad.AnnData:
    rng = np.random.default_rng(0)
    coords = _grid(6)
    a = ad.AnnData((np.sin(coords[:, :1] / 2.0) + rng.normal(scale=0.3, size=(36, 3)) + 2.0).astype(np.float32))
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a, n_neighs=4)
    return a


@pytest.fixture
def adata() -> ad.AnnData:
    return _base().copy()


NEW = np.array([[2.5, 2.5], [6.0, 3.0]])


def _dense_Q(W, rho=0.99):
    W = W.toarray()
    return np.diag(W.sum(1)) - rho * W  # ICAR, written from its formula


@functools.cache
def _classic_loss() -> SpatialLoss:
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(np.vstack([_grid(6), NEW]), k=4)
    return SpatialLoss("icar", swm, rho=0.99, use_sparse=True)


# ------------------------------------------------------------------------------------------------ rejected arguments
BAD_NUMBERS = [(NAN, ValueError), (INF, ValueError), (-INF, ValueError), ("1.0", TypeError), (True, TypeError)]

SMOOTH_BAD = [
    *[({"rho": v}, e, "rho") for v, e in BAD_NUMBERS],
    ({"rho": -0.1}, ValueError, "rho"),
    ({"rho": 1.5}, ValueError, "rho"),
    *[({"lambda_spatial": v}, e, "lambda_spatial") for v, e in BAD_NUMBERS],
    ({"lambda_spatial": -1.0}, ValueError, "lambda_spatial"),
    ({"lambda_spatial": "big"}, TypeError, "lambda_spatial"),
    ({"lambda_spatial": [1.0]}, TypeError, "lambda_spatial"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"chunk_size": 2.5}, TypeError, "chunk_size"),
    ({"chunk_size": "8"}, TypeError, "chunk_size"),
    ({"random_state": -1}, ValueError, "random_state"),
    ({"random_state": 0.5}, TypeError, "random_state"),
    ({"random_state": "0"}, TypeError, "random_state"),
    ({"gcv_grid": [1.0, NAN]}, ValueError, "gcv_grid"),
    ({"gcv_grid": [-1.0]}, ValueError, "gcv_grid"),
    ({"gcv_grid": []}, ValueError, "gcv_grid"),
    ({"gcv_grid": ["a"]}, TypeError, "gcv_grid"),
    ({"gcv_grid": "1,2"}, TypeError, "gcv_grid"),
    ({"dtype": "int32"}, ValueError, "dtype"),
    ({"dtype": 5}, TypeError, "dtype"),
    ({"criterion": "aic"}, ValueError, "criterion"),
    ({"criterion": 1}, TypeError, "criterion"),
    ({"prior": "gauss"}, ValueError, "prior"),
    ({"prior": 3}, TypeError, "prior"),
    ({"standardize": "yes"}, TypeError, "standardize"),
    ({"nonneg": 1}, TypeError, "nonneg"),
    ({"center": "no"}, TypeError, "center"),
    ({"per_gene": None}, TypeError, "per_gene"),
    ({"per_gene": True, "lambda_spatial": 1.0}, ValueError, "per_gene"),
    ({"key_added": ""}, ValueError, "key_added"),
    ({"key_added": 3}, TypeError, "key_added"),
    ({"copy": "yes"}, TypeError, "copy"),
    ({"connectivity_key": 3}, TypeError, "connectivity_key"),
    ({"connectivity_key": "nope_connectivities"}, KeyError, "nope_connectivities"),
    ({"layer": "missing"}, KeyError, "missing"),
    ({"layer": 3}, TypeError, "layer"),
    ({"prior": "icar", "rho": 1.0, "standardize": True}, ValueError, "rho"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), SMOOTH_BAD)
def test_smooth_rejects(adata, kwargs, error, name):
    check_rejects(sm.tl.smooth, adata, error=error, names=name, **kwargs)


IMPUTE_BAD = [
    *[({"rho": v}, e, "rho") for v, e in BAD_NUMBERS],
    *[({"lambda_spatial": v, "fixed_obs": False}, e, "lambda_spatial") for v, e in BAD_NUMBERS],
    ({"lambda_spatial": 0.0, "fixed_obs": False}, ValueError, "lambda_spatial"),
    ({"lambda_spatial": "auto"}, ValueError, "fixed_obs"),
    *[({"radius": v, "graph_method": "radius"}, e, "radius") for v, e in BAD_NUMBERS],
    ({"radius": -1.0, "graph_method": "radius"}, ValueError, "radius"),
    ({"graph_method": "radius"}, ValueError, "radius"),
    *[({"bandwidth": v, "graph_method": "radius", "radius": 1.5}, e, "bandwidth") for v, e in BAD_NUMBERS],
    ({"n_neighs": 0}, ValueError, "n_neighs"),
    ({"n_neighs": 4.0}, TypeError, "n_neighs"),
    ({"n_neighs": "4"}, TypeError, "n_neighs"),
    ({"n_neighs": True}, TypeError, "n_neighs"),
    ({"n_neighs": 100}, ValueError, "n_neighs"),
    ({"graph_method": "delaunay"}, ValueError, "graph_method"),
    ({"graph_method": 1}, TypeError, "graph_method"),
    ({"fixed_obs": "yes"}, TypeError, "fixed_obs"),
    ({"mutual": 0}, TypeError, "mutual"),
    ({"center": "yes"}, TypeError, "center"),
    ({"nonneg": "no"}, TypeError, "nonneg"),
    ({"standardize": 1.0}, TypeError, "standardize"),
    ({"criterion": "aic", "fixed_obs": False, "lambda_spatial": "auto"}, ValueError, "criterion"),
    ({"gcv_grid": [NAN], "fixed_obs": False, "lambda_spatial": "auto"}, ValueError, "gcv_grid"),
    ({"random_state": -3}, ValueError, "random_state"),
    ({"dtype": "float16"}, ValueError, "dtype"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"prior": "nope"}, ValueError, "prior"),
    ({"spatial_key": "xy"}, KeyError, "xy"),
    ({"spatial_key": 1}, TypeError, "spatial_key"),
    ({"layer": "missing"}, KeyError, "missing"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), IMPUTE_BAD)
def test_impute_rejects(adata, kwargs, error, name):
    check_rejects(sm.tl.impute, adata, NEW, error=error, names=name, **kwargs)


@pytest.mark.parametrize(
    ("coords_new", "error", "name"),
    [
        (np.array([[1.0, NAN]]), ValueError, "coords_new"),
        (np.array([[1.0, INF]]), ValueError, "coords_new"),
        (np.array([[1.0]]), ValueError, "coords_new"),
        (np.array([[1.0, 2.0, 3.0]]), ValueError, "coords_new"),
        ("here", TypeError, "coords_new"),
        ([["a", "b"]], TypeError, "coords_new"),
    ],
)
def test_impute_rejects_bad_new_coordinates(adata, coords_new, error, name):
    check_rejects(sm.tl.impute, adata, coords_new, error=error, names=name)


ENHANCE_BAD = [
    *[({"factor": v}, TypeError, "factor") for v in (2.5, "3", True, NAN)],
    ({"factor": 1}, ValueError, "factor"),
    *[({"lambda_spatial": v}, e, "lambda_spatial") for v, e in BAD_NUMBERS],
    ({"lambda_spatial": 0.0}, ValueError, "lambda_spatial"),
    ({"lambda_spatial": -0.1}, ValueError, "lambda_spatial"),
    *[({"rho": v}, e, "rho") for v, e in BAD_NUMBERS],
    ({"prior": "sma"}, ValueError, "prior"),
    ({"n_neighs": 0}, ValueError, "n_neighs"),
    ({"n_neighs": "4"}, TypeError, "n_neighs"),
    ({"nonneg": "yes"}, TypeError, "nonneg"),
    ({"center": 1}, TypeError, "center"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"chunk_size": -2}, ValueError, "chunk_size"),
    ({"spatial_key": "xy"}, KeyError, "xy"),
    ({"layer": "missing"}, KeyError, "missing"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), ENHANCE_BAD)
def test_enhance_rejects(adata, kwargs, error, name):
    check_rejects(sm.tl.enhance, adata, error=error, names=name, **kwargs)


CLASSIC_BAD = [
    *[({"lambda_spatial_loss": v}, e, "lambda_spatial_loss") for v, e in BAD_NUMBERS],
    ({"lambda_spatial_loss": -1.0}, ValueError, "lambda_spatial_loss"),
    ({"lambda_spatial_loss": "big"}, TypeError, "lambda_spatial_loss"),
    ({"lambda_spatial_loss": 0.0, "fixed_obs": False}, ValueError, "lambda_spatial_loss"),
    ({"method": "lbfgs"}, ValueError, "method"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": NAN}, ValueError, "lr"),
    ({"lr": "fast"}, TypeError, "lr"),
    ({"max_epochs": 0}, ValueError, "max_epochs"),
    ({"max_epochs": 1.5}, TypeError, "max_epochs"),
    ({"patience": -1}, ValueError, "patience"),
    ({"tol": NAN}, ValueError, "tol"),
    ({"tol": -1.0}, ValueError, "tol"),
    ({"verbose": "yes"}, TypeError, "verbose"),
    ({"fixed_obs": "yes"}, TypeError, "fixed_obs"),
    ({"nonneg": 2}, TypeError, "nonneg"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), CLASSIC_BAD)
def test_classic_imputetorch_rejects(kwargs, error, name):
    y = torch.as_tensor(np.asarray(_base().X))
    kw = {"quiet": True, **kwargs}
    check_rejects(ImputeTorch, y, _classic_loss(), error=error, names=name, **kw)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        *[({"lambda_spatial_loss": v}, e, "lambda_spatial_loss") for v, e in BAD_NUMBERS],
        ({"lambda_spatial_loss": -2.0}, ValueError, "lambda_spatial_loss"),
        ({"solver": "NO_SUCH_SOLVER"}, ValueError, "solver"),
        ({"solver": 3}, TypeError, "solver"),
    ],
)
def test_classic_imputeconvex_rejects(kwargs, error, name):
    pytest.importorskip("cvxpy")
    y = np.asarray(_base().X, dtype=np.float64)
    check_rejects(ImputeConvex, y, _classic_loss(), error=error, names=name, **kwargs)


@pytest.mark.parametrize(
    ("y", "loss", "error", "name"),
    [
        ("abc", "loss", TypeError, "y_obs"),
        (np.zeros((0, 3)), "loss", ValueError, "y_obs"),
        (np.full((36, 3), NAN), "loss", ValueError, "y_obs"),
        (np.zeros(36), "loss", ValueError, "y_obs"),
        (np.zeros((36, 3)), None, TypeError, "spatial_loss_all"),
        (np.zeros((50, 3)), "loss", ValueError, "spatial loss covers"),
    ],
)
def test_classic_rejects_bad_data(y, loss, error, name):
    check_rejects(ImputeTorch, y, _classic_loss() if loss == "loss" else loss, error=error, names=name, quiet=True)


# ------------------------------------------------------------------------------------------------ hypothesis
not_a_finite_number = st.one_of(
    st.sampled_from([NAN, INF, -INF, True, False, None, "1", "auto!", [1.0], {}]),
    st.text(max_size=4).filter(lambda s: s != "auto"),
)


@HYP
@given(value=not_a_finite_number, which=st.sampled_from(["rho", "lambda_spatial"]))
def test_smooth_numbers_fuzz(adata, value, which):
    err = check_rejects(sm.tl.smooth, adata, error=(TypeError, ValueError), names=which, **{which: value})
    # a type error for non-numbers, a value error for NaN/inf (never the other way round)
    is_number = isinstance(value, float) and not isinstance(value, bool)
    assert isinstance(err, ValueError if is_number else TypeError)


@HYP
@given(value=st.one_of(not_a_finite_number, st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)))
def test_classic_lambda_fuzz(value):
    y = torch.as_tensor(np.asarray(_base().X))
    check_rejects(
        ImputeTorch, y, _classic_loss(), error=(TypeError, ValueError), names="lambda_spatial_loss",
        lambda_spatial_loss=value, quiet=True,
    )  # fmt: skip


@HYP
@given(
    value=st.one_of(not_a_finite_number, st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)),
    which=st.sampled_from(["lambda_spatial", "rho"]),
)
def test_enhance_numbers_fuzz(adata, value, which):
    if which == "rho" and isinstance(value, float) and value == 0.0:
        value = -1.0  # rho = 0 is valid
    check_rejects(sm.tl.enhance, adata, error=(TypeError, ValueError), names=which, **{which: value})


# ------------------------------------------------------------------------------------------------ awkward data
def test_zero_spots_are_a_clear_error_not_a_cholmod_failure():
    a = ad.AnnData(np.zeros((0, 3), np.float32))
    a.obsm["spatial"] = np.zeros((0, 2))
    a.obsp["spatial_connectivities"] = sp.csr_matrix((0, 0))
    check_rejects(sm.tl.smooth, a, error=ValueError, names=("adata", "0 spot"), lambda_spatial=1.0)
    check_rejects(sm.tl.impute, a, NEW, error=ValueError, names=("adata", "spots"))
    check_rejects(sm.tl.enhance, a, error=ValueError, names=("adata", "spots"))


def test_one_and_two_spots(dense_precision):
    one = ad.AnnData(np.array([[1.5, -2.0]], np.float32))
    one.obsm["spatial"] = np.zeros((1, 2))
    one.obsp["spatial_connectivities"] = sp.csr_matrix((1, 1))
    for lam in (1.0, "auto"):
        sm.tl.smooth(one, lambda_spatial=lam, dtype="float64")  # centred at the only value: nothing to smooth
        np.testing.assert_array_equal(one.layers["smoothed"], one.X)
    check_rejects(sm.tl.enhance, one, error=ValueError, names="at least 2")
    two = ad.AnnData(np.array([[1.0, 0.0], [3.0, 4.0]]))
    two.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0]])
    sm.pp.spatial_graph(two, n_neighs=1)
    sm.tl.smooth(two, lambda_spatial=0.5, rho=0.9, dtype="float64")
    Q = dense_precision(two.obsp["spatial_connectivities"], "icar", 0.9)
    m = two.X.mean(0)
    np.testing.assert_allclose(two.layers["smoothed"], m + np.linalg.solve(np.eye(2) + 0.5 * Q, two.X - m))


def test_zero_genes():
    a = _base()[:, []].copy()
    for lam in ("auto", 1.0):
        b = sm.tl.smooth(a, lambda_spatial=lam, copy=True)
        assert b.layers["smoothed"].shape == (36, 0)
    assert b.uns["smoothed"]["lambda"] == 1.0
    assert sm.tl.impute(a, NEW).shape == (38, 0)
    assert sm.tl.impute(a, NEW, fixed_obs=False, lambda_spatial="auto").shape == (38, 0)
    assert sm.tl.enhance(a, factor=2).shape[1] == 0


@pytest.mark.parametrize("prior", ["icar", "car", "sar", "isar", "sma"])
def test_constant_genes_are_returned_exactly(prior):
    a = _base().copy()
    a.X = np.full(a.shape, 4.25, dtype=np.float32)
    rho = 0.1 if prior == "car" else 0.9
    sm.tl.smooth(a, prior=prior, rho=rho, lambda_spatial=3.0, dtype="float64")
    np.testing.assert_allclose(a.layers["smoothed"], 4.25, rtol=1e-12)
    out = sm.tl.impute(a, NEW, prior=prior, rho=rho, dtype="float64")
    np.testing.assert_allclose(out.X, 4.25, rtol=1e-12)
    out = sm.tl.impute(a, NEW, prior=prior, rho=rho, fixed_obs=False, lambda_spatial="auto", dtype="float64")
    np.testing.assert_allclose(out.X, 4.25, rtol=1e-12)
    if prior != "sma":
        np.testing.assert_allclose(sm.tl.enhance(a, factor=2, prior=prior, rho=rho, dtype="float64").X, 4.25)


@pytest.mark.parametrize("kind", ["int64", "int32", "bool", "float32", "csr", "csc", "csr_int"])
def test_data_types_and_sparse_formats_agree_with_float64(kind):
    a = _base().copy()
    counts = np.random.default_rng(2).poisson(2.0, size=a.shape)
    dense = (counts > 1) if kind == "bool" else counts
    ref = a.copy()
    ref.X = dense.astype(np.float64)
    conv = {
        "int64": lambda x: x.astype(np.int64),
        "int32": lambda x: x.astype(np.int32),
        "bool": lambda x: x,
        "float32": lambda x: x.astype(np.float32),
        "csr": lambda x: sp.csr_matrix(x.astype(np.float64)),
        "csc": lambda x: sp.csc_matrix(x.astype(np.float64)),
        "csr_int": lambda x: sp.csr_matrix(x.astype(np.int64)),
    }[kind]
    a.X = conv(dense)
    kw = {"lambda_spatial": 1.3, "dtype": "float64"}
    sm.tl.smooth(a, **kw)
    sm.tl.smooth(ref, **kw)
    np.testing.assert_allclose(a.layers["smoothed"], ref.layers["smoothed"], atol=1e-12)
    for fixed in (True, False):
        np.testing.assert_allclose(
            sm.tl.impute(a, NEW, fixed_obs=fixed, **kw).X, sm.tl.impute(ref, NEW, fixed_obs=fixed, **kw).X, atol=1e-12
        )
    np.testing.assert_allclose(
        sm.tl.enhance(a, factor=2, dtype="float64").X, sm.tl.enhance(ref, factor=2, dtype="float64").X, atol=1e-12
    )


def test_views_copy_keeps_a_view_and_inplace_follows_scanpy():
    base = _base().copy()
    view = base[:30]
    assert view.is_view
    snap = snapshot(view)
    out = sm.tl.smooth(view, lambda_spatial=1.0, copy=True)
    assert_unchanged(view, snap)  # copy=True never touches the input, a view stays a view
    assert not out.is_view and "smoothed" in out.layers
    # impute / enhance read a view without changing it
    res = sm.tl.impute(view, NEW[:1])
    sm.tl.enhance(view, factor=2)
    assert_unchanged(view, snap)
    np.testing.assert_array_equal(res.X[:30], view.X)
    # without copy a view is made actual with scanpy's warning, and the result equals the copy's
    with pytest.warns(UserWarning, match="view of an AnnData"):
        sm.tl.smooth(view, lambda_spatial=1.0)
    assert not view.is_view
    np.testing.assert_array_equal(view.layers["smoothed"], out.layers["smoothed"])


def test_backed_adata(tmp_path):
    path = tmp_path / "a.h5ad"
    _base().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    check_rejects(sm.tl.smooth, backed, error=ValueError, names="to_memory")
    check_rejects(sm.tl.smooth, backed, error=ValueError, names="to_memory", copy=True)
    # impute and enhance only read: a backed object works and gives the in-memory result
    mem = _base()
    np.testing.assert_array_equal(sm.tl.impute(backed, NEW).X, sm.tl.impute(mem, NEW).X)
    np.testing.assert_array_equal(sm.tl.enhance(backed, factor=2).X, sm.tl.enhance(mem, factor=2).X)
    backed.file.close()


def test_duplicate_names(adata):
    dup_var = adata.copy()
    dup_var.var_names = ["g", "g", "h"]
    dup_obs = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's own warning about non-unique names
        dup_obs.obs_names = ["s"] * adata.n_obs
    for a, what in ((dup_var, "var_names"), (dup_obs, "obs_names")):
        check_rejects(sm.tl.impute, a, NEW, error=ValueError, names=what)
        check_rejects(sm.tl.enhance, a, error=ValueError, names=what)
    # smoothing is positional: duplicated names do not matter, the result is the same
    sm.tl.smooth(dup_var, lambda_spatial=1.0)
    sm.tl.smooth(adata, lambda_spatial=1.0)
    np.testing.assert_array_equal(dup_var.layers["smoothed"], adata.layers["smoothed"])
    # new spot names never collide with observed ones
    named = adata.copy()
    named.obs_names = [f"new_{i}" for i in range(adata.n_obs)]
    out = sm.tl.impute(named, NEW)
    assert out.obs_names.is_unique and list(out.obs_names[:36]) == list(named.obs_names)


def test_duplicate_coordinates(adata):
    dup = adata.copy()
    c = dup.obsm["spatial"].copy()
    c[1] = c[0]
    dup.obsm["spatial"] = c
    check_rejects(sm.tl.enhance, dup, error=ValueError, names=("share their coordinates", "spatial"))
    same = adata.copy()
    same.obsm["spatial"] = np.zeros((36, 2))  # every spot at one point
    check_rejects(sm.tl.enhance, same, error=ValueError, names="share their coordinates")
    # imputing at an observed spot's position: the Gaussian conditional on the graph that is built
    new = np.vstack([NEW, adata.obsm["spatial"][:1]])
    out = sm.tl.impute(adata, new, center=False, dtype="float64")
    obs = out.obs["observed"].to_numpy()
    Q = _dense_Q(out.obsp["spatial_connectivities"])
    ref = np.linalg.solve(Q[~obs][:, ~obs], -Q[~obs][:, obs] @ np.asarray(adata.X, np.float64))
    np.testing.assert_allclose(out.X[~obs], ref, atol=1e-9)


def test_reruns_replace_the_result(adata):
    sm.tl.smooth(adata, lambda_spatial="auto", per_gene=True)
    assert "smoothed_lambda" in adata.var and "gcv" in adata.uns["smoothed"]
    sm.tl.smooth(adata, lambda_spatial=1.0)
    assert "smoothed_lambda" not in adata.var  # no stale per-gene lambdas
    assert set(adata.uns["smoothed"]) == {"params", "lambda"}  # no stale 'gcv'
    assert adata.uns["smoothed"]["params"]["lambda_spatial"] == 1.0


def test_cholmod_prints_nothing_before_our_message(adata, capfd):
    with pytest.raises(ValueError, match="positive definite"):
        sm.tl.smooth(adata, prior="car", rho=0.99, lambda_spatial=1.0)
    out, err = capfd.readouterr()
    assert "CHOLMOD" not in out and "CHOLMOD" not in err
    # other output written from C during a factorization still reaches the terminal
    from smoother._core.linalg import quiet_cholmod

    with quiet_cholmod():
        import os

        os.write(1, b"kept line\nCHOLMOD warning: not positive definite. file: x\n")
    out, _ = capfd.readouterr()
    assert out == "kept line\n"


def test_classic_flag_is_false_on_a_non_finite_fit(monkeypatch):
    from smoother._core import smooth as core

    y = torch.as_tensor(np.asarray(_base().X))
    monkeypatch.setattr(core, "conditional_mean", lambda *a, **k: np.full((2, 3), NAN))
    with pytest.warns(UserWarning, match="NaN or inf"):
        m = ImputeTorch(y, _classic_loss(), fixed_obs=True, quiet=True)
    assert m.impute_flag is False


def test_classic_accepts_numpy_int_and_sparse_observations():
    y = np.asarray(_base().X, dtype=np.float64)
    ref = ImputeTorch(torch.as_tensor(y), _classic_loss(), quiet=True).get_results().numpy()
    for obs in (y.astype(np.float32), sp.csr_matrix(y)):
        got = ImputeTorch(obs, _classic_loss(), quiet=True).get_results().numpy()
        np.testing.assert_allclose(got, ref, atol=1e-6)
    ints = np.round(y * 10).astype(np.int64)
    a = ImputeTorch(torch.as_tensor(ints), _classic_loss(), quiet=True).get_results().numpy()
    b = ImputeTorch(ints.astype(np.float64), _classic_loss(), quiet=True).get_results().numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert math.isfinite(float(a.sum()))
