"""Uncertainty of sm.tl.impute / sm.tl.enhance (issue 14): dense formulas on tiny problems, calibration on fields
drawn from the prior, and the contract for options that have no uncertainty."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from tests.contract import check_rejects

import smoother as sm


def _grid(n_side=9):
    xx, yy = np.meshgrid(np.arange(float(n_side)), np.arange(float(n_side)))
    return np.column_stack([xx.ravel(), yy.ravel()])


def _split(seed=0, n_side=9, n_genes=3, frac_missing=0.25):
    rng = np.random.default_rng(seed)
    coords = _grid(n_side)
    miss = rng.random(len(coords)) < frac_missing
    c_obs, c_new = coords[~miss], coords[miss]
    Y = np.sin(c_obs[:, :1] / 2.0) + rng.normal(scale=0.3, size=(len(c_obs), n_genes))
    a = ad.AnnData(Y)
    a.obsm["spatial"] = c_obs
    return a, c_new


def _Q(W, rho):
    """Dense ICAR precision D - rho W (independent of the package's builder)."""
    W = W.toarray()
    return np.diag(W.sum(1)) - rho * W


def _with_mean(P: np.ndarray, b: np.ndarray, c: float) -> np.ndarray:
    """Diagonal of the x-block of the inverse of [[P, -b], [-b', c]] (a flat prior on the mean, integrated out);
    when c = 0 (constants unpenalized) the mean drops out: diag(P^{-1})."""
    if c <= 1e-9:
        return np.diag(np.linalg.inv(P))
    big = np.block([[P, -b[:, None]], [-b[None, :], np.array([[c]])]])
    return np.diag(np.linalg.inv(big))[:-1]


@pytest.mark.parametrize("rho", [0.9, 1.0])
@pytest.mark.parametrize("center", [False, True])
def test_fixed_obs_variance_is_the_dense_schur_complement(rho, center):
    a, c_new = _split()
    out = sm.tl.impute(a, c_new, rho=rho, center=center, uncertainty=True, dtype="float64")
    Q = _Q(out.obsp["spatial_connectivities"], rho)
    obs = out.obs["observed"].to_numpy()
    o, m = np.flatnonzero(obs), np.flatnonzero(~obs)
    # the conditional covariance of x_m given x_o is the Schur complement of the prior covariance ...
    if rho < 1:
        S = np.linalg.inv(Q)
        schur = S[np.ix_(m, m)] - S[np.ix_(m, o)] @ np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, m)])
        np.testing.assert_allclose(np.diag(schur), np.diag(np.linalg.inv(Q[np.ix_(m, m)])), rtol=1e-8)
    q1 = Q.sum(1)
    ref = _with_mean(Q[np.ix_(m, m)], q1[m], q1.sum()) if center else np.diag(np.linalg.inv(Q[np.ix_(m, m)]))
    d = out.obs["impute_var_factor"].to_numpy()
    np.testing.assert_allclose(d[m], ref, rtol=1e-8)
    assert (d[o] == 0).all()
    # sigma: REML of the prior scale from the observed values' marginal precision P_o (a dense Schur complement)
    P = Q[np.ix_(o, o)] - Q[np.ix_(o, m)] @ np.linalg.solve(Q[np.ix_(m, m)], Q[np.ix_(m, o)])
    Y = a.X
    p1 = P.sum(1)
    if center and p1.sum() > 1e-9:
        mu = (p1 @ Y) / p1.sum()
        R = Y - mu
    else:
        R = Y - (Y.mean(0) if center else 0.0)
    q = np.einsum("ij,ij->j", R, P @ R)
    dof = len(o) - (1 if (center or rho == 1.0) else 0)
    np.testing.assert_allclose(out.var["impute_sigma"].to_numpy(), np.sqrt(q / dof), rtol=1e-8)
    assert out.uns["impute"]["uncertainty"]["sigma"] == "prior_scale_reml"


