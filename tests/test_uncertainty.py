"""Posterior uncertainty of sm.tl.smooth (issue 14): dense formulas, calibration, the getters and plots."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import smoother as sm
from smoother._anndata import get_prior_operator

from .contract import check_rejects


def _adata(n_spots=300, n_genes=6, seed=0):
    a = sm.datasets.simulate_field(n_spots=n_spots, n_genes=n_genes, seed=seed)
    sm.pp.spatial_graph(a)
    return a


def _dense_factor(a, prior, rho, lam, center):
    op = get_prior_operator(a.obsp["spatial_connectivities"], prior, rho)
    n = a.n_obs
    A = np.eye(n) + lam * op.dense()
    S = np.linalg.inv(A)
    if not center:
        return np.diag(S), np.trace(S)
    H = np.zeros((n + 1, n + 1))
    H[:n, :n] = A
    H[:n, n] = H[n, :n] = 1.0
    H[n, n] = n
    T = np.hstack([np.eye(n), np.ones((n, 1))])
    cov = T @ np.linalg.inv(H) @ T.T
    hat_trace = np.trace(S) + 1.0 - S.sum() / n
    return np.diag(cov), hat_trace


@pytest.mark.parametrize(
    ("prior", "rho", "center"),
    [("icar", 0.99, True), ("icar", 0.99, False), ("car", 0.1, True), ("sma", 0.5, False), ("sma", 0.5, True)],
)
def test_var_factor_and_sigma_equal_the_dense_formulas(prior, rho, center):
    a = _adata()
    lam = 1.7
    sm.tl.smooth(a, prior=prior, rho=rho, lambda_spatial=lam, center=center, uncertainty=True, dtype="float64")
    d_ref, tr = _dense_factor(a, prior, rho, lam, center)
    np.testing.assert_allclose(a.obs["smoothed_var_factor"].to_numpy(), d_ref, rtol=1e-8, atol=1e-12)
    Y = np.asarray(a.X, dtype=np.float64)
    rss = ((Y - a.layers["smoothed"]) ** 2).sum(0)
    np.testing.assert_allclose(a.var["smoothed_sigma"].to_numpy(), np.sqrt(rss / (a.n_obs - tr)), rtol=1e-7)
    rec = a.uns["smoothed"]["uncertainty"]
    assert rec["method"] == "exact" and rec["trace"] == pytest.approx(tr, rel=1e-8)
    sd = sm.get.posterior_sd(a, list(a.var_names[:2]))
    np.testing.assert_allclose(
        sd.to_numpy(), np.sqrt(d_ref)[:, None] * a.var["smoothed_sigma"].to_numpy()[None, :2], rtol=1e-8
    )


def test_intervals_are_calibrated_on_data_drawn_from_the_prior():
    """Nominal 50/90/95% intervals cover the truth at the nominal rate (+-3 points) with lambda, sigma estimated."""
    import anndata as ad

    from smoother._core.uncertainty import sample_gmrf

    base = sm.datasets.simulate_field(n_spots=1600, n_genes=1, seed=1)
    a = ad.AnnData(np.zeros((base.n_obs, 30), dtype=np.float32))
    a.obsm["spatial"] = np.asarray(base.obsm["spatial"])
    sm.pp.spatial_graph(a)
    Q = get_prior_operator(a.obsp["spatial_connectivities"], "icar", 0.99).Q
    lam_true, sigma = 2.0, 0.4
    F = sample_gmrf(sp.csr_matrix(Q) * (lam_true / sigma**2), 30, seed=2)
    truth = F + np.random.default_rng(3).normal(2.0, 1.0, 30)[None, :]
    a.X = (truth + np.random.default_rng(4).normal(scale=sigma, size=truth.shape)).astype(np.float32)
    sm.tl.smooth(a, lambda_spatial="auto", criterion="ml", uncertainty=True, dtype="float64")
    assert 0.5 * lam_true < a.uns["smoothed"]["lambda"] < 2 * lam_true
    np.testing.assert_allclose(a.var["smoothed_sigma"].to_numpy(), sigma, rtol=0.1)
    for level in (0.5, 0.9, 0.95):
        lo, hi = sm.get.interval(a, level=level)
        cover = float(((truth >= lo.to_numpy()) & (truth <= hi.to_numpy())).mean())
        assert abs(cover - level) < 0.03, (level, cover)


def test_rerun_without_uncertainty_removes_the_stale_keys_and_copy_leaves_input():
    a = _adata()
    sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=True)
    assert "smoothed_var_factor" in a.obs and "smoothed_sigma" in a.var
    b = sm.tl.smooth(a, lambda_spatial=1.0, copy=True)
    assert (
        "smoothed_var_factor" not in b.obs and "smoothed_sigma" not in b.var and "uncertainty" not in b.uns["smoothed"]
    )
    assert "smoothed_var_factor" in a.obs  # the input was not touched
    sm.tl.smooth(a, lambda_spatial=1.0)
    assert "smoothed_var_factor" not in a.obs and "smoothed_sigma" not in a.var


@pytest.mark.parametrize(("kwargs", "name"), [({"nonneg": True}, "nonneg"), ({"per_gene": True}, "per_gene")])
def test_uncertainty_with_options_that_have_none_is_rejected_before_work(kwargs, name):
    a = _adata(n_spots=60, n_genes=2)
    kw = {"lambda_spatial": "auto"} if name == "per_gene" else {}
    check_rejects(sm.tl.smooth, a, uncertainty=True, error=ValueError, names=(name, "uncertainty"), **kw, **kwargs)
    check_rejects(sm.tl.smooth, a, uncertainty="yes", error=TypeError, names="uncertainty")


def test_getters_name_what_to_run_and_check_their_arguments():
    a = _adata(n_spots=60, n_genes=2)
    with pytest.raises(KeyError, match="uncertainty=True"):
        sm.get.posterior_sd(a)
    sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=True)
    with pytest.raises(KeyError, match="not_a_gene"):
        sm.get.posterior_sd(a, ["not_a_gene"])
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="level"):
            sm.get.interval(a, level=bad)
    lo, hi = sm.get.interval(a, a.var_names[0], level=0.9)
    assert (hi.to_numpy() > lo.to_numpy()).all() and lo.shape == (a.n_obs, 1)
    mid = 0.5 * (lo.to_numpy() + hi.to_numpy())[:, 0]
    np.testing.assert_allclose(mid, a.layers["smoothed"][:, 0], rtol=1e-5, atol=1e-6)


def test_uncertainty_plots_show_the_estimate_and_the_sd():
    import matplotlib

    matplotlib.use("agg")
    a = _adata(n_spots=100, n_genes=2)
    sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=True)
    g = a.var_names[1]
    fig = sm.pl.uncertainty(a, g, show=False)
    est, sd = (ax.collections[0].get_array() for ax in fig.axes[:2])
    np.testing.assert_allclose(np.asarray(est), a.layers["smoothed"][:, 1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sd), sm.get.posterior_sd(a, g).to_numpy()[:, 0], rtol=1e-6)
    assert len(fig.axes) == 4  # two maps, two colorbars
    ax = sm.pl.intervals(a, g, [0, 5, 7], level=0.9, truth_layer="truth", show=False)
    lo, hi = sm.get.interval(a, g, level=0.9)
    segs = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segs], np.c_[lo.to_numpy()[[0, 5, 7], 0], hi.to_numpy()[[0, 5, 7], 0]])
    with pytest.raises(ValueError, match="spots"):
        sm.pl.intervals(a, g, [], show=False)
    import matplotlib.pyplot as plt

    plt.close("all")
