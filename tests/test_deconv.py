"""Deconvolution: exact solver vs independent references (KKT, cvxpy), classic factories, sm.tl / sm.pl."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import smoother as sm
from smoother._core import deconv as core
from smoother._core import knn_graph, precision
from smoother._core.fit import fit, should_stop, torch_threads
from smoother.models import deconv as classic


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def small():
    """A small random problem: 50 spots, 30 genes, 4 types, ICAR precision on a kNN graph."""
    rng = np.random.default_rng(1)
    n, G, K = 50, 30, 4
    coords = rng.uniform(size=(n, 2))
    W = knn_graph(coords, k=6)[0]
    Q = precision(W, "icar", 0.99)
    X = rng.gamma(2.0, 1.0, size=(G, K))
    Z = rng.dirichlet(np.ones(K), size=n)
    Y = np.abs(Z @ X.T + 0.3 * rng.standard_normal((n, G))) + 0.05
    return X, Y, Q


@pytest.fixture(scope="module")
def mixture():
    ad, ref = sm.datasets.simulate_mixture(400, n_types=4, n_genes=60, n_cells_per_type=20, seed=3)
    sm.pp.spatial_graph(ad)
    return ad, ref


def _objective_dense(X, Y, Z, b, Q, lam, s=1.0, w=None):
    """The classic objective written out densely (independent of the solver's reduction)."""
    N, G = Y.shape
    K = X.shape[1]
    R = Y - Z @ X.T - (0 if b is None else b[:, None])
    w = np.ones_like(Y) if w is None else w
    Qs = Q if isinstance(Q, list) else [Q] * K
    s = np.broadcast_to(np.asarray(s, dtype=float), (K,))
    spl = sum(s[k] * Z[:, k] @ (Qs[k] @ Z[:, k]) for k in range(K))
    return np.sum(w * R * R) / (G * N) + lam * spl / (K * N)


def _kkt(X, Y, Z, b, Q, lam, nonneg, s=1.0, w=None):
    """Gradient of the dense objective; returns (max |grad_b|, max violation of the KKT conditions in Z)."""
    N, G = Y.shape
    K = X.shape[1]
    w = np.ones_like(Y) if w is None else w
    R = Y - Z @ X.T - (0 if b is None else b[:, None])
    Qs = Q if isinstance(Q, list) else [Q] * K
    s = np.broadcast_to(np.asarray(s, dtype=float), (K,))
    gZ = -2 * (w * R) @ X / (G * N) + 2 * lam / (K * N) * np.column_stack([s[k] * (Qs[k] @ Z[:, k]) for k in range(K)])
    gb = 0.0 if b is None else np.abs(-2 * (w * R).sum(axis=1) / (G * N)).max()
    if nonneg:
        viol = max(np.abs(gZ[Z > 1e-9]).max(initial=0.0), max(0.0, -gZ.min()), max(0.0, -Z.min()))
    else:
        viol = np.abs(gZ).max()
    return gb, viol, np.abs(gZ).max()


# ------------------------------------------------------------------------------------------------ core solver
@pytest.mark.parametrize("model", ["nnls", "lr", "dwls"])
@pytest.mark.parametrize("bias", [True, False])
def test_exact_solver_kkt_and_cvxpy(small, model, bias):
    cp = pytest.importorskip("cvxpy")
    X, Y, Q = small
    lam = 4.0
    r = core.deconvolve_quadratic(
        X, Y, model=model, Q=Q, lam=lam, bias=bias, tol=1e-10, max_iter=20000, show_progress=False
    )
    assert r.converged and r.kkt_residual <= 1e-10
    w = core.dwls_weights(Y) if model == "dwls" else None
    gb, viol, gscale = _kkt(X, Y, r.coef, r.bias, Q, lam, model != "lr", w=w)
    assert gb < 1e-8 and viol < 1e-7
    assert r.objective == pytest.approx(_objective_dense(X, Y, r.coef, r.bias, Q, lam, w=w), rel=1e-10)
    ref = classic._solve_cvxpy(
        model, X, Y, Q=Q, lam=lam, confidences=1.0, bias=bias, nonneg=model != "lr", solver=cp.CLARABEL
    )
    assert r.objective <= ref.objective + 1e-9
    np.testing.assert_allclose(r.coef, ref.coef, atol=2e-5)


def test_per_type_precisions_and_confidences(small):
    cp = pytest.importorskip("cvxpy")
    X, Y, Q = small
    n = Y.shape[0]
    rng = np.random.default_rng(5)
    Qs = [Q, precision(knn_graph(rng.uniform(size=(n, 2)), k=4)[0], "car", 0.2), sp.identity(n, format="csr"), Q]
    s = np.array([1.0, 2.0, 0.5, 3.0])
    r = core.deconvolve_quadratic(
        X, Y, model="nnls", Q=Qs, lam=10.0, confidences=s, tol=1e-10, max_iter=20000, show_progress=False
    )
    gb, viol, _ = _kkt(X, Y, r.coef, r.bias, Qs, 10.0, True, s=s)
    assert gb < 1e-8 and viol < 1e-7
    ref = classic._solve_cvxpy("nnls", X, Y, Q=Qs, lam=10.0, confidences=s, bias=True, nonneg=True, solver=cp.CLARABEL)
    np.testing.assert_allclose(r.coef, ref.coef, atol=2e-5)


def test_sparse_input_and_dense_sma_precision_agree(small):
    X, Y, Q = small
    r1 = core.deconvolve_quadratic(X, Y, Q=Q, lam=2.0, tol=1e-10, max_iter=20000, show_progress=False)
    r2 = core.deconvolve_quadratic(
        X, sp.csr_matrix(Y), Q=Q.toarray(), lam=2.0, tol=1e-10, max_iter=20000, show_progress=False
    )
    np.testing.assert_allclose(r1.coef, r2.coef, atol=1e-8)


def test_spatial_loss_smooths_solution(small):
    X, Y, Q = small
    r0 = core.deconvolve_quadratic(X, Y, Q=Q, lam=0.0, show_progress=False)
    r1 = core.deconvolve_quadratic(X, Y, Q=Q, lam=50.0, show_progress=False)
    rough = lambda Z: np.sum(Z * (Q @ Z))  # noqa: E731
    assert rough(r1.coef) < 0.5 * rough(r0.coef)
    assert r0.spatial_loss == 0.0 and r1.spatial_loss > 0


def test_max_iter_warns(small):
    X, Y, Q = small
    with pytest.warns(core.ConvergenceWarning, match="before converging"):
        r = core.deconvolve_quadratic(
            X, Y, Q=Q, lam=50.0, tol=1e-14, max_iter=3, init_with_lr_sol=False, show_progress=False
        )
    assert not r.converged and r.n_iter == 3


def test_coef_to_props():
    P, n_empty = core.coef_to_props(np.array([[1.0, 3.0], [-1.0, 2.0], [0.0, -1.0]]))
    np.testing.assert_allclose(P, [[0.25, 0.75], [0.0, 1.0], [0.5, 0.5]])
    assert n_empty == 1


# ------------------------------------------------------------------------------------------------ fit loop
def test_should_stop_rule():
    stall = 0
    stop, stall = should_stop(np.inf, 10.0, stall, tol=1e-3, patience=2)
    assert not stop and stall == 0
    stop, stall = should_stop(10.0, 9.0, stall, tol=1e-3, patience=2)  # real progress resets
    assert not stop and stall == 0
    stop, stall = should_stop(9.0, 8.9999, stall, tol=1e-3, patience=2)  # below tol * |prev|
    assert not stop and stall == 1
    stop, stall = should_stop(8.9999, 9.5, stall, tol=1e-3, patience=2)  # an increase also stalls
    assert stop and stall == 2


def test_fit_converges_and_reports_max_epochs():
    target = torch.tensor([1.0, -2.0])
    p = torch.zeros(2, requires_grad=True)
    with torch_threads(1):
        res = fit(
            [p],
            lambda: (((p - target) ** 2).sum(), {}),
            optimizer="lbfgs",
            lr=1.0,
            max_epochs=50,
            tol=1e-10,
            patience=2,
            show_progress=False,
        )
    assert res.converged and res.n_epochs < 50
    np.testing.assert_allclose(p.detach().numpy(), target.numpy(), atol=1e-6)
    q = torch.zeros(2, requires_grad=True)
    with torch_threads(1):
        res = fit([q], lambda: (((q - target) ** 2).sum(), {}), lr=1e-3, max_epochs=5, show_progress=False)
    assert torch.get_num_threads() >= 1
    assert not res.converged and res.n_epochs == 5 and res.reason == "max_epochs"


# ------------------------------------------------------------------------------------------------ classic API
def test_classic_factories_match_cvxpy(small):
    pytest.importorskip("cvxpy")
    X, Y, Q = small
    x, y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y.T, dtype=torch.float32)
    for factory in (classic.NNLS, classic.LinearRegression, classic.DWLS, classic.NuSVR):
        m1 = factory("pytorch")
        m1.deconv(x, y, spatial_loss=Q, lambda_spatial_loss=3.0, quiet=True, max_epochs=3000)
        m2 = factory(backend="cvxpy")
        m2.deconv(x, y, spatial_loss=Q, lambda_spatial_loss=3.0, quiet=True)
        assert float(m1.get_model_loss()) + float(m1.get_sp_loss()) <= m2.result.objective + 1e-6
        np.testing.assert_allclose(m1.get_props().numpy(), m2.get_props(), atol=2e-3)
        p = m1.get_props().numpy()
        assert p.shape == (Y.shape[0], X.shape[1]) and (p >= 0).all()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        assert m1.deconv_time > 0


