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
    sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", lambda_spatial=1.0)
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
    a1 = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", copy=True)
    rng = np.random.default_rng(0)
    ad2 = ad[:, rng.permutation(ad.n_vars)].copy()
    ref2 = ref[:, rng.permutation(ref.n_vars)[5:]].copy()  # shuffled, 5 genes missing
    ref_full_sig = sm.tl._deconv.reference_signatures(ref, "cell_type")
    sig_df = ref_full_sig.iloc[rng.permutation(ref.n_vars)]  # a DataFrame reference in another order
    a2 = sm.tl.deconvolve(ad2, sig_df, model="nnls", copy=True)
    np.testing.assert_allclose(a1.obsm["props"].to_numpy(), a2.obsm["props"].to_numpy(), atol=1e-6)
    a3 = sm.tl.deconvolve(ad2, ref2, groupby="cell_type", model="nnls", copy=True)
    assert len(a3.uns["props"]["genes"]) == ad.n_vars - 5
    assert set(a3.uns["props"]["genes"]) == set(ref2.var_names)


def test_classic_and_tl_agree(mixture):
    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", lambda_spatial=3.0, copy=True)
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
    a0 = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", lambda_spatial=0.0, copy=True)
    aa = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", lambda_spatial="auto", copy=True)
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
        sm.tl.deconvolve(ad[:, :6].copy(), ref, groupby="cell_type", model="nnls", copy=True)


def test_pl_props(mixture):
    import matplotlib.pyplot as plt

    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", copy=True)
    fig = sm.pl.props(a, compare_truth=False, show=False)
    types = list(a.obsm["props"].columns)
    scat = [ax for ax in fig.axes if ax.collections and ax.get_title() in types]
    assert len(scat) == len(types)
    for ax in scat:
        np.testing.assert_allclose(ax.collections[0].get_array(), a.obsm["props"][ax.get_title()].to_numpy())
        np.testing.assert_allclose(ax.collections[0].get_offsets(), a.obsm["spatial"][:, :2])
    plt.close(fig)
    fig = sm.pl.props(a, types=types[:2], show=False)  # truth exists -> compared by default
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
            ad,
            ref,
            groupby="cell_type",
            model="nnls",
            betti_priors={types[0]: {0: 1}},
            lambda_topo=1.0,
            max_epochs=3,
            copy=True,
        )
    assert a.uns["props"]["objective"]["topological"] > 0
    assert a.uns["props"]["convergence"]["solver"].startswith("torch")
    with pytest.raises(KeyError, match="not in the reference types"):
        sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nnls", betti_priors={"nope": {0: 1}}, lambda_topo=1.0)


# ---------------------------------------------------------------------------------------------- count models (default)
def _count_signatures_by_hand(ref):
    """Per-cell normalized mean profile of each type, written out with numpy."""
    X = np.asarray(ref.X, dtype=np.float64)
    Xn = X / X.sum(axis=1, keepdims=True)
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    types = [str(t) for t in ref.obs["cell_type"].cat.categories]
    prof = np.column_stack([Xn[labels == t].mean(axis=0) for t in types])
    return pd.DataFrame(prof, index=ref.var_names.astype(str), columns=types)


