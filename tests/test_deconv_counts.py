"""Count-aware deconvolution (smoother._core.deconv_counts) against independent references."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize

from smoother._core.deconv_counts import _normalize_signatures, check_counts, fit_counts, select_genes


def _tiny(n=3, G=6, K=2, seed=0, depth=200.0):
    rng = np.random.default_rng(seed)
    S = rng.gamma(2.0, 1.0, size=(G, K))
    Z = rng.dirichlet(np.ones(K), size=n)
    mu = depth * Z @ _normalize_signatures(S).T
    Y = rng.poisson(mu).astype(np.float64)
    return Y, S


def _poisson_obj(Zflat, Y, B, s, w, lam, Q):
    n, K = Y.shape[0], B.shape[1]
    Z = Zflat.reshape(n, K)
    mu = s[:, None] * (Z @ B.T)
    f = w * float(np.sum(mu - Y * np.log(np.maximum(mu, 1e-300))))
    if lam:
        f += lam / n * float(np.sum(Z * (Q @ Z)))
    return f


def _poisson_grad(Zflat, Y, B, s, w, lam, Q):
    n, K = Y.shape[0], B.shape[1]
    Z = Zflat.reshape(n, K)
    mu = s[:, None] * (Z @ B.T)
    g = w * (s[:, None] * ((1.0 - Y / np.maximum(mu, 1e-300)) @ B))
    if lam:
        g += 2 * lam / n * (Q @ Z)
    return g.ravel()


def _brute(Y, S, lam=0.0, Q=None):
    """The optimum by scipy's L-BFGS-B with bounds, from several starts (an independent solver)."""
    B = _normalize_signatures(S)
    s = Y.sum(axis=1)
    w = 1.0 / (Y.shape[0] * s.mean())
    best = None
    for seed in range(3):
        z0 = np.random.default_rng(seed).uniform(0.2, 1.0, size=(Y.shape[0], S.shape[1])).ravel()
        r = minimize(
            _poisson_obj,
            z0,
            args=(Y, B, s, w, lam, Q),
            jac=_poisson_grad,
            method="L-BFGS-B",
            bounds=[(0, None)] * z0.size,
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000, "maxcor": 30},
        )
        if best is None or r.fun < best.fun:
            best = r
    return best.x.reshape(Y.shape[0], S.shape[1]), best.fun


def test_poisson_matches_brute_force():
    Y, S = _tiny()
    res = fit_counts(Y, S, likelihood="poisson", platform_effect=False, genes=np.arange(6), tol=1e-10)
    Zb, fb = _brute(Y, S)
    np.testing.assert_allclose(res.shares, Zb, atol=1e-6, rtol=1e-6)
    assert res.objective["total"] == pytest.approx(fb, rel=1e-9)
    assert res.converged and res.kkt_residual <= 1e-10


def test_poisson_with_spatial_matches_brute_force():
    Y, S = _tiny(n=4, G=6, K=2, seed=1)
    W = sp.diags([np.ones(3), np.ones(3)], [-1, 1]).tocsr()
    Q = (sp.diags(np.asarray(W.sum(1)).ravel()) - W + 0.01 * sp.eye(4)).tocsr()
    lam = 0.5
    res = fit_counts(
        Y, S, Q=Q, lambda_spatial=lam, likelihood="poisson", platform_effect=False, genes=np.arange(6), tol=1e-10
    )
    Zb, fb = _brute(Y, S, lam=lam, Q=Q.toarray())
    np.testing.assert_allclose(res.shares, Zb, atol=1e-6, rtol=1e-6)
    assert res.objective["total"] == pytest.approx(fb, rel=1e-8)
    # the spatial term is lambda / N * sum_k z_k^T Q z_k with the dense Q
    Z = res.shares
    dense = lam / 4 * sum(Z[:, k] @ Q.toarray() @ Z[:, k] for k in range(2))
    assert res.objective["spatial_term"] == pytest.approx(dense, rel=1e-12)


