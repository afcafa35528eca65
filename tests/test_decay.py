"""Correlation / similarity decay: engine vs the dense inverse, sampling error, AnnData tools, plots, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

import smoother as sm
from smoother._core.decay import corr_decay_quantiles, corr_decay_quantiles_from_cov, sma_covariance
from smoother._core.graph import knn_graph
from smoother._core.linalg import NotPositiveDefiniteError
from smoother._core.precision import precision

QS = [0.1, 0.25, 0.5, 0.75, 0.9]
COLS = ["Q10", "Q25", "Q50", "Q75", "Q90"]


def _hex(n_side):
    r, c = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    return np.column_stack([(c + 0.5 * (r % 2)).ravel(), (r * np.sqrt(3) / 2).ravel()])


def _dense_reference(cov, coords, min_k, max_k):
    """The classic computation: dense covariance -> correlation -> k-th neighbour entries -> quantiles."""
    d = np.diag(cov)
    corr = cov / np.sqrt(np.outer(d, d))
    nbrs = NearestNeighbors(n_neighbors=max_k + 1).fit(coords).kneighbors(coords, return_distance=False)
    vals = corr[np.arange(len(coords))[:, None], nbrs[:, min_k : max_k + 1]]
    return np.quantile(vals, QS, axis=0).T, np.quantile(d, QS)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    coords = np.vstack([_hex(12), rng.uniform(0, 10, size=(60, 2)) + [12, 0]])
    W, _ = knn_graph(coords, 6)
    return coords, W


@pytest.mark.parametrize(
    "prior,rho,std",
    [
        ("icar", 0.99, False),
        ("icar", 0.7, True),
        ("car", 0.1, False),
        ("sar", 0.5, False),
        ("isar", 0.9, False),
        ("sma", 0.5, False),
    ],
)
def test_engine_equals_dense_inverse(small, prior, rho, std):
    coords, W = small
    if prior == "sma":
        cov = sma_covariance(W, rho).toarray()
        df, var = corr_decay_quantiles_from_cov(sma_covariance(W, rho), coords, min_k=0, max_k=12, return_var=True)
    else:
        Q = precision(W, prior, rho, standardize=std)
        cov = np.linalg.inv(Q.toarray())
        df, var = corr_decay_quantiles(Q, coords, min_k=0, max_k=12, return_var=True)
    ref, ref_var = _dense_reference(cov, coords, 0, 12)
    assert list(df.columns) == [*COLS, "k"]
    assert df["k"].tolist() == list(range(13))
    np.testing.assert_allclose(df[COLS].to_numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(var[COLS].to_numpy().ravel(), ref_var, rtol=1e-6)
    assert np.allclose(df.loc[df["k"] == 0, COLS], 1.0)
    if std:
        np.testing.assert_allclose(var[COLS].to_numpy(), 1.0, atol=1e-8)


def test_engine_min_k_and_dense_input(small):
    coords, W = small
    Q = precision(W, "icar", 0.9)
    df = corr_decay_quantiles(Q.toarray(), coords, min_k=3, max_k=7)
    ref, _ = _dense_reference(np.linalg.inv(Q.toarray()), coords, 3, 7)
    assert df["k"].tolist() == [3, 4, 5, 6, 7]
    np.testing.assert_allclose(df[COLS].to_numpy(), ref, atol=1e-6)


def test_sampled_median_within_002_of_exact():
    coords = _hex(70)  # 4,900 spots
    W, _ = knn_graph(coords, 6)
    Q = precision(W, "icar", 0.99)
    exact = corr_decay_quantiles(Q, coords, max_k=30, n_sample=None)
    sampled = corr_decay_quantiles(Q, coords, max_k=30, n_sample=500, seed=3)
    err = np.abs(sampled["Q50"] - exact["Q50"]).max()
    assert err < 0.02
    # a different seed gives a different sample (the estimate is random, the exact one is not)
    other = corr_decay_quantiles(Q, coords, max_k=30, n_sample=500, seed=4)
    assert not np.allclose(other["Q50"], sampled["Q50"])
    # n_sample >= n uses every spot: exact again
    np.testing.assert_allclose(corr_decay_quantiles(Q, coords, max_k=30, n_sample=10_000)["Q50"], exact["Q50"])


def test_engine_bad_input(small):
    coords, W = small
    Q = precision(W, "icar", 0.9)
    with pytest.raises(ValueError, match="max_k"):
        corr_decay_quantiles(Q, coords, max_k=len(coords))
    with pytest.raises(ValueError, match="min_k"):
        corr_decay_quantiles(Q, coords, min_k=5, max_k=2)
    with pytest.raises(ValueError, match="rows"):
        corr_decay_quantiles(Q, coords[:-1], max_k=5)
    L = sp.diags(np.asarray(W.sum(1)).ravel()) - W
    with pytest.raises(NotPositiveDefiniteError):
        corr_decay_quantiles(L, coords, max_k=5)


# ------------------------------------------------------------------------------------------- AnnData tools


@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    coords = _hex(20)  # 400 spots
    field = np.column_stack([np.sin(coords[:, 0] / 3), np.cos(coords[:, 1] / 4)])
    X = field @ rng.normal(size=(2, 30)) + 0.3 * rng.normal(size=(400, 30))
    a = ad.AnnData(X.astype(np.float32))
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"], _ = knn_graph(coords, 6)
    return a


def test_tl_corr_decay_stores_exact_table(adata):
    sm.tl.corr_decay(adata, prior="icar", rho=0.9, max_k=15)
    entry = adata.uns["corr_decay"]["icar_rho0.9"]
    Q = precision(adata.obsp["spatial_connectivities"], "icar", 0.9)
    ref, ref_var = _dense_reference(np.linalg.inv(Q.toarray()), adata.obsm["spatial"], 0, 15)
    np.testing.assert_allclose(entry["quantiles"][COLS].to_numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(entry["variance"][COLS].to_numpy().ravel(), ref_var, rtol=1e-6)
    p = entry["params"]
    assert p["prior"] == "icar" and p["rho"] == 0.9 and p["max_k"] == 15 and p["exact"] and p["n_used"] == 400
    assert entry["decay_rate"] > 0
    # standardized name, custom key, copy
    out = sm.tl.corr_decay(adata, prior="car", rho=0.1, standardize=True, max_k=5, key_added="mine", copy=True)
    assert "mine" in out.uns["corr_decay"] and "mine" not in adata.uns["corr_decay"]
    sm.tl.corr_decay(adata, prior="sar", rho=0.5, standardize=True, max_k=5)
    assert "sar_rho0.5_std" in adata.uns["corr_decay"]


def test_tl_corr_decay_bad_input_leaves_adata_unchanged(adata):
    with pytest.raises(NotPositiveDefiniteError, match=r"rho=0\.99"):
        sm.tl.corr_decay(adata, prior="icar", rho=1.0)
    with pytest.raises(NotPositiveDefiniteError, match="positive definite exactly for 0 <= rho <"):
        sm.tl.corr_decay(adata, prior="car", rho=0.9, max_k=5)
    with pytest.raises(ValueError, match="max_k"):
        sm.tl.corr_decay(adata, max_k=400)
    with pytest.raises(KeyError, match="spatial_neighbors"):
        sm.tl.corr_decay(adata, connectivity_key="nope_connectivities")
    b = adata.copy()
    del b.obsm["spatial"]
    with pytest.raises(KeyError, match="obsm"):
        sm.tl.corr_decay(b, max_k=5)
    with pytest.raises(ValueError, match="prior"):
        sm.tl.corr_decay(adata, prior="gauss")
    with pytest.raises(TypeError, match="AnnData"):
        sm.tl.corr_decay(adata.X)
    assert "corr_decay" not in adata.uns


def test_similarity_decay_matches_brute_force(adata):
    adata.obsm["X_rep"] = np.asarray(adata.X[:, :10], dtype=np.float64)
    sm.tl.similarity_decay(adata, use_rep="X_rep", n_pcs=None, max_k=12, cdf_k=4, n_null=5)
    entry = adata.uns["corr_decay"]["data"]
    X = adata.obsm["X_rep"]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    coords = adata.obsm["spatial"]
    nbrs = NearestNeighbors(n_neighbors=13).fit(coords).kneighbors(coords, return_distance=False)
    sims = np.einsum("id,ikd->ik", Xn, Xn[nbrs])
    np.testing.assert_allclose(entry["quantiles"][COLS].to_numpy(), np.quantile(sims, QS, axis=0).T, atol=1e-10)
    cdf = entry["similarity_cdf"]
    assert cdf.shape == (101, 3)
    np.testing.assert_allclose(cdf["observed"], np.quantile(sims[:, 1:5], np.linspace(0, 1, 101)), atol=1e-10)
    # smooth data: neighbours are more alike than shuffled pairs
    assert cdf["observed"].median() > cdf["shuffled"].median() + 0.2
    assert entry["params"]["kind"] == "data"


def test_similarity_decay_pca_not_written(adata):
    sm.tl.similarity_decay(adata, max_k=5, n_pcs=5, n_null=2)
    assert "X_pca" not in adata.obsm
    q = adata.uns["corr_decay"]["data"]["quantiles"]
    assert np.allclose(q.loc[0, COLS], 1.0) and (q["Q50"].iloc[1:] < 1).all()
    with pytest.raises(KeyError, match="X_umap"):
        sm.tl.similarity_decay(adata, use_rep="X_umap")


def test_fit_decay_recovers_rate_and_scan_rho_finds_generating_rho(adata):
    sm.tl.corr_decay(adata, prior="icar", rho=0.95, max_k=15)
    # pretend the data decay like the icar 0.95 prior
    store = adata.uns["corr_decay"]
    store["data"] = {"quantiles": store["icar_rho0.95"]["quantiles"].copy(), "params": {"kind": "data"}}
    k = np.arange(0, 16)
    store["synthetic"] = {
        "quantiles": pd.DataFrame({**{c: 0.7 * np.exp(-0.3 * k) + 0.1 for c in COLS}, "k": k}),
        "params": {"kind": "prior"},
    }
    rates = sm.tl.fit_decay(adata)
    assert rates.loc["synthetic", "beta"] == pytest.approx(0.3, rel=1e-6)
    store = adata.uns["corr_decay"]  # each entry was replaced through save_result
    assert store["synthetic"]["decay_rate"] == pytest.approx(0.3, rel=1e-6)
    scan = sm.tl.scan_rho(adata, prior="icar", rhos=(0.5, 0.95, 0.999))
    assert scan.loc[scan["best"], "rho"].tolist() == [0.95]
    assert scan.loc[scan["best"], "mae"].iloc[0] < 1e-12
    with pytest.raises(KeyError, match="corr_decay"):
        sm.tl.fit_decay(adata, "nope")


# ----------------------------------------------------------------------------------------------------- plots


@pytest.fixture
def adata_decay(adata):
    sm.tl.similarity_decay(adata, max_k=10, n_pcs=5, n_null=3)
    sm.tl.corr_decay(adata, prior="icar", rho=0.9, max_k=10)
    return adata


def test_pl_corr_decay_band(adata_decay):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    ax = sm.pl.corr_decay(adata_decay, show=False)
    store = adata_decay.uns["corr_decay"]
    lines = [ln for ln in ax.get_lines() if ln.get_label() in store]
    assert [ln.get_label() for ln in lines] == ["data", "icar_rho0.9"]
    for ln in lines:
        q = store[ln.get_label()]["quantiles"]
        np.testing.assert_allclose(ln.get_xdata(), q["k"])
        np.testing.assert_allclose(ln.get_ydata(), q["Q50"])
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(polys) == 4  # Q10-Q90 and Q25-Q75 for each curve
    q = store["icar_rho0.9"]["quantiles"]
    verts = polys[2].get_paths()[0].vertices
    assert np.isclose(verts[:, 1].min(), q["Q10"].min()) and np.isclose(verts[:, 1].max(), q["Q90"].max())
    verts = polys[3].get_paths()[0].vertices
    assert np.isclose(verts[:, 1].min(), q["Q25"].min()) and np.isclose(verts[:, 1].max(), q["Q75"].max())
    plt.close("all")


def test_pl_corr_decay_line_box_panels(adata_decay):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    q = adata_decay.uns["corr_decay"]["icar_rho0.9"]["quantiles"]
    fig, ax0 = plt.subplots()
    ax = sm.pl.corr_decay(adata_decay, "icar_rho0.9", kind="line", ax=ax0, show=False)
    assert ax is ax0
    ys = {ln.get_gid(): ln.get_ydata() for ln in ax.get_lines() if ln.get_gid()}
    for c in COLS:
        np.testing.assert_allclose(ys[c], q[c])
    ax = sm.pl.corr_decay(adata_decay, "icar_rho0.9", kind="box", show=False)
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == len(q)
    np.testing.assert_allclose([r.get_y() for r in rects], q["Q25"])
    np.testing.assert_allclose([r.get_y() + r.get_height() for r in rects], q["Q75"])
    med = next(c for c in ax.collections if c.get_gid() == "medians")
    np.testing.assert_allclose([s[0, 1] for s in med.get_segments()], q["Q50"])
    fig = sm.pl.corr_decay(adata_decay, panels=True, show=False)
    assert isinstance(fig, Figure)
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == ["data", "icar_rho0.9"]
    plt.close("all")


def test_pl_similarity_cdf_and_errors(adata, adata_decay):
    import matplotlib.pyplot as plt

    ax = sm.pl.similarity_cdf(adata_decay, show=False)
    cdf = adata_decay.uns["corr_decay"]["data"]["similarity_cdf"]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["observed"].get_xdata(), cdf["observed"])
    np.testing.assert_allclose(lines["observed"].get_ydata(), cdf["quantile"])
    np.testing.assert_allclose(lines["shuffled"].get_xdata(), cdf["shuffled"])
    with pytest.raises(KeyError, match="icar_rho0.9"):
        sm.pl.similarity_cdf(adata_decay, "icar_rho0.9")
    with pytest.raises(ValueError, match="kind"):
        sm.pl.corr_decay(adata_decay, kind="violin")
    plt.close("all")
    empty = ad.AnnData(np.zeros((3, 2)))
    with pytest.raises(KeyError, match=r"Please run `sm.tl.corr_decay` first"):
        sm.pl.corr_decay(empty)
    with pytest.raises(KeyError, match=r"Please run `sm.tl.corr_decay`"):
        sm.pl.corr_decay(adata_decay, "nope")


# ------------------------------------------------------------------ the prior of the fitting functions (issue 11)


def _directed(coords, k):
    """squidpy's generic kNN graph: row i lists the k nearest spots of i (not symmetric)."""
    nbrs = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    n = len(coords)
    return sp.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), nbrs.ravel())), shape=(n, n))