@pytest.mark.parametrize("rho", [0.9, 1.0])
@pytest.mark.parametrize("center", [False, True])
def test_joint_variance_and_sigma_equal_dense_formulas(rho, center):
    a, c_new = _split(seed=1)
    lam = 0.8
    out = sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial=lam, rho=rho, center=center, uncertainty=True,
                       dtype="float64")  # fmt: skip
    Q = _Q(out.obsp["spatial_connectivities"], rho)
    obs = out.obs["observed"].to_numpy()
    o = np.flatnonzero(obs)
    n, n_o = len(obs), len(o)
    Dd = np.diag(obs.astype(float))
    A = Dd + lam * Q
    q1 = Q.sum(1)
    ref = _with_mean(A, lam * q1, lam * q1.sum()) if center else np.diag(np.linalg.inv(A))
    np.testing.assert_allclose(out.obs["impute_var_factor"].to_numpy(), ref, rtol=1e-8)
    # sigma^2 = RSS / (n_o - tr H), H the (dense) hat matrix of the observed values
    Ai = np.linalg.inv(A)
    Pm = np.outer(np.ones(n), obs.astype(float)) / n_o if center else np.zeros((n, n))
    H = (Pm + Ai @ Dd @ (np.eye(n) - Pm))[np.ix_(o, o)]
    Y = a.X
    rss = ((Y - H @ Y) ** 2).sum(0)
    np.testing.assert_allclose(out.var["impute_sigma"].to_numpy(), np.sqrt(rss / (n_o - np.trace(H))), rtol=1e-8)
    np.testing.assert_allclose(out.uns["impute"]["uncertainty"]["trace"], np.trace(H), rtol=1e-10)


@pytest.mark.parametrize("center", [False, True])
def test_enhance_variance_and_sigma_equal_dense_formulas(center):
    rng = np.random.default_rng(2)
    coords = _grid(4)
    a = ad.AnnData(rng.normal(size=(len(coords), 2)))
    a.obsm["spatial"] = coords
    lam, rho = 0.3, 0.9
    out = sm.tl.enhance(a, factor=2, lambda_spatial=lam, rho=rho, center=center, uncertainty=True, dtype="float64")
    parent = out.obs["parent_spot"].cat.codes.to_numpy()
    counts = np.bincount(parent)
    Ad = np.zeros((a.n_obs, out.n_obs))
    Ad[parent, np.arange(out.n_obs)] = 1.0 / counts[parent]
    Q = _Q(out.obsp["spatial_connectivities"], rho)
    M = Ad.T @ Ad + lam * Q
    q1 = Q.sum(1)
    ref = _with_mean(M, lam * q1, lam * q1.sum()) if center else np.diag(np.linalg.inv(M))
    np.testing.assert_allclose(out.obs["enhance_var_factor"].to_numpy(), ref, rtol=1e-8)
    ns = a.n_obs
    Pm = np.ones((ns, ns)) / ns if center else np.zeros((ns, ns))
    H = Pm + Ad @ np.linalg.solve(M, Ad.T) @ (np.eye(ns) - Pm)
    rss = ((a.X - H @ a.X) ** 2).sum(0)
    np.testing.assert_allclose(out.var["enhance_sigma"].to_numpy(), np.sqrt(rss / (ns - np.trace(H))), rtol=1e-8)
    np.testing.assert_allclose(a.X - Ad @ out.X, a.X - H @ a.X, atol=1e-8)  # the hat matrix is the fit's


def test_posterior_sd_and_interval_read_the_imputed_result():
    a, c_new = _split(seed=3)
    out = sm.tl.impute(a, c_new, uncertainty=True, key_added="imp", dtype="float64")
    assert "imp" in out.uns and "imp_var_factor" in out.obs and "imp_sigma" in out.var
    sd = sm.get.posterior_sd(out, ["0", "2"], key="imp")
    d, s = out.obs["imp_var_factor"].to_numpy(), out.var["imp_sigma"].to_numpy()
    np.testing.assert_allclose(sd.to_numpy(), np.sqrt(d)[:, None] * s[[0, 2]][None, :])
    lo, hi = sm.get.interval(out, ["0", "2"], key="imp", level=0.9)
    z = norm.ppf(0.95)
    np.testing.assert_allclose(lo.to_numpy(), out.X[:, [0, 2]] - z * sd.to_numpy())
    np.testing.assert_allclose(hi.to_numpy(), out.X[:, [0, 2]] + z * sd.to_numpy())
    plain = sm.tl.impute(a, c_new)  # no uncertainty: no stale keys, and the getter says what to run
    assert "impute_var_factor" not in plain.obs and "impute_sigma" not in plain.var
    with pytest.raises(KeyError, match="uncertainty=True"):
        sm.get.posterior_sd(plain, "0", key="impute")


