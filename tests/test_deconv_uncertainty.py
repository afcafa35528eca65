"""Laplace standard errors of count-model deconvolution (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

import smoother as sm

from .contract import check_rejects


@pytest.fixture(scope="module")
def mixture():
    mix, ref = sm.datasets.simulate_mixture(n_spots=300, seed=1)
    sm.pp.spatial_graph(mix)
    return mix, ref


@pytest.mark.parametrize("lam", [0.0, 1e-3])
def test_se_equals_the_dense_inverse_hessian_and_flags_the_boundary(mixture, lam):
    from smoother._core.uncertainty import count_fisher_blocks, proportion_se

    mix, ref = mixture
    a = sm.tl.deconvolve(mix, ref, groupby="cell_type", lambda_spatial=lam, uncertainty=True, copy=True)
    se = a.obsm["props_se"].to_numpy()
    at0 = a.obsm["props_at_zero"].to_numpy()
    assert se.shape == a.obsm["props"].shape and at0.dtype == bool
    assert np.isfinite(se).all() and (se >= 0).all()
    # independent reference: the dense (n K x n K) Hessian of the likelihood + spatial term, inverted on the active set
    res_genes = np.isin(np.asarray(ref.var_names), a.uns["props"]["genes"])
    # recompute the information from what the fit reports (signatures rebuilt here from the reference cells)
    types = list(a.obsm["props"].columns)
    Xs = ref.X.toarray() if hasattr(ref.X, "toarray") else np.asarray(ref.X)
    Xs = Xs / Xs.sum(1, keepdims=True)
    S = np.stack([Xs[np.asarray(ref.obs["cell_type"]) == t].mean(0) for t in types], axis=1)
    S = (S / S.sum(0))[res_genes]
    s = a.obs["props_library_size"].to_numpy()
    r = a.var["props_gene_effect"].to_numpy()[np.isin(np.asarray(a.var_names), a.uns["props"]["genes"])]
    phi = a.var["props_dispersion"].to_numpy()[np.isin(np.asarray(a.var_names), a.uns["props"]["genes"])]
    z = a.obsm["props_abundance"].to_numpy() / s[:, None]
    H = count_fisher_blocks(S, s, r, phi, z)
    n, K = z.shape
    full = np.zeros((n * K, n * K))
    for i in range(n):
        full[i * K : (i + 1) * K, i * K : (i + 1) * K] = H[i]
    if lam > 0:
        from smoother._anndata import get_prior_operator

        Q = get_prior_operator(mix.obsp["spatial_connectivities"], "icar", 0.99).Q.toarray()
        full += 2 * lam * s.mean() * np.kron(Q, np.eye(K))
    free = np.flatnonzero(~at0.ravel())
    cov_full = np.zeros_like(full)
    cov_full[np.ix_(free, free)] = np.linalg.inv(full[np.ix_(free, free)])
    blocks = np.stack([cov_full[i * K : (i + 1) * K, i * K : (i + 1) * K] for i in range(n)])
    np.testing.assert_allclose(se, proportion_se(z, blocks), rtol=1e-5, atol=1e-10)


def test_uncertainty_needs_a_likelihood_model(mixture):
    """Models fitted by gradient descent (nu-SVR, log-normal) give no uncertainty: refused before any work."""
    mix, ref = mixture
    check_rejects(
        sm.tl.deconvolve, mix, ref, groupby="cell_type", model="nusvr", uncertainty=True, error=ValueError,
        names=("uncertainty", "nusvr"), adatas=(mix, ref),
    )  # fmt: skip


def test_rerun_without_uncertainty_removes_the_se(mixture):
    mix, ref = mixture
    a = sm.tl.deconvolve(mix, ref, groupby="cell_type", lambda_spatial=0.0, uncertainty=True, copy=True)
    assert "props_se" in a.obsm
    sm.tl.deconvolve(a, ref, groupby="cell_type", lambda_spatial=0.0)
    assert "props_se" not in a.obsm and "props_at_zero" not in a.obsm