def test_kkt_conditions_at_solution_with_zero_coefficients():
    rng = np.random.default_rng(3)
    G, K, n = 30, 4, 20
    S = rng.gamma(1.0, 1.0, size=(G, K))
    Sn = _normalize_signatures(S)
    Z = rng.dirichlet(np.ones(2), size=n)
    Zt = np.zeros((n, K))
    Zt[:, :2] = Z  # types 2 and 3 absent: their optimum is at the bound
    Y = rng.poisson(1000 * Zt @ Sn.T).astype(float)
    res = fit_counts(Y, S, likelihood="poisson", platform_effect=False, genes=np.arange(G), tol=1e-9)
    s = Y.sum(1)
    w = 1.0 / (n * s.mean())
    g = _poisson_grad(res.shares.ravel(), Y, Sn, s, w, 0.0, None).reshape(n, K)
    scale = np.linalg.norm(w * s[:, None] * Sn.sum(0))
    zero = res.shares == 0
    assert zero.sum() > 0
    assert np.all(g[zero] >= -1e-9 * scale)
    assert np.max(np.abs(g[~zero])) <= 1e-8 * scale


def test_nb_stationary_point_and_brute_force():
    Y, S = _tiny(n=3, G=8, K=2, seed=4, depth=300)
    phi = 0.3
    res = fit_counts(Y, S, likelihood="nb", dispersion=phi, platform_effect=False, genes=np.arange(8), tol=1e-10)
    B = _normalize_signatures(S)
    s = Y.sum(1)
    th = 1 / phi

    def nb(zf, i):
        mu = s[i] * (B @ zf)
        return float(np.sum((Y[i] + th) * np.log(th + mu) - Y[i] * np.log(np.maximum(mu, 1e-300))))

    for i in range(3):
        r = minimize(
            nb,
            res.shares[i] * 0 + 0.5,
            args=(i,),
            method="L-BFGS-B",
            bounds=[(0, None)] * 2,
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        np.testing.assert_allclose(res.shares[i], r.x, rtol=1e-5, atol=1e-6)
        assert nb(res.shares[i], i) <= r.fun + 1e-9 * abs(r.fun)
    assert res.dispersion == pytest.approx(np.full(8, phi))


def test_proportions_and_abundance_scale():
    Y, S = _tiny(n=6, G=10, K=3, seed=5, depth=500)
    r1 = fit_counts(Y, S, likelihood="poisson", platform_effect=False, genes=np.arange(10), tol=1e-10)
    np.testing.assert_allclose(r1.proportions.sum(1), 1.0, atol=1e-12)
    Y2 = Y.copy()
    Y2[0] *= 3  # one spot sequenced three times deeper, same composition
    r2 = fit_counts(Y2, S, likelihood="poisson", platform_effect=False, genes=np.arange(10), tol=1e-10)
    np.testing.assert_allclose(r2.proportions, r1.proportions, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(r2.abundance[0], 3 * r1.abundance[0], rtol=1e-6)
    np.testing.assert_allclose(r2.abundance[1:], r1.abundance[1:], rtol=1e-6)
    np.testing.assert_allclose(r1.abundance.sum(1), r1.library_size * r1.shares.sum(1))


def test_platform_effect_recovered():
    rng = np.random.default_rng(6)
    G, K, n = 60, 3, 400
    S = rng.gamma(1.0, 1.0, size=(G, K))
    Sn = _normalize_signatures(S)
    Z = rng.dirichlet(np.ones(K) * 0.5, size=n)
    r = rng.lognormal(0, 0.5, size=G)
    Y = rng.poisson(3000 * (Z @ (Sn * r[:, None]).T)).astype(float)
    Y = sp.csr_matrix(Y)
    res = fit_counts(Y, S, likelihood="poisson", platform_effect=True, genes=np.arange(G), tol=1e-8)
    assert np.corrcoef(np.log(res.gene_effect), np.log(r))[0, 1] > 0.95
    off = fit_counts(Y, S, likelihood="poisson", platform_effect=False, genes=np.arange(G), tol=1e-8)
    err_on = np.sqrt(np.mean((res.proportions - Z) ** 2))
    err_off = np.sqrt(np.mean((off.proportions - Z) ** 2))
    assert err_on < 0.5 * err_off
    # normalization of r: sum_g mean_k(S_gk) r_g = sum_g mean_k(S_gk)
    assert np.sum(Sn.mean(1) * res.gene_effect) == pytest.approx(np.sum(Sn.mean(1)), rel=1e-8)


def test_check_counts():
    check_counts(np.array([[0, 1], [2, 3]]))
    check_counts(np.array([[0, 1], [2, 3]], dtype=np.float32))
    check_counts(sp.csr_matrix(np.array([[0.0, 5.0]])))
    with pytest.raises(ValueError, match=r"adata\.X.*negative"):
        check_counts(np.array([[0.0, -1.0]]))
    with pytest.raises(ValueError, match=r"counts_layer.*non-integer"):
        check_counts(sp.csr_matrix(np.array([[0.0, 0.5]])), name="counts_layer")
    with pytest.raises(ValueError, match="NaN or inf"):
        check_counts(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="negative"):
        check_counts(np.array([[-2, 1]]))
    with pytest.raises(ValueError, match="non-integer"):
        fit_counts(np.array([[0.3, 1.0]]), np.ones((2, 1)))


def test_auto_never_worse_than_zero_by_its_criterion():
    rng = np.random.default_rng(7)
    side = 12
    n = side * side
    G, K = 40, 3
    S = rng.gamma(1.0, 1.0, size=(G, K))
    xx, yy = np.meshgrid(np.arange(side), np.arange(side))
    logits = np.stack([np.sin(xx / 3.0), np.cos(yy / 3.0), 0.3 * np.ones_like(xx)], -1).reshape(n, K)
    Z = np.exp(2 * logits)
    Z /= Z.sum(1, keepdims=True)
    Y = rng.poisson(200 * Z @ _normalize_signatures(S).T).astype(float)
    idx = np.arange(n).reshape(side, side)
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    W = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    W = (W + W.T).tocsr()
    Q = (sp.diags(np.asarray(W.sum(1)).ravel()) - 0.99 * W).tocsr()
    res = fit_counts(
        Y,
        S,
        Q=Q,
        lambda_spatial="auto",
        likelihood="poisson",
        platform_effect=False,
        genes=np.arange(G),
        tol=1e-6,
        auto_grid=[1e-3, 1e-2, 1e-1],
    )
    a = res.auto
    assert a["grid"][0] == 0.0
    best = int(np.argmin(a["scores"]))
    assert a["scores"][best] <= a["scores"][0]
    assert res.lambda_spatial == pytest.approx(a["grid"][best] * a["train_fraction"])
    # on smooth proportions the spatial prior is chosen and helps
    assert res.lambda_spatial > 0
    r0 = fit_counts(Y, S, likelihood="poisson", platform_effect=False, genes=np.arange(G))
    err = lambda P: np.sqrt(np.mean((P - Z) ** 2))  # noqa: E731
    assert err(res.proportions) < err(r0.proportions)


def test_select_genes_balanced_markers_and_warning():
    G, K = 50, 3
    S = np.ones((G, K))
    S[0:10, 0] = 5.0  # 10 markers of type 0
    S[10:30, 1] = 3.0  # 20 markers of type 1
    S[:, 2] = (S[:, 0] + S[:, 1]) / 2  # type 2 is a mixture: no marker
    with pytest.warns(UserWarning, match=r"\['C'\]"):
        mask, info = select_genes(S, n_genes=8, type_names=["A", "B", "C"], return_scores=True)
    assert mask.sum() == 8
    chosen = np.flatnonzero(mask)
    assert np.sum(chosen < 10) == 4 and np.sum((chosen >= 10) & (chosen < 30)) == 4
    # every marker (fold >= min_fold) when n_genes is None, filled up to 20 K genes by score
    with pytest.warns(UserWarning):
        full = select_genes(S, min_fold=2.5)
    assert full[:10].all() and full.sum() == min(G, 20 * K)


def test_sparse_dense_and_empty_spot():
    Y, S = _tiny(n=5, G=12, K=3, seed=8, depth=400)
    Y[2] = 0  # an empty spot
    kw = {"likelihood": "nb", "dispersion": 0.1, "genes": np.arange(12), "tol": 1e-10}
    rd = fit_counts(Y, S, **kw)
    for M in (sp.csr_matrix(Y), sp.csc_matrix(Y), Y.astype(np.int64), Y.astype(np.float32)):
        r = fit_counts(M, S, **kw)
        np.testing.assert_allclose(r.proportions, rd.proportions, rtol=1e-6, atol=1e-8)
    assert rd.n_empty == 1
    np.testing.assert_allclose(rd.proportions[2], 1 / 3)
    np.testing.assert_allclose(rd.abundance[2], 0.0)


def test_nb_dispersion_estimated_from_overdispersed_counts():
    rng = np.random.default_rng(9)
    G, K, n, phi = 20, 2, 3000, 0.25
    S = rng.gamma(2.0, 1.0, size=(G, K))
    Z = rng.dirichlet(np.ones(K), size=n)
    mu = 2000 * Z @ _normalize_signatures(S).T
    Y = rng.poisson(mu * rng.gamma(1 / phi, phi, size=mu.shape)).astype(float)
    res = fit_counts(Y, S, likelihood="nb", genes=np.arange(G))
    assert np.median(res.dispersion) == pytest.approx(phi, rel=0.25)
    pois = fit_counts(Y, S, likelihood="poisson", genes=np.arange(G))
    err = lambda P: np.sqrt(np.mean((P - Z) ** 2))  # noqa: E731
    assert err(res.proportions) <= err(pois.proportions) * 1.05


def test_argument_errors():
    Y, S = _tiny()
    with pytest.raises(ValueError, match="needs a precision"):
        fit_counts(Y, S, lambda_spatial=1.0)
    with pytest.raises(ValueError, match="likelihood"):
        fit_counts(Y, S, likelihood="gaussian")
    with pytest.raises(ValueError, match="genes"):
        fit_counts(Y, S[:4])
    with pytest.raises(ValueError, match="no expression"):
        fit_counts(Y, np.column_stack([S[:, 0], np.zeros(6)]))
    with pytest.raises(ValueError, match="library_size"):
        fit_counts(Y, S, library_size=np.ones(2))
    for bad in (-1.0, np.nan, np.inf, "best", True):
        with pytest.raises(ValueError, match="lambda_spatial"):
            fit_counts(Y, S, lambda_spatial=bad)


def test_auto_window_is_contiguous():
    from scipy.sparse.csgraph import connected_components

    from smoother._core.deconv_counts import _spatial_window

    side = 15
    idx = np.arange(side * side).reshape(side, side)
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    W = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(side * side,) * 2)
    W = (W + W.T).tocsr()
    Q = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()
    win = _spatial_window(Q, 50, np.random.default_rng(0))
    assert len(win) == 50 and len(np.unique(win)) == 50
    assert connected_components(W[win][:, win], directed=False)[0] == 1
    Y, S = _tiny(n=side * side, G=10, K=2, seed=10, depth=300)
    res = fit_counts(Y, S, Q=Q, lambda_spatial="auto", auto_spots=50, genes=np.arange(10), auto_grid=[1e-2])
    assert len(res.auto["spots"]) == 50
    assert res.auto["scores"][int(np.argmin(res.auto["scores"]))] <= res.auto["scores"][0]


def test_pd_blocks_matches_eigenvalues():
    """The LDL pivot test of the Newton blocks against numpy's eigenvalues (an independent reference)."""
    from smoother._core.deconv_counts import _pd_blocks

    rng = np.random.default_rng(3)
    n, K = 400, 6
    A = rng.standard_normal((n, K, K))
    H = A @ A.transpose(0, 2, 1)
    shift = rng.uniform(-1.5, 1.5, n) * np.einsum("nii->n", H) / K  # some blocks indefinite, some PD
    H += shift[:, None, None] * np.eye(K)
    H[0] = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, 1e-12])  # PD but below the relative threshold
    H[1, 0, 0] = np.nan
    tr = np.abs(np.einsum("nii->n", H))
    tr[1] = 1.0
    got = _pd_blocks(H, tr)
    with np.errstate(invalid="ignore"):
        lmin = np.array([np.linalg.eigvalsh(h)[0] if np.isfinite(h).all() else np.nan for h in H])
    definite = np.isfinite(lmin) & (lmin > 1e-6 * tr)  # clearly PD: must pass
    indefinite = ~np.isfinite(lmin) | (lmin < 0)  # must fail
    assert got[definite].all()
    assert not got[indefinite].any()
    assert not got[0] and not got[1]
    assert 0 < definite.sum() < n and indefinite.sum() > 0