def test_corr_decay_directed_knn_uses_the_symmetrized_prior():
    """The README recipe (squidpy kNN graph) failed at the default rho with a self-contradictory hint."""
    from smoother._anndata import get_prior_operator

    rng = np.random.default_rng(3)
    coords = rng.uniform(0, 12, size=(150, 2))
    W = _directed(coords, 6)
    assert abs(W - W.T).sum() > 0
    a = ad.AnnData(np.zeros((150, 2)))
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = W
    sm.tl.corr_decay(a, max_k=8)  # default prior='icar', rho=0.99
    got = a.uns["corr_decay"]["icar_rho0.99"]["quantiles"][COLS].to_numpy()
    # reference: the dense inverse of the precision on max(W, W.T), what smooth/deconvolve/spatial_pca use
    Ws = W.maximum(W.T).toarray()
    Q = np.diag(Ws.sum(1)) - 0.99 * Ws
    ref, _ = _dense_reference(np.linalg.inv(Q), coords, 0, 8)
    np.testing.assert_allclose(got, ref, atol=1e-8)
    np.testing.assert_allclose(get_prior_operator(W, "icar", 0.99).Q.toarray(), Q, atol=1e-12)


def test_corr_decay_isolated_spots_named_before_any_work():
    from sklearn.neighbors import radius_neighbors_graph
    from tests.contract import check_rejects

    coords = np.vstack([_hex(8), [[40.0, 40.0], [60.0, 0.0]]])
    a = ad.AnnData(np.zeros((66, 2)))
    a.obs_names = [f"s{i}" for i in range(66)]
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = radius_neighbors_graph(coords, 1.1).tocsr()  # squidpy radius: empty rows
    for rho in (0.99, 0.5, 0.1):
        e = check_rejects(sm.tl.corr_decay, a, rho=rho, max_k=5, error=ValueError, names=("s64, s65", "at any rho"))
        assert "rho=0.95" not in str(e)
    # the message's way out: 'isar' is proper with isolated spots
    sm.tl.corr_decay(a, prior="isar", rho=0.9, max_k=5)
    assert np.isfinite(a.uns["corr_decay"]["isar_rho0.9"]["quantiles"][COLS].to_numpy()).all()


