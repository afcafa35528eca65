"""sm.tl.smooth on dask-backed AnnData (issue 12): lazy gene blocks equal to the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import smoother as sm

from .contract import check_rejects

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def field():
    a = sm.datasets.simulate_field(n_spots=600, n_genes=12, seed=0)
    sm.pp.spatial_graph(a)
    return a


@pytest.mark.parametrize(("sparse_chunks", "lam"), [(False, 1.0), (True, 1.0), (False, "auto"), (True, "auto")])
def test_dask_input_gives_a_lazy_result_equal_to_memory(field, sparse_chunks, lam):
    ref = sm.tl.smooth(field, lambda_spatial=lam, copy=True)
    b = field.copy()
    X = np.asarray(field.X)
    b.X = da.from_array(sp.csr_matrix(X) if sparse_chunks else X, chunks=(150, 5), asarray=False)
    sm.tl.smooth(b, lambda_spatial=lam)
    out = b.layers["smoothed"]
    assert isinstance(out, da.Array) and out.shape == X.shape and out.dtype == np.float32
    assert b.uns["smoothed"]["params"]["backend"] == "dask"
    assert b.uns["smoothed"]["lambda"] == pytest.approx(ref.uns["smoothed"]["lambda"], rel=1e-9)
    np.testing.assert_allclose(out.compute(), ref.layers["smoothed"], rtol=1e-5, atol=1e-5)


def test_dask_layer_writes_to_zarr_by_streaming_blocks(field, tmp_path):
    import anndata as ad

    b = field.copy()
    b.layers["counts"] = da.from_array(np.asarray(field.X), chunks=(200, 12))
    sm.tl.smooth(b, layer="counts", lambda_spatial=0.5, key_added="s")
    assert isinstance(b.layers["s"], da.Array)
    b.write_zarr(tmp_path / "out.zarr")
    back = ad.read_zarr(tmp_path / "out.zarr")
    ref = sm.tl.smooth(field, lambda_spatial=0.5, copy=True)
    np.testing.assert_allclose(np.asarray(back.layers["s"]), ref.layers["smoothed"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"nonneg": True}, "nonneg"), ({"uncertainty": True}, "uncertainty"), ({"prior": "sma", "rho": 0.5}, "sma")],
)
def test_options_that_need_memory_say_so_before_work(field, kwargs, name):
    b = field.copy()
    b.X = da.from_array(np.asarray(field.X), chunks=(150, 12))
    check_rejects(sm.tl.smooth, b, lambda_spatial=1.0, error=ValueError, names=name, **kwargs)
