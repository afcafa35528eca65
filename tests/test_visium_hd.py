"""sm.datasets.visium_hd: a Visium HD-like simulator generated chunk by chunk (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")

from tests.contract import WorkStarted, check_rejects  # noqa: E402

from smoother.datasets import _visium_hd  # noqa: E402
from smoother.datasets._visium_hd import visium_hd  # noqa: E402


def test_layout_coordinates_and_names():
    a = visium_hd(bin_size=16, area_mm=0.4, n_genes=7, random_state=3)
    side = 25  # 400 um / 16 um
    assert a.shape == (side * side, 7)
    assert isinstance(a.X, da.Array) and isinstance(a.X._meta, sp.csr_matrix) and a.X.dtype == np.float32
    xy = a.obsm["spatial"]
    # bin centres in um, row-major (spatial) order
    np.testing.assert_array_equal(xy[:, 0], (a.obs["array_col"].to_numpy() + 0.5) * 16)
    np.testing.assert_array_equal(xy[:, 1], (a.obs["array_row"].to_numpy() + 0.5) * 16)
    assert np.all(np.diff(a.obs["array_row"].to_numpy()) >= 0)
    assert a.obs_names[side + 2] == "s_016um_00001_00002-1"
    assert a.varm["domain_mean"].shape == (7, 6)
    assert a.uns["simulation"]["random_state"] == 3


def test_nothing_is_generated_until_computed(monkeypatch):
    calls = []
    real = _visium_hd._count_rows
    monkeypatch.setattr(_visium_hd, "_count_rows", lambda *a: calls.append(a) or real(*a))
    a = visium_hd(bin_size=8, area_mm=0.4, n_genes=5, chunk_size=100)
    assert calls == []
    assert a.X.numblocks[0] == 25  # 50 x 50 bins, 2 rows (100 bins) per chunk
    a.X.blocks[3].compute()
    assert [(c[0], c[1]) for c in calls] == [(6, 8)]


def test_counts_do_not_depend_on_chunking_and_follow_the_seed():
    kw = {"bin_size": 8, "area_mm": 0.32, "n_genes": 30}
    x1 = visium_hd(**kw, chunk_size=37).X.compute()  # 37 bins: one grid row (40 bins) per chunk
    x2 = visium_hd(**kw, chunk_size=10**6).X.compute()
    assert (x1 != x2).nnz == 0
    x3 = visium_hd(**kw, random_state=1).X.compute()
    assert (x1 != x3).nnz > 0


@pytest.mark.parametrize(("bin_size", "area"), [(2, 0.2), (8, 0.8)])
def test_depth_per_bin_follows_the_bin_area(bin_size, area):
    a = visium_hd(bin_size=bin_size, area_mm=area, n_genes=50, umi_density=1.0)
    X = a.X.compute()
    total = np.asarray(X.sum(axis=1)).ravel()
    mean = bin_size**2  # 1 UMI per square um, capture efficiency of mean 1
    # Poisson mixed over a log-normal efficiency (sd 0.25): variance mean + mean^2 (e^{0.0625} - 1)
    sd = np.sqrt((mean + mean**2 * (np.exp(0.25**2) - 1)) / total.size)
    assert abs(total.mean() - mean) < 5 * sd
    if bin_size == 2:
        assert np.median(total) <= 5 and X.nnz < 0.1 * X.shape[0] * X.shape[1]  # a few UMIs: sparse


def test_domains_are_equal_area_smooth_bands_with_their_own_means():
    a = visium_hd(bin_size=8, area_mm=1.2, n_genes=40, n_domains=4, random_state=5)
    dom = a.obs["domain"].cat.codes.to_numpy()
    frac = np.bincount(dom, minlength=4) / dom.size
    np.testing.assert_allclose(frac, 0.25, atol=0.03)
    side = a.uns["simulation"]["grid_side"]
    grid = dom.reshape(side, side)
    changes = (grid[1:] != grid[:-1]).mean() + (grid[:, 1:] != grid[:, :-1]).mean()
    assert changes < 0.05  # smooth zones: few neighbouring bins differ
    X = a.X.compute()
    prof = a.varm["domain_mean"]
    for d in range(4):
        rows = X[dom == d]
        obs = np.asarray(rows.mean(axis=0)).ravel()
        # per-gene mean of Poisson counts with a mean-1 log-normal efficiency
        var = prof[:, d] + prof[:, d] ** 2 * (np.exp(0.25**2) - 1)
        z = (obs - prof[:, d]) / np.sqrt(var / rows.shape[0])
        assert np.abs(z).max() < 5.5
    # the domains differ: the profiles are not all equal
    assert np.abs(np.log(prof[:, 0] / prof[:, 1])).max() > 0.5


def test_store_is_written_and_read_back_lazily(tmp_path):
    path = tmp_path / "hd.zarr"
    a = visium_hd(bin_size=16, area_mm=0.48, n_genes=12, chunk_size=200, store=path)
    assert path.exists() and isinstance(a.X, da.Array)
    ref = visium_hd(bin_size=16, area_mm=0.48, n_genes=12)
    assert (a.X.compute() != ref.X.compute()).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], ref.obsm["spatial"])
    assert (a.obs["domain"] == ref.obs["domain"]).all()
    with pytest.raises(FileExistsError, match="store"):
        visium_hd(bin_size=16, area_mm=0.48, store=path)


def _boom(*_a, **_k):
    raise WorkStarted("simulation started before the arguments were checked")


BAD = [
    ({"bin_size": 4}, ValueError, "bin_size"),
    ({"bin_size": 8.0}, TypeError, "bin_size"),
    ({"bin_size": True}, TypeError, "bin_size"),
    ({"area_mm": 0}, ValueError, "area_mm"),
    ({"area_mm": 7.0}, ValueError, "area_mm"),
    ({"area_mm": float("nan")}, ValueError, "area_mm"),
    ({"area_mm": "1"}, TypeError, "area_mm"),
    ({"area_mm": 0.001}, ValueError, "area_mm"),  # smaller than one 8 um bin
    ({"n_genes": 0}, ValueError, "n_genes"),
    ({"n_genes": 2.5}, TypeError, "n_genes"),
    ({"n_domains": 0}, ValueError, "n_domains"),
    ({"umi_density": -1.0}, ValueError, "umi_density"),
    ({"umi_density": float("inf")}, ValueError, "umi_density"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"store": 3}, TypeError, "store"),
    ({"random_state": -1}, ValueError, "random_state"),
    ({"random_state": "0"}, TypeError, "random_state"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD)
def test_bad_arguments_are_rejected_before_any_work(monkeypatch, kwargs, error, name):
    monkeypatch.setattr(_visium_hd, "_geometry", _boom)
    monkeypatch.setattr(_visium_hd, "log_start", _boom)
    check_rejects(visium_hd, error=error, names=name, **kwargs)


@settings(max_examples=8, deadline=None)
@given(
    bin_size=st.sampled_from([2, 8, 16]),
    bins_per_side=st.integers(1, 12),
    n_genes=st.integers(1, 6),
    n_domains=st.integers(1, 4),
    chunk=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_valid_small_input_gives_well_formed_reproducible_counts(
    bin_size, bins_per_side, n_genes, n_domains, chunk, seed
):
    kw = {"area_mm": bins_per_side * bin_size / 1000, "n_genes": n_genes, "n_domains": n_domains}
    a = visium_hd(bin_size, **kw, chunk_size=chunk, random_state=seed)
    assert a.shape == (bins_per_side**2, n_genes)
    X = a.X.compute()
    assert sp.isspmatrix_csr(X) and X.shape == a.shape and X.dtype == np.float32
    assert np.all(X.data > 0) and np.all(X.data == np.round(X.data)) and X.has_sorted_indices
    assert a.obs["domain"].cat.codes.between(0, n_domains - 1).all()
    prof = a.varm["domain_mean"]
    np.testing.assert_allclose(prof.sum(axis=0), bin_size**2, rtol=1e-9)  # each domain's profile sums to the depth
    again = visium_hd(bin_size, **kw, chunk_size=10**6, random_state=seed).X.compute()
    assert (X != again).nnz == 0