def test_unconnected_new_spots_get_nan():
    a, _ = _split(seed=4)
    far = np.array([[100.0, 100.0], [101.0, 100.0], [100.0, 101.0]])
    with pytest.warns(UserWarning, match="no graph path"):
        out = sm.tl.impute(a, far, n_neighs=2, uncertainty=True)
    d = out.obs["impute_var_factor"].to_numpy()
    assert np.isnan(d[~out.obs["connected"].to_numpy()]).all()
    assert np.isfinite(d[out.obs["connected"].to_numpy()]).all()


def _coverage(est, sd, truth, levels=(0.5, 0.9, 0.95)):
    return {lv: float((np.abs(truth - est) <= norm.ppf(0.5 + lv / 2) * sd).mean()) for lv in levels}


def test_fixed_obs_intervals_are_calibrated_on_fields_from_the_prior():
    from smoother._core.graph import knn_graph
    from smoother._core.uncertainty import sample_gmrf

    rng = np.random.default_rng(5)
    coords = _grid(30)
    W, _ = knn_graph(coords, 6, symmetrize="mutual")
    rho, tau = 0.95, 2.0
    Q = sp.csr_matrix(_Q(W, rho))
    F = 3.0 + tau * sample_gmrf(Q, 40, seed=5)  # a non-zero mean, estimated by centring
    miss = rng.random(len(coords)) < 0.3
    a = ad.AnnData(F[~miss])
    a.obsm["spatial"] = coords[~miss]
    out = sm.tl.impute(a, coords[miss], rho=rho, uncertainty=True, dtype="float64")
    assert np.allclose(out.obsm["spatial"], np.vstack([coords[~miss], coords[miss]]))
    new = ~out.obs["observed"].to_numpy()
    sd = sm.get.posterior_sd(out, key="impute").to_numpy()[new]
    cov = _coverage(out.X[new], sd, F[miss])
    for lv, c in cov.items():
        assert abs(c - lv) < 0.03, cov
    assert abs(np.median(out.var["impute_sigma"]) / tau - 1) < 0.05


# ---------------------------------------------------------------------------------------------------------------
# contract: uncertainty with options that have none, before any work
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"uncertainty": True, "nonneg": True}, ValueError, ("uncertainty", "nonneg")),
        ({"uncertainty": True, "nonneg": True, "fixed_obs": False}, ValueError, ("uncertainty", "nonneg")),
        ({"uncertainty": True, "prior": "sma"}, ValueError, ("uncertainty", "sma")),
        ({"uncertainty": "yes"}, TypeError, "uncertainty"),
        ({"uncertainty": 1}, TypeError, "uncertainty"),
        ({"key_added": ""}, ValueError, "key_added"),
        ({"key_added": 3}, TypeError, "key_added"),
        ({"criterion": "ml", "prior": "sma", "fixed_obs": False, "lambda_spatial": "auto"}, ValueError, ("ml", "sma")),
        ({"criterion": "bayes", "fixed_obs": False, "lambda_spatial": "auto"}, ValueError, "criterion"),
    ],
)
def test_impute_uncertainty_rejects(kwargs, error, names):
    a, c_new = _split(seed=6)
    check_rejects(sm.tl.impute, a, c_new, error=error, names=names, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"uncertainty": True, "nonneg": True}, ValueError, ("uncertainty", "nonneg")),
        ({"uncertainty": None}, TypeError, "uncertainty"),
        ({"key_added": ""}, ValueError, "key_added"),
    ],
)
def test_enhance_uncertainty_rejects(kwargs, error, names):
    a, _ = _split(seed=7, n_side=4, frac_missing=0.0)
    check_rejects(sm.tl.enhance, a, error=error, names=names, **kwargs)


