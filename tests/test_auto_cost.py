"""The spectral 'auto' search of ``gcv`` (issue 12: 'auto' at most 2x a fixed lambda) against exact references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from smoother._core import smooth as core
from smoother._core.krylov import lanczos_rules


def _grid_graph(n_side: int) -> sp.csr_matrix:
    """4-neighbour graph of an ``n_side x n_side`` grid (weights 1)."""
    path = sp.diags([np.ones(n_side - 1), np.ones(n_side - 1)], [-1, 1])
    eye = sp.identity(n_side)
    return sp.csr_matrix(sp.kron(eye, path) + sp.kron(path, eye))


def _problem(n_side=16, n_genes=6, rho=0.99, seed=0, prior="icar"):
    """Smooth random patterns (low frequencies of the grid) on different levels, plus unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1, n_side), np.linspace(0, 1, n_side))
    u, v = u.ravel(), v.ravel()
    truth = np.column_stack(
        [
            rng.normal()
            * np.sin(np.pi * (rng.integers(1, 4) * u + rng.random()))
            * np.cos(np.pi * (rng.integers(1, 4) * v + rng.random()))
            * 2.0
            + rng.normal() * 3.0
            for _ in range(n_genes)
        ]
    )
    W = _grid_graph(n_side)
    op = core.prior_operator(W, prior, rho)
    return truth + rng.normal(size=truth.shape), op, W


def _dense_quad(Q, V, f):
    q, U = np.linalg.eigh(Q.toarray())
    C = U.T @ V
    return (C * C * f(q)[:, None]).sum(axis=0)


@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_lanczos_rules_match_dense_quadratic_forms(lam):
    _, op, _ = _problem(n_side=12)
    Q = op.Q
    rng = np.random.default_rng(1)
    V = rng.normal(size=(Q.shape[0], 5))
    V[:, 4] = 0.0  # a zero start vector gives a zero rule

    def check(theta):
        return 1.0 / (1.0 + np.array([0.01, 1.0, 100.0]) * theta[..., None])

    rules = lanczos_rules(Q, V, check, tol=1e-12, batch=2)
    for f in (lambda x: 1.0 / (1.0 + lam * x), lambda x: (lam * x / (1.0 + lam * x)) ** 2):
        np.testing.assert_allclose(rules.quad(f), _dense_quad(Q, V, f), rtol=1e-8, atol=1e-10)
    assert rules.steps[4] == 0 and rules.quad(lambda x: x + 1.0)[4] == 0.0


def test_lanczos_stops_exactly_on_an_invariant_subspace():
    Q = sp.diags(np.arange(1.0, 41.0)).tocsr()
    v = np.zeros((40, 1))
    v[[2, 10, 30], 0] = [1.0, 2.0, 3.0]  # three eigenvectors: the Gauss rule is exact after 3 steps
    rules = lanczos_rules(Q, v, lambda t: t[..., None], tol=0.0)
    assert rules.steps[0] == 3
    np.testing.assert_allclose(rules.quad(lambda x: 1.0 / (1.0 + x)), [1 / 4 + 4 / 12 + 9 / 32], rtol=1e-12)


@pytest.mark.parametrize(("rho", "center"), [(0.99, True), (0.99, False), (1.0, True)])
def test_spectral_search_equals_the_exact_factorization_search(rho, center):
    # up to DENSE_SPECTRUM_MAX spots the spectral search is exact: same scores on the grid as the old search with
    # exact traces (unit-vector solves with a Cholesky factor per lambda), so the same choice
    Y, op, W = _problem(n_side=14, rho=rho)
    new = core.gcv(Y, op, center=center, graph=W, method="spectral")
    old = core.gcv(Y, op, center=center, graph=W, method="factor", trace_method="exact")
    assert new.trace_method == "exact"
    grid = np.r_[0.0, core.default_grid()]
    on_new, on_old = np.isin(new.grid, grid), np.isin(old.grid, grid)
    np.testing.assert_allclose(new.score[on_new], old.score[on_old], rtol=1e-7)
    np.testing.assert_allclose(new.trace[on_new], old.trace[on_old], rtol=1e-7)
    np.testing.assert_allclose(new.sigma2, old.sigma2, rtol=1e-7)
    assert new.lam == pytest.approx(old.lam, rel=1e-3)