def test_count_model_is_the_default_and_passes_the_right_problem(mixture):
    from smoother._anndata import get_prior_operator
    from smoother._core import deconv_counts as dc

    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.5, copy=True)
    u = a.uns["props"]
    assert u["params"]["model"] == "nb" and u["params"]["lambda_spatial"] == 0.5
    assert u["params"]["bias"] is False and "props_bias" not in a.obs
    sig = _count_signatures_by_hand(ref)
    got, info = sm.tl._deconv.count_signatures(ref, "cell_type")
    np.testing.assert_allclose(got.loc[sig.index, sig.columns].to_numpy(), sig.to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(info["n_cells"], ref.obs["cell_type"].value_counts()[sig.columns].to_numpy())
    # the same fit called directly on the core with independently built inputs, and the genes it used recorded
    Q = get_prior_operator(ad.obsp["spatial_connectivities"], "icar", 0.99).Q
    X = np.asarray(ad.X, dtype=np.float64)
    r = dc.fit_counts(X, sig.loc[ad.var_names].to_numpy(), Q=Q, lambda_spatial=0.5, likelihood="nb")
    mask = r.genes
    assert list(u["genes"]) == list(ad.var_names[mask])
    P, A = a.obsm["props"], a.obsm["props_abundance"]
    assert list(P.columns) == list(sig.columns) and list(A.columns) == list(sig.columns)
    np.testing.assert_allclose(P.to_numpy(), r.proportions, atol=1e-6)
    np.testing.assert_allclose(A.to_numpy(), r.abundance, rtol=1e-5, atol=1e-6)
    assert (P.to_numpy() >= 0).all()
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-10)
    # library size = the spot's total count over the shared genes; abundances add up to about that scale
    lib = np.asarray(ad.X, dtype=np.float64).sum(axis=1)
    np.testing.assert_allclose(a.obs["props_library_size"], lib)
    assert np.median(A.to_numpy().sum(1) / lib) == pytest.approx(1.0, abs=0.1)
    # platform effect: one value per informative gene, NaN for the others
    ge = a.var["props_gene_effect"].to_numpy()
    np.testing.assert_allclose(ge[mask], r.gene_effect, rtol=1e-6)
    assert np.isnan(ge[~mask]).all() and (ge[mask] > 0).all()
    np.testing.assert_allclose(a.var["props_dispersion"].to_numpy()[mask], r.dispersion, rtol=1e-6)
    truth = ad.obsm["props_truth"][P.columns].to_numpy()
    assert np.sqrt(np.mean((P.to_numpy() - truth) ** 2)) < 0.1


def test_count_abundance_keeps_the_spot_scale(mixture):
    ad, ref = mixture
    b = ad.copy()
    X = np.asarray(b.X, dtype=np.float64).copy()
    X[:40] *= 2.0  # twice the counts in 40 spots
    b.X = X
    kw = {"groupby": "cell_type", "model": "poisson", "lambda_spatial": 0.0, "copy": True}
    kw["model_kwargs"] = {"platform_effect": False}  # exact scale equivariance: Poisson, no shared gene effect
    a1, a2 = sm.tl.deconvolve(ad, ref, **kw), sm.tl.deconvolve(b, ref, **kw)
    np.testing.assert_allclose(a1.obsm["props"].to_numpy(), a2.obsm["props"].to_numpy(), atol=1e-6)
    A1, A2 = a1.obsm["props_abundance"].to_numpy(), a2.obsm["props_abundance"].to_numpy()
    np.testing.assert_allclose(A2[:40], 2.0 * A1[:40], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(A2[40:], A1[40:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a1.var["props_gene_effect"].dropna(), 1.0)


def test_count_model_genes_recorded(mixture):
    from smoother._core.deconv_counts import select_genes

    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.0, copy=True)
    sig = _count_signatures_by_hand(ref).loc[ad.var_names]
    # every type keeps its strongest marker (highest fold over the others)
    S = sig.to_numpy() / sig.to_numpy().sum(0)
    for k in range(S.shape[1]):
        others = np.delete(S, k, axis=1).mean(1)
        assert ad.var_names[np.argmax(S[:, k] / others)] in set(a.uns["props"]["genes"])
    with pytest.warns(UserWarning, match="Only 8 genes are selected"):
        b = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.0, model_kwargs={"n_genes": 8}, copy=True)
    assert list(b.uns["props"]["genes"]) == list(ad.var_names[select_genes(sig.to_numpy(), n_genes=8)])
    chosen = list(ad.var_names[::3])
    c = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.0, genes=chosen, copy=True)
    assert list(c.uns["props"]["genes"]) == chosen  # given genes are all used
    assert c.var["props_gene_effect"].notna().sum() == len(chosen)


