"""sm.tl.spatial_pca on dask-backed AnnData (issue 12): one map-reduce pass, results equal to the in-memory path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

da = pytest.importorskip("dask.array")

from tests.contract import WorkStarted, check_rejects  # noqa: E402

import smoother as sm  # noqa: E402
from smoother._core import blockwise  # noqa: E402
from smoother._core.graph import knn_graph  # noqa: E402
from smoother._core.precision import precision  # noqa: E402
from smoother.datasets._visium_hd import visium_hd  # noqa: E402

UNS = ("objective", "variance", "spatial_loss", "variance_ratio")


@pytest.fixture(scope="module")
def field():
    a = sm.datasets.simulate_field(n_spots=600, n_genes=24, noise="poisson", seed=1)
    sm.pp.spatial_graph(a)
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    a.X = np.log1p(X).astype(np.float32)
    return a


def _lazy(a, chunks=(128, -1), sparse=False, layer=None):
    b = a.copy()
    X = a.X if layer is None else a.layers[layer]
    src = sp.csr_matrix(X) if sparse else np.asarray(X)
    lazy = da.from_array(src, chunks=chunks, asarray=False)
    if layer is None:
        b.X = lazy
    else:
        b.layers[layer] = lazy
    return b


def _assert_same(b, ref, key="spatial_pca", rtol=1e-6, varm="spatial_PCs"):
    H = b.obsm["X_" + key]
    assert isinstance(H, da.Array)  # lazy scores
    Hr = ref.obsm["X_" + key]
    assert H.dtype == Hr.dtype and H.shape == Hr.shape
    scale = np.abs(Hr).max()
    np.testing.assert_allclose(H.compute(), Hr, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(b.varm[varm], ref.varm[varm], rtol=rtol, atol=rtol)
    for k in UNS:
        np.testing.assert_allclose(b.uns[key][k], ref.uns[key][k], rtol=rtol, atol=rtol * np.abs(ref.uns[key][k]).max())
    p, pr = b.uns[key]["params"], ref.uns[key]["params"]
    assert p.keys() == pr.keys() and all(np.array_equal(p[k], pr[k]) for k in p)


@pytest.mark.parametrize("sparse", [False, True])
def test_dask_input_equals_the_in_memory_path(field, sparse):
    ref = field.copy()
    sm.tl.spatial_pca(ref, n_comps=4, lambda_spatial=0.8)
    b = _lazy(field, sparse=sparse)
    sm.tl.spatial_pca(b, n_comps=4, lambda_spatial=0.8)
    _assert_same(b, ref)


def test_layer_mask_and_uncentred(field):
    a = field.copy()
    a.layers["logc"] = a.X.copy()
    a.X = np.zeros_like(a.X)
    mask = np.arange(a.n_vars) % 3 != 0
    ref = a.copy()
    kw = {"n_comps": 3, "lambda_spatial": 2.0, "layer": "logc", "mask_var": mask, "zero_center": False}
    sm.tl.spatial_pca(ref, **kw, prior="icar", rho=0.9, standardize=False)
    b = _lazy(a, chunks=(77, -1), sparse=True, layer="logc")
    sm.tl.spatial_pca(b, **kw, prior="icar", rho=0.9, standardize=False)
    _assert_same(b, ref)
    assert np.all(b.varm["spatial_PCs"][~mask] == 0)


def test_the_gram_matrix_equals_brute_force():
    # an independent reference: the dense centred X_c^T (I - lambda Q) X_c of a tiny problem
    xx, yy = np.meshgrid(np.arange(9.0), np.arange(9.0))
    W, _ = knn_graph(np.column_stack([xx.ravel(), yy.ravel()]), k=4)
    Q = sp.csr_matrix(precision(W, "car", 0.8))
    X = sp.random(81, 6, density=0.3, random_state=1, format="csr") * 5.0
    st = blockwise.spatial_stats(da.from_array(X, chunks=(20, 6), asarray=False), Q)
    Xd = X.toarray()
    np.testing.assert_allclose(st["xtx"], Xd.T @ Xd, rtol=1e-12)
    np.testing.assert_allclose(st["xtqx"], Xd.T @ Q.toarray() @ Xd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st["colsum"], Xd.sum(0), rtol=1e-12)
    np.testing.assert_allclose(st["xtq1"], Xd.T @ (Q @ np.ones(81)), rtol=1e-12, atol=1e-12)


def test_column_chunks_are_rechunked_and_logged(field, caplog):
    ref = field.copy()
    sm.tl.spatial_pca(ref, n_comps=3, lambda_spatial=0.3)
    b = _lazy(field, chunks=(200, 5))
    logger = logging.getLogger("smoother")
    old = logger.propagate, logger.level
    logger.propagate, logger.level = True, logging.INFO
    try:
        with caplog.at_level(logging.INFO, logger="smoother"):
            sm.tl.spatial_pca(b, n_comps=3, lambda_spatial=0.3)
    finally:
        logger.propagate, logger.level = old
    assert "rechunked 5 column chunks -> 1" in caplog.text
    assert b.obsm["X_spatial_pca"].chunks[1] == (3,)
    _assert_same(b, ref)


def test_sparse_chunks_are_never_densified(field, monkeypatch):
    b = _lazy(field, sparse=True)
    g = b.n_vars
    real = sp.csr_matrix.toarray

    def guarded(self, *a, **k):
        assert self.shape == (g, g), f"densified a {self.shape} block"
        return real(self, *a, **k)

    monkeypatch.setattr(sp.csr_matrix, "toarray", guarded)
    monkeypatch.setattr(sp.csc_matrix, "toarray", guarded)
    sm.tl.spatial_pca(b, n_comps=3, lambda_spatial=0.5)
    assert b.obsm["X_spatial_pca"].compute().shape == (b.n_obs, 3)


def test_integer_counts_from_the_zarr_reader_equal_memory(tmp_path):
    # anndata's lazy reader (read_elem_lazy over a .zarr store), float32 counts in CSR chunks
    a = visium_hd(bin_size=16, area_mm=0.48, n_genes=15, chunk_size=150, store=tmp_path / "s.zarr")
    sm.pp.spatial_graph(a)
    ref = a.copy()
    ref.X = a.X.compute()
    sm.tl.spatial_pca(ref, n_comps=3, lambda_spatial=1.0)
    sm.tl.spatial_pca(a, n_comps=3, lambda_spatial=1.0)
    _assert_same(a, ref)
    # the leading component separates the true domains (a check of the simulator and the fit together)
    h = a.obsm["X_spatial_pca"][:, 0].compute()
    means = a.obs.assign(h=h).groupby("domain", observed=True)["h"].mean()
    assert means.max() - means.min() > 2 * h.std() * 0.5


def test_copy_leaves_the_input_untouched(field):
    b = _lazy(field)
    out = sm.tl.spatial_pca(b, n_comps=2, copy=True)
    assert "X_spatial_pca" not in b.obsm and isinstance(out.obsm["X_spatial_pca"], da.Array)


def _boom(*_a, **_k):
    raise WorkStarted("a pass over the data started before the arguments were checked")


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"prior": "sma"}, ValueError, ("prior='sma'", "compute")),
        ({"solver": "arpack"}, ValueError, ("solver='arpack'", "'dense'")),
        ({"solver": "lobpcg"}, ValueError, ("solver='lobpcg'",)),
        ({"n_comps": 24}, ValueError, ("n_comps",)),
        ({"lambda_spatial": float("nan")}, ValueError, ("lambda_spatial",)),
    ],
)
def test_unsupported_combinations_say_what_to_do(field, monkeypatch, kwargs, error, names):
    b = _lazy(field)
    monkeypatch.setattr(blockwise, "spatial_stats", _boom)
    check_rejects(sm.tl.spatial_pca, b, error=error, names=names, **kwargs)


def test_nan_in_the_data_is_named_and_nothing_is_written(field):
    a = field.copy()
    a.X[5, 3] = np.nan
    b = _lazy(a)
    with pytest.raises(ValueError, match=r"adata\.X contains NaN"):
        sm.tl.spatial_pca(b, n_comps=2)
    assert "X_spatial_pca" not in b.obsm and "spatial_pca" not in b.uns


def test_non_numeric_dask_data_is_rejected(field):
    b = field.copy()
    b.X = da.from_array(np.full(field.shape, "a", dtype=object), chunks=(100, -1))
    with pytest.raises(TypeError, match=r"adata\.X"):
        sm.tl.spatial_pca(b, n_comps=2)


@pytest.mark.slow
def test_local_cluster_with_two_workers_equals_memory():
    distributed = pytest.importorskip("distributed")
    a = sm.datasets.simulate_field(n_spots=3000, n_genes=40, noise="poisson", seed=2)
    sm.pp.spatial_graph(a)
    a.X = sp.csr_matrix(np.log1p(np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X)))
    ref = a.copy()
    sm.tl.spatial_pca(ref, n_comps=5, lambda_spatial=1.0)
    b = _lazy(a, chunks=(500, -1), sparse=True)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        sm.tl.spatial_pca(b, n_comps=5, lambda_spatial=1.0)
        H = b.obsm["X_spatial_pca"].compute()
        assert len(client.scheduler_info()["workers"]) == 2
    b.obsm["X_spatial_pca"] = da.from_array(H)
    _assert_same(b, ref)