def test_block_qp_matches_dense_solution():
    """The SQP subproblem solver against scipy's bounded L-BFGS-B on the same small quadratic."""
    from smoother._core.deconv import SpatialTerm
    from smoother._core.deconv_counts import _solve_block_qp

    rng = np.random.default_rng(4)
    n, K = 12, 3
    A = rng.standard_normal((n, K, K))
    H = A @ A.transpose(0, 2, 1) + 0.2 * np.eye(K)
    C = rng.standard_normal((n, K))  # some coefficients want to be negative: active bounds
    W = sp.random(n, n, density=0.3, random_state=1)
    W = ((W + W.T) > 0).astype(float)
    Q = sp.csr_matrix(sp.diags(np.asarray(W.sum(axis=1)).ravel() + 0.1) - 0.9 * W)
    spatial = SpatialTerm(Q, 0.7, 1.0, K, n)
    w = 0.3
    Z, it, res = _solve_block_qp(H, C, np.zeros((n, K)), spatial, w, tol=1e-10)

    def obj(x):
        X = x.reshape(n, K)
        return w * float(np.sum(0.5 * np.einsum("ni,nij,nj->n", X, H, X) - np.sum(C * X, axis=1))) + spatial.value(X)

    def grad(x):
        X = x.reshape(n, K)
        return (w * (np.einsum("nij,nj->ni", H, X) - C) + 2 * spatial.coef * (Q @ X)).ravel()

    ref = minimize(obj, np.zeros(n * K), jac=grad, method="L-BFGS-B", bounds=[(0, None)] * (n * K),
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})  # fmt: skip
    assert res <= 1e-10
    assert (Z >= 0).all() and (Z == 0).any()
    np.testing.assert_allclose(Z, ref.x.reshape(n, K), atol=1e-5)
    assert obj(Z.ravel()) <= ref.fun + 1e-10