def test_joint_loglik_differences_equal_the_dense_gaussian_likelihood():
    from smoother._core.conditional import joint_loglik

    rng = np.random.default_rng(8)
    a, c_new = _split(seed=8, n_genes=4)
    out = sm.tl.impute(a, c_new)
    Q = _Q(out.obsp["spatial_connectivities"], 0.9)
    obs = out.obs["observed"].to_numpy()
    o = np.flatnonzero(obs)
    Yo = rng.normal(size=(len(o), 4))
    S = np.linalg.inv(Q)[np.ix_(o, o)]

    def dense(lam):  # profile log-likelihood of N(0, s^2 (I + S / lam)), s^2 maximized per gene
        C = np.eye(len(o)) + S / lam
        s2 = np.einsum("ij,ij->j", Yo, np.linalg.solve(C, Yo)) / len(o)
        return float(-0.5 * len(o) * np.log(s2).sum() - 0.5 * Yo.shape[1] * np.linalg.slogdet(C)[1])

    got = [joint_loglik(Yo, sp.csr_matrix(Q), obs, lam) for lam in (0.1, 1.0, 7.0)]
    ref = [dense(lam) for lam in (0.1, 1.0, 7.0)]
    np.testing.assert_allclose(np.diff(got), np.diff(ref), rtol=1e-8)


def test_joint_ml_recovers_lambda_and_its_intervals_are_calibrated():
    from smoother._anndata import get_prior_operator
    from smoother._core.graph import knn_graph
    from smoother._core.uncertainty import sample_gmrf

    rng = np.random.default_rng(9)
    coords = _grid(36)
    held = rng.random(len(coords)) < 0.3
    c_obs, c_new = coords[~held], coords[held]
    W, _ = knn_graph(np.vstack([c_obs, c_new]), 6, symmetrize="mutual")  # the graph impute builds (its order)
    lam, sigma = 2.0, 0.5
    Q = get_prior_operator(W, "icar", 0.99, False).Q
    T = 1.0 + sigma / np.sqrt(lam) * sample_gmrf(Q, 30, seed=9)
    n_o = len(c_obs)
    a = ad.AnnData(T[:n_o] + rng.normal(scale=sigma, size=(n_o, 30)))
    a.obsm["spatial"] = c_obs
    out = sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial="auto", criterion="ml", uncertainty=True,
                       dtype="float64")  # fmt: skip
    assert out.uns["impute"]["gcv"]["criterion"] == "ml"
    assert abs(np.log(out.uns["impute"]["params"]["lambda"] / lam)) < np.log(1.3)
    assert abs(np.median(out.var["impute_sigma"]) / sigma - 1) < 0.05
    sd = sm.get.posterior_sd(out, key="impute").to_numpy()
    cov = _coverage(out.X, sd, T)
    for lv, c in cov.items():
        assert abs(c - lv) < 0.03, cov