# ------------------------------------------------------------------------------- degenerate decay-rate fits


@pytest.mark.parametrize(
    "y,why",
    [
        (lambda k: 0.9 * np.exp(-0.001 * k), "too slow to identify"),  # a near-straight line as a huge exponential
        (lambda k: 0.5 - 0.4 * np.exp(-0.3 * k), "does not decay"),  # rising: alpha < 0
        (lambda k: 0.4 + 0 * k, "flat"),
        (lambda k: 0.9 - 0.01 * k, "did not converge"),  # an exact straight line
    ],
)
def test_fit_decay_flags_degenerate_fits(adata, y, why):
    from smoother._core.decay import fit_mono_exp

    k = np.arange(0, 16)
    q = pd.DataFrame({**{c: y(k) for c in COLS}, "k": k})
    q.loc[0, COLS] = 1.0
    adata.uns["corr_decay"] = {"bad": {"quantiles": q, "params": {"kind": "prior"}}}
    if why in ("too slow to identify", "does not decay"):  # what used to be reported as the decay rate
        assert np.isfinite(fit_mono_exp(k[1:], q["Q50"].to_numpy()[1:])).all()
    with pytest.warns(UserWarning, match=why):
        rates = sm.tl.fit_decay(adata)
    assert rates.loc["bad", "degenerate"] and why in rates.loc["bad", "note"]
    assert np.isnan(rates.loc["bad", "beta"])
    entry = adata.uns["corr_decay"]["bad"]
    assert np.isnan(entry["decay_rate"]) and entry["decay_degenerate"] and why in entry["decay_note"]
    assert entry["params"] == {"kind": "prior"}  # the rest of the entry is kept