def test_count_model_rejects_non_counts_with_the_fix(mixture):
    ad, ref = mixture
    lg = ad.copy()
    lg.layers["counts"] = np.asarray(ad.X).copy()
    lg.X = np.log1p(np.asarray(ad.X, dtype=np.float64))
    with pytest.raises(ValueError, match=r"non-integer.*layer='counts'.*model='nnls'"):
        sm.tl.deconvolve(lg, ref, groupby="cell_type", lambda_spatial=0.0)
    assert "props" not in lg.obsm
    a = sm.tl.deconvolve(lg, ref, groupby="cell_type", layer="counts", lambda_spatial=0.0, copy=True)
    b = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial=0.0, copy=True)
    np.testing.assert_allclose(a.obsm["props"].to_numpy(), b.obsm["props"].to_numpy())
    neg = ad.copy()
    neg.X = np.asarray(ad.X) - 1.0
    with pytest.raises(ValueError, match="negative"):
        sm.tl.deconvolve(neg, ref, groupby="cell_type")
    # a normalized reference: the message names the reference and its layer argument
    rn = ref.copy()
    X = np.asarray(rn.X, dtype=np.float64)
    rn.X = X / X.sum(1, keepdims=True) * 1e4
    with pytest.raises(ValueError, match=r"reference\.X.*reference_layer='counts'"):
        sm.tl.deconvolve(ad, rn, groupby="cell_type", lambda_spatial=0.0)
    # the classic models take normalized data
    sm.tl.deconvolve(lg, rn, groupby="cell_type", model="nnls", lambda_spatial=0.0, copy=True)


def test_count_model_warns_about_weak_reference_types(mixture):
    ad, ref = mixture
    labels = ref.obs["cell_type"].astype(str)
    keep = ~(labels == "type_0").to_numpy()
    keep[np.flatnonzero(labels == "type_0")[:3]] = True  # only 3 cells of type_0
    with pytest.warns(UserWarning, match=r"type_0 \(3\)"):
        sm.tl.deconvolve(ad, ref[keep].copy(), groupby="cell_type", lambda_spatial=0.0, copy=True)
    # type_1's cells replaced by copies of type_0's: type_1 has no marker any more
    twin = ref.copy()
    X = np.asarray(twin.X, dtype=np.float64).copy()
    i0, i1 = np.flatnonzero(labels == "type_0"), np.flatnonzero(labels == "type_1")
    n = min(len(i0), len(i1))
    X[i1[:n]] = X[i0[:n]]
    twin.X = X
    twin = twin[np.setdiff1d(np.arange(ref.n_obs), i1[n:])].copy()
    with pytest.warns(UserWarning, match=r"\['type_1'\] have no marker"):
        sm.tl.deconvolve(ad, twin, groupby="cell_type", lambda_spatial=0.0, copy=True)


def test_count_auto_is_never_worse_than_zero_by_its_criterion(mixture):
    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", lambda_spatial="auto", copy=True)
    info = a.uns["props"]["lambda_auto"]
    grid, score = np.asarray(info["grid"]), np.asarray(info["score"])
    assert a.uns["props"]["params"]["lambda_spatial_requested"] == "auto"
    assert a.uns["props"]["params"]["lambda_spatial"] == info["chosen"]
    assert 0.0 in grid and score[np.argmin(score)] <= score[list(grid).index(0.0)]
    assert isinstance(info["criterion"], str) and info["criterion"]


def test_nb_model_records_dispersion(mixture):
    ad, ref = mixture
    a = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="nb", lambda_spatial=0.0, copy=True)
    d = a.var["props_dispersion"].to_numpy()
    used = ad.var_names.isin(list(a.uns["props"]["genes"]))
    assert np.isfinite(d[used]).all() and (d[used] >= 0).all() and np.isnan(d[~used]).all()
    np.testing.assert_allclose(a.obsm["props"].sum(1), 1.0, atol=1e-10)
    b = sm.tl.deconvolve(
        ad, ref, groupby="cell_type", model="nb", lambda_spatial=0.0, model_kwargs={"dispersion": 0.0}, copy=True
    )
    c = sm.tl.deconvolve(ad, ref, groupby="cell_type", model="poisson", lambda_spatial=0.0, copy=True)
    np.testing.assert_allclose(b.obsm["props"].to_numpy(), c.obsm["props"].to_numpy(), atol=3e-3)  # phi >= 1e-4
