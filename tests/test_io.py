"""sm.write_zarr: all or nothing (a failed lazy computation leaves no store), checked arguments, round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest

import smoother as sm

da = pytest.importorskip("dask.array")
anndata = pytest.importorskip("anndata")


def _lazy_adata(fail_block: int | None = None):
    a = sm.datasets.simulate_field(200, n_genes=4, random_state=0)
    X = da.from_array(np.asarray(a.X, dtype=np.float64), chunks=(50, 4))

    def block(b, block_info=None):
        if fail_block is not None and block_info[0]["chunk-location"][0] == fail_block:
            raise RuntimeError("a worker died")
        return b * 2.0

    a.layers["lazy"] = X.map_blocks(block, dtype=np.float64)
    return a


def test_round_trip_equals_computed_layer(tmp_path):
    a = _lazy_adata()
    path = tmp_path / "ok.zarr"
    sm.write_zarr(a, path)
    back = anndata.read_zarr(path)
    np.testing.assert_array_equal(back.layers["lazy"], a.layers["lazy"].compute())
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_failed_computation_leaves_no_store(tmp_path):
    a = _lazy_adata(fail_block=2)
    path = tmp_path / "bad.zarr"
    with pytest.raises(RuntimeError, match="worker died"):
        sm.write_zarr(a, path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # the partial store is gone too


def test_failed_in_place_write_would_look_complete(tmp_path):
    """Why the helper exists: anndata's in-place write leaves a store whose missing chunks read back as zeros."""
    a = _lazy_adata(fail_block=2)
    path = tmp_path / "in_place.zarr"
    with pytest.raises(RuntimeError):
        a.write_zarr(path)
    assert path.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [({"adata": np.zeros(3)}, TypeError, "adata"), ({"store": 3}, TypeError, "store")],
)
def test_rejects_bad_arguments(tmp_path, kwargs, error, name):
    args = {"adata": _lazy_adata(), "store": tmp_path / "x.zarr", **kwargs}
    with pytest.raises(error, match=name):
        sm.write_zarr(args["adata"], args["store"])
    assert os.listdir(tmp_path) == []


def test_existing_store_is_not_overwritten(tmp_path):
    path = tmp_path / "there.zarr"
    path.mkdir()
    (path / "keep").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        sm.write_zarr(_lazy_adata(), path)
    assert (path / "keep").read_text() == "x"