def test_lanczos_search_agrees_with_exact_within_grid_resolution(monkeypatch):
    Y, op, W = _problem(n_side=18, n_genes=8)
    ref = core.gcv(Y, op, center=True, graph=W, method="factor", trace_method="exact", max_genes=None)
    monkeypatch.setattr(core, "DENSE_SPECTRUM_MAX", 0)  # force Lanczos quadrature on this small problem
    new = core.gcv(Y, op, center=True, graph=W, method="spectral", max_genes=None)
    assert new.trace_method == "lanczos"
    assert abs(np.log10(new.lam / ref.lam)) <= 0.375  # one step of the default grid
    # per-gene residuals are Gauss quadrature, converged to the tolerance: equal to the exact solve
    spec = core._Spectral(Y, op, center=True, grid=core.default_grid(), n_probes=8, seed=0, tol=1e-10)
    for lam in (0.1, 3.0, 300.0):
        X = core.smooth(Y, op, lam, center=True, dtype=np.float64)
        t, t2, rss = spec.evaluate(lam)
        np.testing.assert_allclose(rss, ((Y - X) ** 2).sum(axis=0), rtol=1e-7)
        # the probes' quadrature equals the Hutchinson estimate of tr(S^c) by solves with the same probes
        Z = np.random.default_rng(0).choice(np.array([-1.0, 1.0]), size=(Y.shape[0], 8))
        Zc = Z - Z.mean(axis=0)
        SZ = core.smooth(Zc, op, lam, center=False, dtype=np.float64)
        assert t == pytest.approx(1.0 + np.einsum("ij,ij->", Zc, SZ) / 8, rel=1e-7)
        assert t2 == pytest.approx(1.0 + (SZ * SZ).sum() / 8, rel=1e-7)


def test_spectral_search_needs_no_factorization(monkeypatch):
    Y, op, W = _problem(n_side=12)

    def forbidden(*args, **kwargs):
        raise AssertionError("factorized")

    monkeypatch.setattr(core, "SPDFactor", forbidden)
    monkeypatch.setattr(core, "DENSE_SPECTRUM_MAX", 0)
    res = core.gcv(Y, op, center=True, graph=W)
    assert res.trace_method == "lanczos" and res.lam > 0
    with pytest.raises(AssertionError, match="factorized"):
        core.gcv(Y, op, center=True, graph=W, method="factor")


def test_spectral_needs_unit_weights_and_a_sparse_precision():
    Y, op, W = _problem(n_side=8)
    d = np.ones(Y.shape[0])
    d[:3] = 0.0
    with pytest.raises(ValueError, match="method='factor'"):
        core.gcv(Y, op, weights=d, method="spectral")
    with pytest.raises(ValueError, match="'auto', 'spectral' or 'factor'"):
        core.gcv(Y, op, method="lanczos")
    # 'auto' falls back to the factorization search where the spectral one does not apply
    assert core.gcv(Y, op, weights=d, grid=[0.1, 1.0]).trace_method == "exact"


def test_auto_genes_rule():
    assert core.auto_genes(300, 2000) == 500  # dense spectrum: cheap, as many as before
    assert core.auto_genes(10**5, 1000) == 50
    assert core.auto_genes(10**6, 100) == 16
    assert core.auto_genes(10**6, 10) == 10
    assert core.auto_genes(10**5, 20_000) == 500
    assert core.auto_genes(10**5, 1000, spectral=False) == 500


def test_weighted_gene_sample_estimates_the_mean_over_all_genes():
    # genes on very different scales: the criterion of all genes is dominated by the large ones; the Hajek-weighted
    # sample drawn by sum of squares chooses what all genes choose, given explicitly or drawn inside gcv
    Y, op, W = _problem(n_side=16, n_genes=40, seed=2)
    Y = Y * np.geomspace(0.05, 20.0, 40)
    full = core.gcv(Y, op, center=True, graph=W, max_genes=None)
    energy = core._column_energy(Y, True, None)
    np.testing.assert_allclose(energy, ((Y - Y.mean(0)) ** 2).sum(0), rtol=1e-10)
    np.testing.assert_allclose(core._column_energy(sp.csr_matrix(Y), True, None), energy, rtol=1e-8)
    cols, omega = core.sample_genes(energy, 12, 0)
    assert omega.sum() == pytest.approx(1.0) and (np.diff(cols) > 0).all()
    given = core.gcv(Y[:, cols], op, center=True, graph=W, gene_weights=omega)
    drawn = core.gcv(Y, op, center=True, graph=W, max_genes=12, seed=0)
    for res in (given, drawn):
        assert abs(np.log10(res.lam / full.lam)) <= 0.375
    with pytest.raises(ValueError, match="gene_weights"):
        core.gcv(Y, op, gene_weights=np.ones(3))


def test_recorded_noise_variance_is_weighted_back_to_all_genes():
    """With genes sampled in proportion to their variance, uns[key]['gcv']['sigma2_mean'] is the weighted (Hajek)
    mean, an estimate of the mean over ALL genes; the plain mean over the sample leans to the noisy genes."""
    import smoother as sm

    est = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = sm.datasets.simulate_field(n_spots=900, n_genes=400, random_state=seed)
        Y = np.asarray(a.X, dtype=float)
        Y = (Y - Y.mean(0)) / Y.std(0) * 0.3
        sd = np.where(np.arange(400) < 200, 0.1, 1.0)  # half the genes 100x less noisy than the other half
        a.X = Y + rng.standard_normal(Y.shape) * sd
        sm.pp.spatial_graph(a)
        sm.tl.smooth(a, random_state=seed)
        rec = a.uns["smoothed"]["gcv"]
        assert rec["n_genes"] < 400  # the criterion saw a sample
        est.append(rec["sigma2_mean"])
    truth = float(np.mean(sd**2))  # 0.505; the unweighted sample mean lands near 0.9
    assert abs(np.mean(est) - truth) < 0.25 * truth
