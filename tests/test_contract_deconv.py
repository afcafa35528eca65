"""The input/output contract (issue 11) of ``sm.tl.deconvolve``, the classic ``smoother.models.deconv`` models
and ``sm.pl.props``.

Rejected input: the right error type, a message naming the user's argument (``reference`` for the single-cell
reference, ``lambda_spatial_loss`` in the classic API), no work started (no factorization, solve or training —
here also no deconvolution solver), every AnnData unchanged. Accepted awkward input (1/2 spots, int/bool/float32,
CSR/CSC, views, backed references, re-runs): the same result as an independent reference.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from tests.contract import WorkStarted, assert_unchanged, check_rejects, snapshot

import smoother as sm
from smoother._core import deconv as core
from smoother._core import deconv_counts as dc
from smoother._core import knn_graph, precision
from smoother.models import deconv as classic

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------ data
@functools.cache
def _base():
    ad, ref = sm.datasets.simulate_mixture(60, n_types=3, n_genes=24, n_cells_per_type=12, depth=300.0, seed=7)
    sm.pp.spatial_graph(ad, n_neighs=6)
    return ad, ref


@pytest.fixture
def data():
    ad, ref = _base()
    return ad.copy(), ref.copy()


@contextlib.contextmanager
def no_deconv_work():
    """Besides tests.contract.no_work: the deconvolution solvers themselves must not start."""

    def boom(*_a, **_k):
        raise WorkStarted("a deconvolution solver started before the arguments were checked")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("solve_quadratic", "solve_torch", "quadratic_data", "deconvolve_quadratic"):
            mp.setattr(core, name, boom)
        for name in ("fit_counts", "_solve_block_qp", "_newton_chunk"):
            mp.setattr(dc, name, boom)
        yield


def rejects(func, *args, error, names=(), **kwargs):
    with no_deconv_work():
        return check_rejects(func, *args, error=error, names=names, **kwargs)


def deconv(ad, ref, **kw):
    kw.setdefault("groupby", "cell_type")
    return sm.tl.deconvolve(ad, ref, **kw)


# bad values of a real argument and the error each must raise
BAD_REALS = [
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    ("1.0", TypeError),
    ("big", TypeError),
    (True, TypeError),
    (None, TypeError),
    ([1.0], TypeError),
]
BAD_INTS = [(1.5, TypeError), (math.nan, TypeError), ("10", TypeError), (True, TypeError), (None, TypeError)]


# ------------------------------------------------------------------------------------------------ sm.tl.deconvolve
REAL_ARGS = {  # argument -> extra kwargs that make it matter, and out-of-range values
    "lambda_spatial": ({}, [-1.0, -1e-9]),
    "rho": ({"lambda_spatial": 1.0}, [-0.1, 1.5]),
    "tol": ({}, [0.0, -1.0]),
    "lr": ({}, [0.0, -1.0]),
    "lambda_top_loss": ({}, [-1.0]),
    "lambda_topo": ({}, [-1.0]),
}
INT_ARGS = {"max_iter": [0, -5], "max_epochs": [0, -1], "random_state": [-1, 2**40]}


@pytest.mark.parametrize("arg", sorted(REAL_ARGS))
@pytest.mark.parametrize(("value", "error"), BAD_REALS)
def test_real_arguments_reject_nan_inf_str_bool(data, arg, value, error):
    ad, ref = data
    extra, _ = REAL_ARGS[arg]
    if arg == "lambda_spatial" and value is None:
        return  # None: the model's default
    rejects(deconv, ad, ref, error=error, names=arg, **{**extra, arg: value})


@pytest.mark.parametrize("arg", sorted(REAL_ARGS))
def test_real_arguments_out_of_range(data, arg):
    ad, ref = data
    extra, bad = REAL_ARGS[arg]
    for value in bad:
        rejects(deconv, ad, ref, error=ValueError, names=arg, **{**extra, arg: value})


@pytest.mark.parametrize("arg", sorted(INT_ARGS))
def test_integer_arguments(data, arg):
    ad, ref = data
    for value, error in BAD_INTS:
        if arg in ("random_state", "max_iter") and value is None:
            continue  # None: no seed / the model's default
        rejects(deconv, ad, ref, error=error, names=arg, **{arg: value})
    for value in INT_ARGS[arg]:
        rejects(deconv, ad, ref, error=ValueError, names=arg, **{arg: value})


@given(
    arg=st.sampled_from(sorted(REAL_ARGS)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not math.isfinite(v)),
        st.text(max_size=5),
        st.booleans(),
        st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False),
    ),
)
@HYP
def test_hypothesis_any_bad_real_is_rejected_before_work(data, arg, value):
    ad, ref = data
    extra, _ = REAL_ARGS[arg]
    if value == "auto" and arg == "lambda_spatial":
        return
    error = ValueError if isinstance(value, float) else TypeError
    rejects(deconv, ad, ref, error=error, names=arg, **{**extra, arg: value})


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"model": "svm"}, ValueError, "model"),
        ({"model": 3}, TypeError, "model"),
        ({"prior": "gauss", "lambda_spatial": 1.0}, ValueError, "prior"),
        ({"prior": 1}, TypeError, "prior"),
        ({"backend": "jax"}, ValueError, "backend"),
        ({"backend": None}, TypeError, "backend"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": 0}, TypeError, "device"),
        ({"standardize": "yes"}, TypeError, "standardize"),
        ({"bias": 1}, TypeError, "bias"),
        ({"copy": "no"}, TypeError, "copy"),
        ({"key_added": ""}, ValueError, "key_added"),
        ({"key_added": 5}, TypeError, "key_added"),
        ({"connectivity_key": 5}, TypeError, "connectivity_key"),
        ({"connectivity_key": "nope"}, KeyError, "spatial_graph"),
        ({"layer": "nope"}, KeyError, "nope"),
        ({"layer": 3}, TypeError, "layer"),
        ({"reference_layer": "nope"}, KeyError, "reference.layers"),
        ({"reference_layer": 3}, TypeError, "reference_layer"),
        ({"genes": ["gene_0", "nope"]}, KeyError, "nope"),
        ({"genes": ["gene_0", "gene_0"]}, ValueError, "genes"),
        ({"genes": [[1, 2]]}, TypeError, "genes"),
        ({"auto_grid": [1.0, math.nan], "lambda_spatial": "auto"}, ValueError, "auto_grid"),
        ({"auto_grid": [1.0, math.inf], "lambda_spatial": "auto"}, ValueError, "auto_grid"),
        ({"auto_grid": [-1.0], "lambda_spatial": "auto"}, ValueError, "auto_grid"),
        ({"auto_grid": ["a"], "lambda_spatial": "auto"}, TypeError, "auto_grid"),
        ({"auto_grid": [], "lambda_spatial": "auto"}, ValueError, "auto_grid"),
        ({"auto_grid": "1,2", "lambda_spatial": "auto"}, TypeError, "auto_grid"),
        ({"model": "nusvr", "lambda_spatial": "auto"}, ValueError, "auto"),
        ({"model": "nusvr", "model_kwargs": {"C": math.nan}}, ValueError, "C"),
        ({"model": "nusvr", "model_kwargs": {"nu": 2.0}}, ValueError, "nu"),
        ({"model": "nusvr", "model_kwargs": {"loss_mode": "l3"}}, ValueError, "loss_mode"),
        ({"model": "dwls", "model_kwargs": {"max_weights": math.inf}}, ValueError, "max_weights"),
        ({"model": "lognorm", "model_kwargs": {"epsilon": 0}}, ValueError, "epsilon"),
        ({"model_kwargs": {"C": 1.0}}, ValueError, "model_kwargs"),
        ({"model_kwargs": [1]}, TypeError, "model_kwargs"),
        ({"top_loss": 3, "lambda_top_loss": 1.0}, TypeError, "top_loss"),
        ({"betti_priors": [1], "lambda_topo": 1.0}, TypeError, "betti_priors"),
        ({"model": "nnls", "betti_priors": {"nope": {0: 1}}, "lambda_topo": 1.0}, KeyError, "nope"),
        ({"model": "nnls", "betti_priors": {7: {0: 1}}, "lambda_topo": 1.0}, ValueError, "betti_priors"),
        # the count models (default): their own options, and the classic-only ones refused by name
        ({"bias": True}, ValueError, "bias"),
        ({"backend": "torch"}, ValueError, "backend"),
        ({"top_loss": lambda b: b.sum(), "lambda_top_loss": 1.0}, ValueError, "topological"),
        ({"model_kwargs": {"platform_effect": "yes"}}, TypeError, "platform_effect"),
        ({"model_kwargs": {"n_genes": 0}}, ValueError, "n_genes"),
        ({"model_kwargs": {"n_genes": 2.5}}, TypeError, "n_genes"),
        ({"model": "poisson", "model_kwargs": {"dispersion": 0.1}}, ValueError, "dispersion"),  # Poisson: none
        ({"model": "nb", "model_kwargs": {"dispersion": math.nan}}, ValueError, "dispersion"),
        ({"model": "nb", "model_kwargs": {"dispersion": -1.0}}, ValueError, "dispersion"),
        ({"model": "nb", "model_kwargs": {"dispersion": "big"}}, TypeError, "dispersion"),
        ({"model": "counts", "max_iter": 0}, ValueError, "max_iter"),
        ({"model": "lognorm", "backend": "cvxpy"}, ValueError, "cvxpy"),
    ],
)
def test_other_arguments(data, kwargs, error, name):
    ad, ref = data
    rejects(deconv, ad, ref, error=error, names=name, **kwargs)


def test_cuda_without_cuda_is_rejected_before_work(data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    ad, ref = data
    rejects(deconv, ad, ref, error=ValueError, names=("device", "cpu"), device="cuda", model="nusvr")


# ---- the reference: messages name `reference`
def test_reference_errors_name_the_reference(data):
    ad, ref = data
    rejects(deconv, ad, ref, error=KeyError, names=("reference.obs", "celltype"), groupby="celltype")
    rejects(sm.tl.deconvolve, ad, ref, error=ValueError, names="groupby")
    rejects(deconv, ad, ref, error=TypeError, names="groupby", groupby=3)
    rejects(deconv, ad, np.ones((3, 3)), error=TypeError, names="reference")
    rejects(deconv, ad, "ref.h5ad", error=TypeError, names="reference")
    # duplicated gene names in an AnnData reference
    dup = ref.copy()
    dup.var_names = [*ref.var_names[:-1], ref.var_names[0]]
    err = rejects(deconv, ad, dup, error=ValueError, names="reference.var_names")
    assert "adata" not in str(err).replace("reference", "")
    # NaN in the reference is reported as the reference's
    nan = ref.copy()
    X = np.asarray(nan.X, dtype=np.float64).copy()
    X[0, 0] = np.nan
    nan.X = X
    err = rejects(deconv, ad, nan, error=ValueError, names="reference.X")
    assert "adata" not in str(err)
    # missing labels, an empty group, no cells
    lab = ref.copy()
    lab.obs["cell_type"] = lab.obs["cell_type"].astype(object)
    lab.obs.iloc[0, lab.obs.columns.get_loc("cell_type")] = None
    rejects(deconv, ad, lab, error=ValueError, names=("reference.obs", "missing"))
    ghost = ref.copy()
    ghost.obs["cell_type"] = ghost.obs["cell_type"].cat.add_categories(["ghost"])
    rejects(deconv, ad, ghost, error=ValueError, names=("ghost", "no cells"))
    rejects(deconv, ad, ref[:0].copy(), error=ValueError, names="reference")
    # no shared genes / a reference without genes
    other = ref.copy()
    other.var_names = [f"other_{g}" for g in ref.var_names]
    rejects(deconv, ad, other, error=ValueError, names="No genes are shared")
    rejects(deconv, ad, ref[:, :0].copy(), error=ValueError, names="reference")
    # a reference with text or complex values
    txt = ref.copy()
    txt.layers["txt"] = np.full(ref.shape, "a", dtype=object)
    rejects(deconv, ad, txt, error=TypeError, names="reference.layers", reference_layer="txt")


def test_dataframe_reference_errors(data):
    ad, ref = data
    sig = sm.tl._deconv.reference_signatures(ref, "cell_type")
    d1 = sig.copy()
    d1.index = [*sig.index[:-1], sig.index[0]]
    rejects(sm.tl.deconvolve, ad, d1, error=ValueError, names="reference")
    d2 = sig.copy()
    d2.columns = [sig.columns[0]] * sig.shape[1]
    rejects(sm.tl.deconvolve, ad, d2, error=ValueError, names="reference")
    d3 = sig.astype(object)
    d3.iloc[0, 0] = "x"
    rejects(sm.tl.deconvolve, ad, d3, error=TypeError, names="reference")
    d4 = sig.copy()
    d4.iloc[0, 0] = np.inf
    rejects(sm.tl.deconvolve, ad, d4, error=ValueError, names="reference")
    rejects(sm.tl.deconvolve, ad, sig.iloc[:0], error=ValueError, names="reference")


# ---- adata
def test_adata_errors(data, tmp_path):
    ad, ref = data
    rejects(deconv, ad.X, ref, error=TypeError, names="adata")
    rejects(deconv, ad[:0].copy(), ref, error=ValueError, names="adata")  # 0 spots
    rejects(deconv, ad[:, :0].copy(), ref, error=ValueError, names="No genes are shared")  # 0 genes
    dup = ad.copy()
    dup.obs_names = [dup.obs_names[0]] * dup.n_obs
    rejects(deconv, dup, ref, error=ValueError, names="adata.obs_names")
    dupv = ad.copy()
    dupv.var_names = [*ad.var_names[:-1], ad.var_names[0]]
    rejects(deconv, dupv, ref, error=ValueError, names="adata.var_names")
    nan = ad.copy()
    X = np.asarray(nan.X, dtype=np.float64).copy()
    X[1, 2] = np.inf
    nan.X = X
    rejects(deconv, nan, ref, error=ValueError, names="adata.X")
    neg = ad.copy()
    neg.X = np.asarray(ad.X) - 5.0
    rejects(deconv, neg, ref, error=ValueError, names=("non-negative", "layer"), model="dwls")
    rejects(deconv, ad[:, :6].copy(), ref, error=ValueError, names="auto", model="nnls", lambda_spatial="auto")
    nograph = ad.copy()
    del nograph.obsp["spatial_connectivities"]
    rejects(deconv, nograph, ref, error=KeyError, names="spatial_graph", lambda_spatial=1.0)
    path = tmp_path / "a.h5ad"
    ad.write_h5ad(path)
    backed = __import__("anndata").read_h5ad(path, backed="r")
    try:
        rejects(deconv, backed, ref, error=ValueError, names=("backed", "to_memory"))
        rejects(deconv, backed, ref, error=ValueError, names=("backed", "to_memory"), copy=True)
    finally:
        backed.file.close()


def test_without_the_spatial_loss_no_graph_is_needed(data):
    ad, ref = data
    del ad.obsp["spatial_connectivities"]
    out = deconv(ad, ref, lambda_spatial=0.0, copy=True)
    assert out.uns["props"]["params"]["connectivity_key"] is None


# ------------------------------------------------------------------------------------------------ accepted input
def _nnls_with_intercept(X, y):
    """Brute-force reference: min ||y - X z - b||^2 over z >= 0 and free b, by centering (b is the mean residual)."""
    z, _ = nnls(X - X.mean(axis=0), y - y.mean())
    return z


@pytest.mark.parametrize("n_spots", [1, 2])
def test_one_and_two_spots_equal_a_brute_force_nnls(data, n_spots):
    ad, ref = data
    small = ad[:n_spots].copy()
    del small.obsp["spatial_connectivities"]
    out = deconv(small, ref, model="nnls", lambda_spatial=0.0, tol=1e-12, max_iter=50000, copy=True)
    sig = sm.tl._deconv.reference_signatures(ref, "cell_type").loc[small.var_names]
    for i in range(n_spots):
        z = _nnls_with_intercept(sig.to_numpy(), np.asarray(small.X[i], dtype=np.float64))
        np.testing.assert_allclose(out.obsm["props_abundance"].to_numpy()[i], z, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(out.obsm["props"].to_numpy()[i], z / z.sum(), atol=1e-7)
    # with the spatial loss on a graph of these spots the result is still a valid set of proportions
    if n_spots == 1:
        small.obsp["spatial_connectivities"] = sp.csr_matrix((1, 1))  # an isolated spot
    else:
        sm.pp.spatial_graph(small, n_neighs=1)
    for model in ("nnls", "poisson"):
        out = deconv(small, ref, model=model, lambda_spatial=1.0, copy=True)
        np.testing.assert_allclose(out.obsm["props"].sum(1), 1.0)


@pytest.mark.parametrize("kind", ["int", "bool", "float32", "csr", "csc"])
def test_dtypes_and_sparse_formats_give_the_float64_result(data, kind):
    ad, ref = data
    counts = np.rint(np.asarray(ad.X, dtype=np.float64))
    dense = ad.copy()
    dense.X = counts if kind != "bool" else (counts > 0).astype(np.float64)
    other = ad.copy()
    other.X = {
        "int": counts.astype(np.int64),
        "bool": counts > 0,
        "float32": counts.astype(np.float32),
        "csr": sp.csr_matrix(counts),
        "csc": sp.csc_matrix(counts),
    }[kind]
    snap = snapshot(other)
    a = deconv(dense, ref, lambda_spatial=1.0, copy=True)
    b = deconv(other, ref, lambda_spatial=1.0, copy=True)
    assert_unchanged(other, snap)
    np.testing.assert_allclose(a.obsm["props"].to_numpy(), b.obsm["props"].to_numpy(), atol=1e-9)


def test_views_and_copy(data):
    ad, ref = data
    full = deconv(ad, ref, copy=True).obsm["props"].to_numpy()
    view = ad[:, :]
    snap = snapshot(view)
    out = deconv(view, ref, copy=True)
    assert view.is_view
    assert_unchanged(view, snap)
    np.testing.assert_allclose(out.obsm["props"].to_numpy(), full)
    # a view of the reference is read, never changed
    rview = ref[:, :]
    rsnap = snapshot(rview)
    deconv(ad.copy(), rview, copy=True)
    assert_unchanged(rview, rsnap)
    # without copy a view is made actual with scanpy's warning
    v2 = ad[:30]
    with pytest.warns(UserWarning, match="view"):
        assert deconv(v2, ref) is None
    assert not v2.is_view and "props" in v2.obsm


def test_backed_reference_is_read_in_blocks(data, tmp_path, monkeypatch):
    import anndata

    ad, ref = data
    ref.X = sp.csr_matrix(ref.X)
    path = tmp_path / "ref.h5ad"
    ref.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    try:
        monkeypatch.setattr(sm.tl._deconv, "_CHUNK", 7)  # several blocks
        a = deconv(ad, ref, copy=True)
        b = deconv(ad, backed, copy=True)
        assert backed.isbacked
        np.testing.assert_allclose(a.obsm["props"].to_numpy(), b.obsm["props"].to_numpy(), atol=1e-12)
    finally:
        backed.file.close()


def test_rerun_replaces_every_result(data):
    ad, ref = data
    deconv(ad, ref, model="nnls", lambda_spatial="auto")
    assert {"props_bias"} <= set(ad.obs.columns) and "lambda_auto" in ad.uns["props"]
    deconv(ad, ref, model="nnls", lambda_spatial=0.5, bias=False)
    assert "props_bias" not in ad.obs.columns  # no stale intercept
    assert "lambda_auto" not in ad.uns["props"]  # no stale 'auto' record
    assert ad.uns["props"]["params"]["bias"] is False
    assert ad.uns["props"]["params"]["lambda_spatial"] == 0.5
    P, A = ad.obsm["props"].to_numpy(), ad.obsm["props_abundance"].to_numpy()
    np.testing.assert_allclose(P, A / A.sum(1, keepdims=True))
    # classic -> count model: the count results appear, nothing classic stays
    deconv(ad, ref, model="nb", lambda_spatial=0.0)
    assert {"props_library_size"} <= set(ad.obs.columns) and "props_bias" not in ad.obs.columns
    assert {"props_gene_effect", "props_dispersion"} <= set(ad.var.columns)
    # NB -> Poisson: no stale dispersion; count -> classic: no stale library size or gene effect
    deconv(ad, ref, model="poisson", lambda_spatial=0.0)
    assert "props_dispersion" not in ad.var.columns and "props_gene_effect" in ad.var.columns
    deconv(ad, ref, model="nnls", lambda_spatial=0.0)
    assert "props_library_size" not in ad.obs.columns and "props_gene_effect" not in ad.var.columns
    assert "props_bias" in ad.obs.columns


@pytest.mark.parametrize("model", ["nnls", "poisson"])
def test_auto_is_never_worse_than_zero_by_its_criterion(data, model):
    ad, ref = data
    out = deconv(ad, ref, model=model, lambda_spatial="auto", copy=True)
    info = out.uns["props"]["lambda_auto"]
    grid, crit = np.asarray(info["grid"]), np.asarray(info["cv_error" if model == "nnls" else "score"])
    assert 0.0 in grid
    best = grid[np.argmin(crit)]
    assert crit[list(grid).index(best)] <= crit[list(grid).index(0.0)]
    assert out.uns["props"]["params"]["lambda_spatial"] == info["chosen"]


def test_auto_at_the_grid_edge_warns(data):
    ad, ref = data
    with pytest.warns(UserWarning, match="largest candidate"):
        deconv(ad, ref, model="nnls", lambda_spatial="auto", auto_grid=[1.0, 2.0, 3.0], copy=True)


def test_count_model_rejects_non_counts_before_work(data):
    ad, ref = data
    logx = ad.copy()
    logx.X = np.log1p(np.asarray(ad.X, dtype=np.float64))
    rejects(deconv, logx, ref, error=ValueError, names=("adata.X", "layer='counts'", "model='nnls'"))
    neg = ad.copy()
    neg.X = sp.csr_matrix(np.asarray(ad.X) - 1.0)
    rejects(deconv, neg, ref, error=ValueError, names=("adata.X", "negative"))
    lay = ad.copy()
    lay.layers["norm"] = np.asarray(ad.X, dtype=np.float64) / 7.0
    rejects(deconv, lay, ref, error=ValueError, names="adata.layers['norm']", layer="norm")
    rn = ref.copy()
    rn.layers["cpm"] = np.asarray(ref.X, dtype=np.float64) / 3.0
    rejects(deconv, ad, rn, error=ValueError, names=("reference.layers['cpm']", "reference_layer"),
            reference_layer="cpm")  # fmt: skip
    zero = ref.copy()
    X = np.asarray(zero.X).copy()
    X[(zero.obs["cell_type"] == "type_1").to_numpy()] = 0
    zero.X = X
    rejects(deconv, ad, zero, error=ValueError, names=("type_1", "zero counts"))
    sig = sm.tl._deconv.reference_signatures(ref, "cell_type")
    rejects(sm.tl.deconvolve, ad, -sig, error=ValueError, names=("reference", "negative"))


# ------------------------------------------------------------------------------------------------ classic models
@functools.cache
def _classic_problem():
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 1.0, size=(20, 3))
    Z = rng.dirichlet(np.ones(3), size=15)
    Y = (Z @ X.T + 0.1 * rng.standard_normal((15, 20))).T + 1.0
    W = knn_graph(rng.uniform(size=(15, 2)), k=4)[0]
    Q = precision(W, "icar", 0.99)
    return X, Y, Q


CLASSIC_REALS = {"lambda_spatial_loss": [-1.0], "lambda_top_loss": [-1.0], "lr": [0.0, -1.0], "tol": [-1.0]}


@pytest.mark.parametrize("arg", sorted(CLASSIC_REALS))
@pytest.mark.parametrize(("value", "error"), BAD_REALS)
def test_classic_deconv_reals(arg, value, error):
    X, Y, Q = _classic_problem()
    m = classic.NNLS()
    rejects(m.deconv, X, Y, spatial_loss=Q, error=error, names=arg, quiet=True, **{arg: value})
    for bad in CLASSIC_REALS[arg]:
        rejects(m.deconv, X, Y, spatial_loss=Q, error=ValueError, names=arg, quiet=True, **{arg: bad})
    assert m.result is None


@given(value=st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.text(max_size=4), st.booleans()))
@HYP
def test_hypothesis_classic_lambda_never_silently_accepted(value):
    """NaN once meant "no spatial loss" and inf gave NaN: every such lambda is an error naming it."""
    X, Y, Q = _classic_problem()
    for factory in (classic.NNLS, classic.DWLS, classic.LinearRegression):
        error = ValueError if isinstance(value, float) else TypeError
        rejects(factory().deconv, X, Y, spatial_loss=Q, lambda_spatial_loss=value, error=error,
                names="lambda_spatial_loss", quiet=True)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_epochs": 0}, ValueError, "max_epochs"),
        ({"max_epochs": 1.5}, TypeError, "max_epochs"),
        ({"patience": 0}, ValueError, "patience"),
        ({"patience": "3"}, TypeError, "patience"),
        ({"init_with_lr_sol": "yes"}, TypeError, "init_with_lr_sol"),
        ({"verbose": None}, TypeError, "verbose"),
        ({"quiet": 1}, TypeError, "quiet"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": 1}, TypeError, "device"),
        ({"solver": "ECOS"}, TypeError, "solver"),  # cvxpy options are not for the pytorch backend
        ({"top_loss": 5, "lambda_top_loss": 1.0}, TypeError, "top_loss"),
    ],
)
def test_classic_deconv_other_arguments(kwargs, error, name):
    X, Y, Q = _classic_problem()
    kwargs = {"quiet": True, **kwargs}
    rejects(classic.NNLS().deconv, X, Y, spatial_loss=Q, lambda_spatial_loss=1.0, error=error, names=name, **kwargs)


def test_classic_deconv_data_errors():
    X, Y, Q = _classic_problem()
    m = classic.NNLS()
    rejects(m.deconv, X, Y.T, error=ValueError, names="genes", quiet=True)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    rejects(m.deconv, Xn, Y, error=ValueError, names="x", quiet=True)
    rejects(m.deconv, X[:0], Y[:0], error=ValueError, names="x", quiet=True)
    rejects(m.deconv, X, Y[:, :0], error=ValueError, names="y", quiet=True)
    rejects(m.deconv, X, "y", error=TypeError, names="y", quiet=True)
    rejects(m.deconv, X, Y[:, :10], spatial_loss=Q, lambda_spatial_loss=1.0, error=ValueError, names="spatial_loss",
            quiet=True)  # fmt: skip
    rejects(classic.DWLS().deconv, X, Y - 10, error=ValueError, names="non-negative", quiet=True)


def test_classic_cuda_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    X, Y, Q = _classic_problem()
    rejects(classic.NuSVR().deconv, X, Y, error=ValueError, names=("device", "cpu"), device="cuda", quiet=True)


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "name"),
    [
        (classic.NNLS, {"backend": "jax"}, ValueError, "backend"),
        (classic.NNLS, {"backend": 1}, TypeError, "backend"),
        (classic.NNLS, {"solver": "newton"}, ValueError, "solver"),
        (classic.NNLS, {"bias": "yes"}, TypeError, "bias"),
        (classic.NNLS, {"nonneg": 2}, TypeError, "nonneg"),
        (classic.NuSVR, {"C": math.nan}, ValueError, "C"),
        (classic.NuSVR, {"C": "1"}, TypeError, "C"),
        (classic.NuSVR, {"nu": 0.0}, ValueError, "nu"),
        (classic.NuSVR, {"nu": math.inf}, ValueError, "nu"),
        (classic.NuSVR, {"loss_mode": "l3"}, ValueError, "loss_mode"),
        (classic.DWLS, {"max_weights": math.nan}, ValueError, "max_weights"),
        (classic.DWLS, {"max_weights": True}, TypeError, "max_weights"),
        (classic.LogNormReg, {"epsilon": -1}, ValueError, "epsilon"),
        (classic.LogNormReg, {"backend": "cvxpy"}, ValueError, "pytorch"),
    ],
)
def test_classic_factories(factory, kwargs, error, name):
    rejects(factory, error=error, names=name, **kwargs)


# ------------------------------------------------------------------------------------------------ sm.pl.props
@pytest.fixture
def fitted(data):
    ad, ref = data
    deconv(ad, ref, lambda_spatial=0.0)
    return ad


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"types": []}, ValueError, "types"),
        ({"types": ["type_0", "type_0"]}, ValueError, "types"),
        ({"types": ["nope"]}, KeyError, "types"),
        ({"types": [["type_0"]]}, TypeError, "types"),
        ({"ncols": 0}, ValueError, "ncols"),
        ({"ncols": 1.5}, TypeError, "ncols"),
        ({"ncols": True}, TypeError, "ncols"),
        ({"size": math.nan}, ValueError, "size"),
        ({"size": -1}, ValueError, "size"),
        ({"vmax": math.inf}, ValueError, "vmax"),
        ({"vmax": "1"}, TypeError, "vmax"),
        ({"dpi": 0}, ValueError, "dpi"),
        ({"figsize": (1, math.nan)}, ValueError, "figsize"),
        ({"figsize": "big"}, TypeError, "figsize"),
        ({"cmap": "nope"}, ValueError, "cmap"),
        ({"cmap": 3}, TypeError, "cmap"),
        ({"compare_truth": "yes"}, TypeError, "compare_truth"),
        ({"show": "yes"}, TypeError, "show"),
        ({"key": "nope"}, KeyError, "sm.tl.deconvolve"),
        ({"key": 1}, TypeError, "key"),
        ({"truth_key": "nope", "compare_truth": True}, KeyError, "nope"),
        ({"spatial_key": "nope"}, KeyError, "spatial_key"),
    ],
)
def test_pl_props_rejects_before_drawing(fitted, kwargs, error, name):
    import matplotlib.pyplot as plt

    figs = plt.get_fignums()
    rejects(sm.pl.props, fitted, error=error, names=name, **kwargs)
    assert plt.get_fignums() == figs  # no figure was made


def test_pl_props_non_unique_names_and_bad_coordinates(fitted):
    dup = fitted.copy()
    dup.obs_names = [dup.obs_names[0]] * dup.n_obs
    rejects(sm.pl.props, dup, error=ValueError, names="adata.obs_names")
    cols = fitted.copy()
    P = cols.obsm["props"].copy()
    P.columns = ["a", "a", "b"]
    cols.obsm["props"] = P
    rejects(sm.pl.props, cols, error=ValueError, names="props")
    nan = fitted.copy()
    nan.obsm["spatial"] = nan.obsm["spatial"].copy()
    nan.obsm["spatial"][0, 0] = np.nan
    rejects(sm.pl.props, nan, error=ValueError, names="spatial")
    rejects(sm.pl.props, fitted.X, error=TypeError, names="adata")


def test_pl_props_on_a_backed_anndata_and_a_single_type_string(fitted, tmp_path):
    import anndata
    import matplotlib.pyplot as plt

    path = tmp_path / "f.h5ad"
    fitted.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    try:
        fig = sm.pl.props(backed, types="type_1", compare_truth=False, show=False)
        ax = next(a for a in fig.axes if a.get_title() == "type_1")
        np.testing.assert_allclose(ax.collections[0].get_array(), fitted.obsm["props"]["type_1"].to_numpy())
        plt.close(fig)
    finally:
        backed.file.close()


def test_pl_props_array_obsm_uses_the_recorded_types(fitted):
    import matplotlib.pyplot as plt

    a = fitted.copy()
    a.obsm["props"] = a.obsm["props"].to_numpy()
    fig = sm.pl.props(a, compare_truth=False, show=False)
    titles = {ax.get_title() for ax in fig.axes}
    assert set(pd.Index(fitted.uns["props"]["types"]).astype(str)) <= titles
    plt.close(fig)
