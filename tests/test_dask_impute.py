"""sm.tl.impute / sm.tl.enhance / sm.tl.similarity_decay on dask-backed AnnData (issue 12): lazy results equal to
the in-memory path, or a clear error (before any work) saying what to do."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import smoother as sm

from .contract import check_rejects

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def split():
    a = sm.datasets.simulate_field(n_spots=300, n_genes=7, seed=1)
    held = np.arange(a.n_obs) % 4 == 0
    obs = a[~held].copy()
    return obs, a.obsm["spatial"][held]


def _lazy(a, sparse_chunks: bool, layer=None):
    b = a.copy()
    X = np.asarray(a.X)
    arr = da.from_array(sp.csr_matrix(X) if sparse_chunks else X, chunks=(60, 3), asarray=False)
    if layer is None:
        b.X = arr
    else:
        b.layers[layer] = arr
    return b


@pytest.mark.parametrize(
    ("kwargs", "sparse_chunks"),
    [
        ({}, False),
        ({}, True),
        ({"center": False}, False),
        ({"fixed_obs": False, "lambda_spatial": 0.5}, True),
        ({"fixed_obs": False, "lambda_spatial": 0.5, "center": False}, False),
        ({"fixed_obs": False, "lambda_spatial": "auto"}, False),
        ({"fixed_obs": False, "lambda_spatial": "auto", "criterion": "ml"}, True),
    ],
)
def test_impute_on_dask_is_lazy_and_equals_memory(split, kwargs, sparse_chunks):
    a, c_new = split
    ref = sm.tl.impute(a, c_new, dtype="float64", **kwargs)
    b = _lazy(a, sparse_chunks)
    out = sm.tl.impute(b, c_new, dtype="float64", **kwargs)
    assert isinstance(out.X, da.Array) and out.X.shape == ref.shape
    assert out.uns["impute"]["params"]["backend"] == "dask"
    assert out.uns["impute"]["params"]["lambda"] == ref.uns["impute"]["params"]["lambda"]
    np.testing.assert_allclose(out.X.compute(), ref.X, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(out.obs["connected"], ref.obs["connected"])


def test_impute_on_a_dask_layer(split):
    a, c_new = split
    ref = sm.tl.impute(a, c_new)
    b = _lazy(a, False, layer="counts")
    b.X = np.zeros(a.shape, dtype=np.float32)
    out = sm.tl.impute(b, c_new, layer="counts")
    np.testing.assert_allclose(out.X.compute(), ref.X, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("center", "nonneg"), [(True, False), (False, True)])
def test_enhance_on_dask_is_lazy_and_equals_memory(center, nonneg):
    a = sm.datasets.simulate_field(n_spots=100, n_genes=5, seed=2)
    ref = sm.tl.enhance(a, factor=2, center=center, nonneg=nonneg, dtype="float64")
    out = sm.tl.enhance(_lazy(a, True), factor=2, center=center, nonneg=nonneg, dtype="float64")
    assert isinstance(out.X, da.Array) and out.uns["enhance"]["params"]["backend"] == "dask"
    np.testing.assert_allclose(out.X.compute(), ref.X, rtol=1e-8, atol=1e-8)
    if nonneg:
        assert (out.X.compute() >= 0).all() and (ref.X < 1e-12).any()


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"uncertainty": True}, ("uncertainty", "compute()", "to_memory()")),
        ({"nonneg": True}, ("nonneg", "compute()")),
        ({"prior": "sma", "rho": 0.5}, ("sma",)),
    ],
)
def test_impute_options_that_need_memory_say_so_before_work(split, kwargs, names):
    a, c_new = split
    check_rejects(sm.tl.impute, _lazy(a, False), c_new, error=ValueError, names=names, **kwargs)


def test_enhance_uncertainty_needs_memory():
    a = sm.datasets.simulate_field(n_spots=100, n_genes=3, seed=3)
    check_rejects(sm.tl.enhance, _lazy(a, False), error=ValueError, names=("uncertainty", "compute()"),
                  uncertainty=True)  # fmt: skip


def test_similarity_decay_on_dask_x():
    a = sm.datasets.simulate_field(n_spots=200, n_genes=6, pattern="gp", seed=4)
    b = _lazy(a, False)
    for rep in ("X", "X_pca"):  # both read adata.X: refused, saying what to do
        check_rejects(
            sm.tl.similarity_decay, b, use_rep=rep, max_k=10, error=ValueError, names=("dask", "compute()", rep)
        )
    # a representation in obsm is all it reads: works, the same as in memory
    pcs = np.random.default_rng(0).normal(size=(a.n_obs, 4)) + np.asarray(a.X)[:, :4]
    a.obsm["X_rep"] = pcs
    b.obsm["X_rep"] = pcs
    with warnings.catch_warnings():  # the decay-rate fit of this short curve may be flagged degenerate
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.similarity_decay(a, use_rep="X_rep", max_k=10, n_null=3)
        sm.tl.similarity_decay(b, use_rep="X_rep", max_k=10, n_null=3)
    ra, rb = a.uns["corr_decay"]["data"], b.uns["corr_decay"]["data"]
    np.testing.assert_allclose(ra["quantiles"].to_numpy(), rb["quantiles"].to_numpy())
    assert isinstance(b.X, da.Array)  # the data stayed lazy