def test_scan_rho_ignores_a_degenerate_data_rate(adata):
    sm.tl.corr_decay(adata, prior="icar", rho=0.95, max_k=15)
    k = np.arange(0, 16)
    q = adata.uns["corr_decay"]["icar_rho0.95"]["quantiles"].copy()
    lin = pd.DataFrame({**dict.fromkeys(COLS, np.r_[1.0, 0.5 - 0.01 * k[1:]]), "k": k})
    adata.uns["corr_decay"]["data"] = {"quantiles": lin, "params": {"kind": "data"}}
    with pytest.warns(UserWarning, match="data curve 'data' is degenerate"):
        scan = sm.tl.scan_rho(adata, prior="icar", rhos=(0.5, 0.95))
    assert np.isnan(scan.attrs["data_decay_rate"]) and scan["rate_diff"].isna().all()
    # best is still the smallest mean absolute difference of the medians, computed by hand
    mae = {
        r: np.abs(adata.uns["corr_decay"][f"icar_rho{r:g}"]["quantiles"]["Q50"][1:] - lin["Q50"][1:]).mean()
        for r in (0.5, 0.95)
    }
    assert scan.loc[scan["best"], "rho"].iloc[0] == min(mae, key=mae.get)
    np.testing.assert_allclose(scan["mae"], [mae[0.5], mae[0.95]])
    np.testing.assert_allclose(adata.uns["corr_decay"]["icar_rho0.95"]["quantiles"][COLS], q[COLS])