def test_classic_signature_and_errors(small):
    X, Y, Q = small
    m = classic.NNLS(bias=False, dim_in=4, dim_out=50)
    with pytest.raises(RuntimeError, match="deconv"):
        m.get_props()
    with pytest.raises(ValueError, match="genes"):
        m.deconv(X, Y, quiet=True)  # y must be num_gene x num_spot
    with pytest.raises(ValueError, match="backend"):
        classic.NNLS(backend="jax")
    with pytest.raises(ValueError, match="pytorch"):
        classic.LogNormReg(backend="cvxpy")
    m.deconv(X, Y.T, spatial_loss=None, lambda_spatial_loss=0.0, quiet=True)
    assert m.get_bias() is None and float(m.get_sp_loss()) == 0.0


def test_lognorm_and_top_loss_paths(small):
    X, Y, Q = small
    m = classic.LogNormReg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", core.ConvergenceWarning)
        m.deconv(X, Y.T, spatial_loss=Q, lambda_spatial_loss=1.0, lr=1e-2, max_epochs=300, quiet=True)
    hist = m.result.extra["history"]
    assert hist[-1] < hist[0] and (m.result.coef >= 0).all()
    # a topological term (here any torch callable) is added to the exact optimum and lowers the total
    exact = classic.NNLS()
    exact.deconv(X, Y.T, spatial_loss=Q, lambda_spatial_loss=1.0, quiet=True)
    penalty = lambda B: (B**2).mean()  # noqa: E731
    mt = classic.NNLS()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", core.ConvergenceWarning)
        mt.deconv(
            X,
            Y.T,
            spatial_loss=Q,
            lambda_spatial_loss=1.0,
            top_loss=penalty,
            lambda_top_loss=5.0,
            lr=1e-2,
            max_epochs=300,
            quiet=True,
        )
    start_total = exact.result.objective + 5.0 * float((exact.result.coef**2).mean())
    assert mt.result.top_loss > 0
    assert mt.result.objective < start_total
    assert float(mt.get_top_loss()) < 5.0 * float((exact.result.coef**2).mean())