def _direct_terms(Y, s, Z, B, theta):
    """NB objective per spot, gradient, Fisher and exact Hessian blocks by plain numpy formulas (reference)."""
    V = Z @ B.T
    mu = s[:, None] * V
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.sum((Y + theta) * np.log(theta + mu) - np.where(Y > 0, Y * np.log(V), 0.0), axis=1)
        q = s[:, None] * (Y + theta) / (theta + mu) - Y / V
        wf = s[:, None] ** 2 * theta / (mu * (theta + mu))
        wx = Y / V**2 - s[:, None] ** 2 * (Y + theta) / (theta + mu) ** 2
    f[((Y > 0) & (V <= 0)).any(axis=1)] = np.inf
    return f, q @ B, np.einsum("ng,gi,gj->nij", wf, B, B), np.einsum("ng,gi,gj->nij", wx, B, B)


@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_compiled_local_terms_match_numpy_formulas(likelihood):
    """The compiled per-chunk pass (value, gradient, curvature blocks) against the formulas written out."""
    from smoother._core.deconv_counts import _Counts, _deviance

    rng = np.random.default_rng(7)
    n, G, K = 9, 14, 3
    B = _normalize_signatures(rng.gamma(2.0, 1.0, size=(G, K)))
    B[0, :2] = 0.0  # gene 0 only in type 2
    Z = rng.uniform(0.2, 1.0, size=(n, K))
    Z[0] = [0.5, 0.5, 0.0]  # spot 0: mean 0 at gene 0 ...
    s = rng.uniform(50, 300, n)
    Y = rng.poisson(s[:, None] * (Z @ B.T) + 0.5).astype(np.float64)
    Y[0, 0] = 3.0  # ... with a count there: objective +inf
    theta = rng.uniform(0.5, 20.0, G)
    prob = _Counts(sp.csr_matrix(Y), B, s, likelihood, chunk=4)
    prob.theta = theta if likelihood == "nb" else None
    f, g, H, glin = prob.local(Y, s, Z, hess=True, exact=True)
    ok = np.isfinite(f)
    assert not ok[0] and ok[1:].all()
    if likelihood == "nb":
        fr, gr, Hf, Hx = _direct_terms(Y, s, Z, B, theta)
        np.testing.assert_allclose(prob.H_exact[ok], Hx[ok], rtol=2e-5, atol=1e-6 * np.abs(Hx[ok]).max())
    else:
        V = Z @ B.T
        fr = np.sum(s[:, None] * V - np.where(Y > 0, Y * np.log(np.maximum(V, 1e-300)), 0.0), axis=1)
        fr[0] = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            gr = (s[:, None] - Y / V) @ B
            Hf = np.einsum("ng,gi,gj->nij", Y / V**2, B, B)
    np.testing.assert_allclose(f[ok], fr[ok], rtol=1e-12)
    np.testing.assert_allclose(g[ok], gr[ok], rtol=1e-9, atol=1e-9 * np.abs(gr[ok]).max())
    np.testing.assert_allclose(H[ok], Hf[ok], rtol=2e-5)
    np.testing.assert_allclose(glin, s[:, None] * B.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(prob.value(Y, s, Z)[ok], fr[ok], rtol=1e-12)
    assert np.isinf(prob.value(Y, s, Z)[0])
    # the deviance from the sparse counts against the dense formula (spots with finite means)
    Zd = Z[1:]
    pd = _Counts(sp.csr_matrix(Y[1:]), B, s[1:], likelihood, chunk=4)
    mu = s[1:, None] * (Zd @ B.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = 2.0 * np.sum(np.where(Y[1:] > 0, Y[1:] * np.log(Y[1:] / mu), 0.0) - (Y[1:] - mu))
    np.testing.assert_allclose(_deviance(pd, Zd), dev, rtol=1e-10)


def test_block_qp_compiled_equals_numpy_path():
    """The compiled FISTA loop (sparse Q) and the numpy loop (dense Q) reach the same QP solution."""
    from smoother._core.deconv import SpatialTerm
    from smoother._core.deconv_counts import _solve_block_qp

    rng = np.random.default_rng(5)
    n, K = 40, 4
    A = rng.standard_normal((n, K, K))
    H = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(K)
    C = rng.standard_normal((n, K))
    W = sp.random(n, n, density=0.1, random_state=2)
    W = ((W + W.T) > 0).astype(float)
    Q = sp.csr_matrix(sp.diags(np.asarray(W.sum(axis=1)).ravel() + 0.1) - 0.9 * W)
    w = 0.5
    Zs, _, rs = _solve_block_qp(H, C, np.zeros((n, K)), SpatialTerm(Q, 2.0, 1.0, K, n), w, tol=1e-11)
    Zd, _, rd = _solve_block_qp(H, C, np.zeros((n, K)), SpatialTerm(Q.toarray(), 2.0, 1.0, K, n), w, tol=1e-11)
    assert rs <= 1e-11 and rd <= 1e-11
    np.testing.assert_allclose(Zs, Zd, atol=1e-8)


def test_newton_directions_match_dense_solves():
    """The compiled Newton directions against numpy: masked blocks, exact block where PD, np.linalg.solve."""
    from smoother._core.deconv_counts import _kernel, _pd_blocks

    rng = np.random.default_rng(11)
    n, K = 300, 5
    A = rng.standard_normal((n, K, K))
    H = A @ A.transpose(0, 2, 1) + 0.05 * np.eye(K)  # Fisher-like: PD
    Hx = H + rng.uniform(-2.0, 0.5, n)[:, None, None] * np.eye(K)  # exact: PD for some spots, not for others
    use_x = rng.random(n) < 0.7
    free = rng.random((n, K)) < 0.8
    dH = np.einsum("nii->ni", H)
    tr = dH.sum(axis=1)
    g = rng.standard_normal((n, K))
    d = np.empty_like(g)
    _kernel("_k_newton_dir")(H, Hx, use_x, free, dH, tr, g, d)
    ff = free[:, :, None] & free[:, None, :]
    add = np.eye(K) * np.where(free, 1e-10 * tr[:, None], dH)[:, None, :]
    Hm, Ho = H * ff + add, Hx * ff + add
    pick = use_x & _pd_blocks(Ho, tr)
    assert 0 < pick.sum() < use_x.sum()
    Hm[pick] = Ho[pick]
    ref = -np.linalg.solve(Hm, g[:, :, None])[:, :, 0]
    np.testing.assert_allclose(d, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