def test_similarity_decay_nan_representation_is_an_error(adata):
    from tests.contract import check_rejects

    rep = np.asarray(adata.X[:, :5], dtype=np.float64)
    rep[[3, 7], 1] = np.nan
    adata.obsm["X_rep"] = rep
    check_rejects(sm.tl.similarity_decay, adata, use_rep="X_rep", max_k=5, error=ValueError, names=("X_rep", "2 spot"))
    adata.X[2, 2] = np.inf
    check_rejects(sm.tl.similarity_decay, adata, max_k=5, error=ValueError, names="adata.X")
    check_rejects(sm.tl.similarity_decay, adata, use_rep="X", max_k=5, error=ValueError, names="adata.X")
    # NaN beyond the n_pcs used columns is not in the way
    rep[:, 1] = 0.0
    rep[[3, 7], 4] = np.nan
    adata.obsm["X_rep"] = rep
    sm.tl.similarity_decay(adata, use_rep="X_rep", n_pcs=3, max_k=5, n_null=2)
    assert np.isfinite(adata.uns["corr_decay"]["data"]["similarity_cdf"][["observed", "shuffled"]].to_numpy()).all()


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_similarity_decay_sparse_x_stays_sparse_and_equals_dense(adata, fmt, monkeypatch):
    dense = adata.copy()
    X = np.asarray(adata.X, dtype=np.float64)
    X[np.abs(X) < 0.5] = 0.0  # a real sparsity pattern, with some all-zero spots
    X[:3] = 0.0
    dense.X = X
    adata.X = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    sm.tl.similarity_decay(dense, use_rep="X", max_k=6, cdf_k=3, n_null=3)

    def no_densify(*_a, **_k):
        raise AssertionError("a sparse X was densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", no_densify)
    monkeypatch.setattr(sp.csr_matrix, "todense", no_densify)
    sm.tl.similarity_decay(adata, use_rep="X", max_k=6, cdf_k=3, n_null=3)
    for key in ("quantiles", "similarity_cdf"):
        pd.testing.assert_frame_equal(adata.uns["corr_decay"]["data"][key], dense.uns["corr_decay"]["data"][key])
    # brute force: cosine similarity with the k-th neighbour, 0 for the all-zero spots
    norm = np.linalg.norm(X, axis=1)
    Xn = X / np.where(norm > 0, norm, 1.0)[:, None]
    coords = adata.obsm["spatial"]
    nbrs = NearestNeighbors(n_neighbors=7).fit(coords).kneighbors(coords, return_distance=False)
    sims = np.einsum("id,ikd->ik", Xn, Xn[nbrs])
    assert (sims[:3] == 0).all()
    got = adata.uns["corr_decay"]["data"]["quantiles"][COLS].to_numpy()
    np.testing.assert_allclose(got, np.quantile(sims, QS, axis=0).T, atol=1e-12)