# ------------------------------------------------------------------------------------------------ sm.tl / sm.pl
def test_tl_deconvolve_writes_valid_props(mixture):
    ad, ref = mixture
    ad = ad.copy()
    sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=1.0)
    P = ad.obsm["props"]
    assert isinstance(P, pd.DataFrame) and list(P.index) == list(ad.obs_names)
    assert sorted(P.columns) == sorted(ref.obs["cell_type"].unique().astype(str))
    assert (P.to_numpy() >= 0).all()
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-10)
    u = ad.uns["props"]
    assert u["params"]["lambda_spatial"] == 1.0 and u["params"]["model"] == "nnls"
    assert u["convergence"]["converged"] and u["convergence"]["kkt_residual"] < 1e-6
    assert u["objective"]["total"] == pytest.approx(u["objective"]["model"] + u["objective"]["spatial"])
    truth = ad.obsm["props_truth"][P.columns].to_numpy()
    assert np.sqrt(np.mean((P.to_numpy() - truth) ** 2)) < 0.1


def test_genes_matched_by_name_in_any_order(mixture):
    ad, ref = mixture
    a1 = sm.tl.deconvolve(ad, ref, groupby="cell_type", copy=True)
    rng = np.random.default_rng(0)
    ad2 = ad[:, rng.permutation(ad.n_vars)].copy()
    ref2 = ref[:, rng.permutation(ref.n_vars)[5:]].copy()  # shuffled, 5 genes missing
    ref_full_sig = sm.tl._deconv.reference_signatures(ref, "cell_type")
    sig_df = ref_full_sig.iloc[rng.permutation(ref.n_vars)]  # a DataFrame reference in another order
    a2 = sm.tl.deconvolve(ad2, sig_df, copy=True)
    np.testing.assert_allclose(a1.obsm["props"].to_numpy(), a2.obsm["props"].to_numpy(), atol=1e-6)
    a3 = sm.tl.deconvolve(ad2, ref2, groupby="cell_type", copy=True)
    assert len(a3.uns["props"]["genes"]) == ad.n_vars - 5
    assert set(a3.uns["props"]["genes"]) == set(ref2.var_names)


