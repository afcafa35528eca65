"""Laplace standard errors of the quadratic deconvolution models against a dense, independent computation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from tests.contract import check_rejects

import smoother as sm
from smoother._anndata import get_prior_operator

N_SIDE, G, K = (6, 5), 12, 3


def _problem(seed=0, zeros=False):
    rng = np.random.default_rng(seed)
    n = N_SIDE[0] * N_SIDE[1]
    coords = np.column_stack([np.repeat(np.arange(N_SIDE[0]), N_SIDE[1]), np.tile(np.arange(N_SIDE[1]), N_SIDE[0])])
    X = rng.gamma(2.0, 1.0, size=(G, K))
    Z = rng.dirichlet(np.ones(K), size=n) * 5
    if zeros:
        Z[:6, 0] = 0.0  # a type absent from some spots: estimates on the boundary
    Y = Z @ X.T + 1.0 + rng.normal(0, 0.3, size=(n, G))
    a = ad.AnnData(Y, obsm={"spatial": coords.astype(float)})
    a.var_names = [f"g{i}" for i in range(G)]
    sm.pp.spatial_graph(a, n_neighs=4)
    return a, pd.DataFrame(X, index=a.var_names, columns=["A", "B", "C"])


def _dense_se(a, X, Z, lam, bias, active):
    """sigma^2 [Hessian of the Gaussian log-posterior]^-1 on the free coefficients (intercepts free too, flat
    prior), per-spot blocks, delta method to proportions: all dense, from the data and the coefficients."""
    Y = np.asarray(a.X)
    n = Y.shape[0]
    Q = get_prior_operator(a.obsp["spatial_connectivities"], "icar", 0.99, False).Q.toarray()
    b = (Y - Z @ X.T).mean(axis=1) if bias else np.zeros(n)
    R = Y - Z @ X.T - b[:, None]
    dof = G * n - int(active.sum()) - (n if bias else 0)
    s2 = float((R**2).sum()) / dof
    Hz = np.kron(np.eye(n), X.T @ X) + (lam * G / K) * np.kron(Q, np.eye(K))
    if bias:
        Hzb = np.kron(np.eye(n), X.T @ np.ones((G, 1)))  # (nK, n)
        Hjoint = np.block([[Hz, Hzb], [Hzb.T, G * np.eye(n)]])
    else:
        Hjoint = Hz
    free = np.concatenate([active.ravel(), np.ones(n if bias else 0, dtype=bool)])
    cov_free = s2 * np.linalg.inv(Hjoint[np.ix_(free, free)])
    cov = np.zeros((Hjoint.shape[0],) * 2)
    cov[np.ix_(free, free)] = cov_free
    se = np.empty((n, K))
    for i in range(n):
        z = np.clip(Z[i], 0, None)
        s = z.sum()
        p = z / s
        J = (np.eye(K) - np.outer(p, np.ones(K))) / s
        C = cov[i * K : (i + 1) * K, i * K : (i + 1) * K]
        se[i] = np.sqrt(np.diag(J @ C @ J.T))
    return se, s2


@pytest.mark.parametrize(
    ("model", "bias", "lam", "zeros"),
    [("lr", False, 0.5, False), ("lr", True, 2.0, False), ("nnls", False, 0.0, True), ("nnls", True, 1.0, True)],
)
def test_se_equals_dense_laplace(model, bias, lam, zeros):
    a, ref = _problem(zeros=zeros)
    with pytest.warns(UserWarning, match="genes are shared"):
        sm.tl.deconvolve(a, ref, model=model, bias=bias, lambda_spatial=lam, uncertainty=True, tol=1e-13,
                         max_iter=500_000)  # fmt: skip
    Z = a.obsm["props_abundance"].to_numpy() if model == "nnls" else None
    if model == "lr":  # unconstrained: the proportions are a view of the raw coefficients
        p = a.obsm["props"].to_numpy()
        scale = a.obsm["props_abundance"].to_numpy().sum(axis=1, keepdims=True)
        Z = p * scale
    active = Z > 1e-8 * Z.max() if model == "nnls" else np.ones_like(Z, dtype=bool)
    if zeros:
        assert (~active).any()  # the case exercises the active set
        np.testing.assert_array_equal(a.obsm["props_at_zero"].to_numpy(), ~active)
    ref_se, s2 = _dense_se(a, ref.to_numpy(), Z, lam, bias, active)
    np.testing.assert_allclose(a.uns["props"]["noise_var"], s2, rtol=1e-6)
    np.testing.assert_allclose(a.obsm["props_se"].to_numpy(), ref_se, rtol=1e-5, atol=1e-9)


def test_se_shrinks_with_more_genes():
    """More genes carry more information: the standard errors fall (a property, not a number)."""
    a, ref = _problem(seed=1)
    with pytest.warns(UserWarning):
        sm.tl.deconvolve(a, ref, model="nnls", lambda_spatial=0.0, uncertainty=True)
    few = np.nanmean(a.obsm["props_se"].to_numpy())
    rng = np.random.default_rng(2)
    X2 = np.vstack([ref.to_numpy(), rng.gamma(2.0, 1.0, size=(36, K))])
    Z = a.obsm["props_abundance"].to_numpy()
    Y2 = Z @ X2.T + rng.normal(0, 0.3, size=(a.n_obs, X2.shape[0]))
    b = ad.AnnData(
        Y2, obsm={"spatial": a.obsm["spatial"]}, obsp={"spatial_connectivities": a.obsp["spatial_connectivities"]}
    )
    b.var_names = [f"g{i}" for i in range(X2.shape[0])]
    ref2 = pd.DataFrame(X2, index=b.var_names, columns=ref.columns)
    sm.tl.deconvolve(b, ref2, model="nnls", lambda_spatial=0.0, uncertainty=True)
    assert np.nanmean(b.obsm["props_se"].to_numpy()) < few


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"model": "nusvr"}, ("uncertainty", "nusvr")),
        ({"model": "nnls", "backend": "torch"}, ("uncertainty", "backend")),
        ({"model": "nnls", "backend": "cvxpy"}, ("uncertainty", "backend")),
    ],
)
def test_options_without_uncertainty_are_rejected_before_work(kwargs, names):
    a, ref = _problem()
    check_rejects(sm.tl.deconvolve, a, ref, error=ValueError, names=names, uncertainty=True, lambda_spatial=1.0,
                  **kwargs)  # fmt: skip