@pytest.mark.parametrize("fixed_obs", [True, False])
def test_uncertainty_same_for_sparse_int_float32_and_edge_genes(fixed_obs):
    a, c_new = _split(seed=10)
    counts = np.random.default_rng(10).poisson(2.0, size=a.shape)
    kw = {"fixed_obs": fixed_obs, "uncertainty": True, "dtype": "float64"}
    if not fixed_obs:
        kw["lambda_spatial"] = 0.5
    ref = sm.tl.impute(ad.AnnData(counts.astype(np.float64), obsm={"spatial": a.obsm["spatial"]}), c_new, **kw)
    for X in (counts, counts.astype(np.float32), sp.csr_matrix(counts), sp.csc_matrix(counts.astype(np.float32))):
        out = sm.tl.impute(ad.AnnData(X, obsm={"spatial": a.obsm["spatial"]}), c_new, **kw)
        np.testing.assert_allclose(out.var["impute_sigma"], ref.var["impute_sigma"], rtol=1e-6)
        np.testing.assert_allclose(out.obs["impute_var_factor"], ref.obs["impute_var_factor"], rtol=1e-12)
    # constant genes have sigma 0 (no variation to scale), 0 genes give empty sigma; the factor is unchanged
    const = sm.tl.impute(ad.AnnData(np.full((a.n_obs, 2), 4.0), obsm={"spatial": a.obsm["spatial"]}), c_new, **kw)
    np.testing.assert_allclose(const.var["impute_sigma"], 0.0, atol=1e-7)
    empty = sm.tl.impute(ad.AnnData(np.zeros((a.n_obs, 0)), obsm={"spatial": a.obsm["spatial"]}), c_new, **kw)
    assert empty.var["impute_sigma"].shape == (0,)
    np.testing.assert_allclose(empty.obs["impute_var_factor"], ref.obs["impute_var_factor"], rtol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    frac=st.floats(0.1, 0.8),
    rho=st.sampled_from([0.5, 0.9, 1.0]),
    center=st.booleans(),
    lam=st.floats(0.05, 20.0),
)
def test_core_factors_equal_dense_on_random_problems(seed, frac, rho, center, lam):
    from smoother._core.conditional import fixed_var_factor, joint_var_factor
    from smoother._core.graph import knn_graph

    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 6, size=(40, 2))
    W, _ = knn_graph(coords, 5, symmetrize="union")
    Qd = _Q(W, rho)
    obs = rng.random(40) < frac
    obs[0] = True
    obs[-1] = False
    o, m = np.flatnonzero(obs), np.flatnonzero(~obs)
    q1 = Qd.sum(1)
    vf = fixed_var_factor(sp.csr_matrix(Qd), obs, center=center)
    ref = _with_mean(Qd[np.ix_(m, m)], q1[m], q1.sum()) if center else np.diag(np.linalg.inv(Qd[np.ix_(m, m)]))
    np.testing.assert_allclose(vf.d, ref, rtol=1e-8)
    vj = joint_var_factor(sp.csr_matrix(Qd), obs.astype(float), lam, center=center)
    A = np.diag(obs.astype(float)) + lam * Qd
    ref = _with_mean(A, lam * q1, lam * q1.sum()) if center else np.diag(np.linalg.inv(A))
    np.testing.assert_allclose(vj.d, ref, rtol=1e-8)
    assert 0 < vj.trace < len(o) + 1


def test_probing_estimates_come_with_their_measured_error():
    """Beyond the exact size the diagonal is estimated by probing; its reported error bounds the sampled spots and
    the estimate is close to the exact diagonal everywhere."""
    from smoother._core.conditional import enhance_var_factor, fixed_var_factor, joint_var_factor
    from smoother._core.graph import knn_graph

    rng = np.random.default_rng(11)
    coords = _grid(25)
    W, _ = knn_graph(coords, 6, symmetrize="mutual")
    Q = sp.csr_matrix(_Q(W, 0.9))
    obs = rng.random(len(coords)) < 0.7
    for fn in (
        lambda method: fixed_var_factor(Q, obs, center=True, method=method),
        lambda method: joint_var_factor(Q, obs.astype(float), 0.5, center=True, method=method),
    ):
        exact, est = fn("exact"), fn("probing")
        assert exact.method == "exact" and est.method == "probing"
        assert 0 <= est.max_rel_error <= 1e-3
        rel = np.abs(est.d - exact.d) / exact.d
        assert np.median(rel) < 1e-3 and rel.max() < 1e-2
    from smoother.tl._impute import subspot_lattice

    sub, parent = subspot_lattice(_grid(8), 2)
    counts = np.bincount(parent)
    A = sp.csr_matrix((1.0 / counts[parent], (parent, np.arange(len(sub)))), shape=(64, len(sub)))
    Ws, _ = knn_graph(sub, 4, symmetrize="mutual")
    Qs = sp.csr_matrix(_Q(Ws, 0.9))
    exact, est = (enhance_var_factor(A, Qs, 0.3, center=True, method=m) for m in ("exact", "probing"))
    assert est.max_rel_error <= 1e-3
    assert np.median(np.abs(est.d - exact.d) / exact.d) < 1e-3
    assert abs(est.trace - exact.trace) / exact.trace < 1e-2