def test_classic_and_tl_agree(mixture):
    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=3.0, copy=True)
    sig = sm.tl._deconv.reference_signatures(ref, "cell_type").loc[ad.var_names]
    Q = precision(ad.obsp["spatial_connectivities"], "icar", 0.99)
    m = classic.NNLS()
    m.deconv(
        torch.tensor(sig.to_numpy()),
        torch.tensor(np.asarray(ad.X).T),
        spatial_loss=Q,
        lambda_spatial_loss=3.0,
        quiet=True,
    )
    np.testing.assert_allclose(m.get_props().numpy(), a.obsm["props"][list(sig.columns)].to_numpy(), atol=1e-5)
    assert float(m.get_sp_loss()) == pytest.approx(a.uns["props"]["objective"]["spatial"], rel=1e-4)


def test_lambda_auto_beats_no_spatial_loss(mixture):
    ad, ref = mixture
    a0 = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.0, copy=True)
    aa = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial="auto", copy=True)
    truth = ad.obsm["props_truth"]
    rmse = lambda a: np.sqrt(np.mean((a.obsm["props"][truth.columns].to_numpy() - truth.to_numpy()) ** 2))  # noqa: E731
    info = aa.uns["props"]["lambda_auto"]
    assert aa.uns["props"]["params"]["lambda_spatial"] == info["chosen"] > 0
    assert info["chosen"] in set(info["grid"])
    assert np.argmin(info["cv_error"]) == list(info["grid"]).index(info["chosen"])
    assert rmse(aa) < rmse(a0)


def test_other_models_through_tl(mixture):
    ad, ref = mixture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", core.ConvergenceWarning)
        for model in ("dwls", "nusvr", "lr"):
            a = sm.tl.deconvolve(ad, ref, groupby="cell_type", model=model, copy=True, max_epochs=15)
            P = a.obsm["props"].to_numpy()
            assert (P >= 0).all() and np.allclose(P.sum(1), 1.0)
            assert a.uns["props"]["params"]["model"] == model


def _snapshot(ad):
    return (set(ad.obsm.keys()), set(ad.uns.keys()), set(ad.obs.columns), np.asarray(ad.X).copy())


@pytest.mark.parametrize(
    ("make", "kwargs", "exc", "match"),
    [
        (lambda ad, ref: ref, {"groupby": "celltype"}, KeyError, "celltype"),
        (lambda ad, ref: ref, {}, ValueError, "groupby"),
        ("empty_group", {"groupby": "cell_type"}, ValueError, "no cells"),
        ("renamed", {"groupby": "cell_type"}, ValueError, "No genes are shared"),
        ("negative", {"groupby": "cell_type", "model": "dwls"}, ValueError, "non-negative"),
        ("nan", {"groupby": "cell_type"}, ValueError, "NaN"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "lambda_spatial": -1.0}, ValueError, ">= 0"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "lambda_spatial": "big"}, TypeError, "auto"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "model": "svm"}, ValueError, "Unknown model"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "model": "nusvr", "lambda_spatial": "auto"}, ValueError, "auto"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "connectivity_key": "nope"}, KeyError, "spatial_graph"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "rho": 2.0}, ValueError, "rho"),
        (lambda ad, ref: ref, {"groupby": "cell_type", "backend": "jax"}, ValueError, "backend"),
        (lambda ad, ref: np.ones((3, 3)), {}, TypeError, "DataFrame"),
    ],
)
def test_bad_input_raises_before_work(mixture, make, kwargs, exc, match):
    ad, ref = mixture
    ad = ad.copy()
    if make == "empty_group":
        r = ref.copy()
        r.obs["cell_type"] = pd.Categorical(
            r.obs["cell_type"], categories=[*sorted(r.obs["cell_type"].unique()), "ghost"]
        )
    elif make == "renamed":
        r = ref.copy()
        r.var_names = [f"other_{g}" for g in r.var_names]
    elif make == "negative":
        r = ref
        ad.X = np.asarray(ad.X) - 5.0
    elif make == "nan":
        r = ref
        X = np.asarray(ad.X, dtype=np.float64).copy()
        X[0, 0] = np.nan
        ad.X = X
    else:
        r = make(ad, ref)
    before = _snapshot(ad)
    with pytest.raises(exc, match=match):
        sm.tl.deconvolve(ad, r, **kwargs)
    after = _snapshot(ad)
    assert before[:3] == after[:3]
    np.testing.assert_array_equal(before[3], after[3])


def test_few_genes_warns(mixture):
    ad, ref = mixture
    with pytest.warns(UserWarning, match="Only 6 genes"):
        sm.tl.deconvolve(ad[:, :6].copy(), ref, groupby="cell_type", copy=True)


def test_pl_props(mixture):
    import matplotlib.pyplot as plt

    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", copy=True)
    fig = sm.pl.props(a, compare_truth=False)
    types = list(a.obsm["props"].columns)
    scat = [ax for ax in fig.axes if ax.collections and ax.get_title() in types]
    assert len(scat) == len(types)
    for ax in scat:
        np.testing.assert_allclose(ax.collections[0].get_array(), a.obsm["props"][ax.get_title()].to_numpy())
        np.testing.assert_allclose(ax.collections[0].get_offsets(), a.obsm["spatial"][:, :2])
    plt.close(fig)
    fig = sm.pl.props(a, types=types[:2])  # truth exists -> compared by default
    titles = [ax.get_title() for ax in fig.axes]
    assert f"{types[0]} (truth)" in titles and any(t.startswith("truth vs estimate") for t in titles)
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("truth vs estimate"))
    est = a.obsm["props"][types[0]].to_numpy()
    tru = a.obsm["props_truth"][types[0]].to_numpy()
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([tru, est]))
    plt.close(fig)
    with pytest.raises(KeyError, match="sm.tl.deconvolve"):
        sm.pl.props(ad, key="missing")


def test_classic_spatial_loss_object(mixture):
    """With the classic SpatialLoss (and per-group confidences) the factory's spatial loss is lambda * sl(beta)."""
    from smoother.losses import SpatialLoss
    from smoother.weights import SpatialWeightMatrix

    ad, ref = mixture
    sig = sm.tl._deconv.reference_signatures(ref, "cell_type").loc[ad.var_names]
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(torch.tensor(ad.obsm["spatial"]), k=6, verbose=False)
    sl = SpatialLoss("icar", swm, rho=0.99)
    sl.confidences = torch.tensor([1.0, 0.5, 2.0, 1.0])
    x, y = torch.tensor(sig.to_numpy()), torch.tensor(np.asarray(ad.X).T)
    m = classic.NNLS()
    m.deconv(x, y, spatial_loss=sl, lambda_spatial_loss=2.0, quiet=True)
    assert m.result.converged
    beta = m.get_coefs().double()
    assert float(m.get_sp_loss()) == pytest.approx(2.0 * float(sl.double()(beta)), rel=1e-4)
    # KKT of the full objective with the per-group confidences
    gb, viol, _ = _kkt(
        sig.to_numpy(),
        np.asarray(ad.X, dtype=float),
        m.result.coef,
        m.result.bias,
        sl.get_precision(0),
        2.0,
        True,
        s=np.array([1.0, 0.5, 2.0, 1.0]),
    )
    assert gb < 1e-8 and viol < 1e-6 * np.abs(sig.to_numpy()).max()


def test_betti_priors_build_toploss(mixture):
    ad, ref = mixture
    types = sorted(ref.obs["cell_type"].unique().astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", core.ConvergenceWarning)
        a = sm.tl.deconvolve(
            ad, ref, groupby="cell_type", betti_priors={types[0]: {0: 1}}, lambda_topo=1.0, max_epochs=3, copy=True
        )
    assert a.uns["props"]["objective"]["topological"] > 0
    assert a.uns["props"]["convergence"]["solver"].startswith("torch")
    with pytest.raises(KeyError, match="not in the reference types"):
        sm.tl.deconvolve(ad, ref, groupby="cell_type", betti_priors={"nope": {0: 1}}, lambda_topo=1.0)
