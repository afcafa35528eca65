"""sm.tl.impute / sm.tl.enhance and the classic smoother.models.impute, against dense references."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import smoother as sm
from smoother import SpatialLoss, SpatialWeightMatrix


def _grid(n_side=10):
    xx, yy = np.meshgrid(np.arange(float(n_side)), np.arange(float(n_side)))
    return np.column_stack([xx.ravel(), yy.ravel()])


def _split(seed=0, n_side=10, n_genes=3, frac_missing=0.2):
    rng = np.random.default_rng(seed)
    coords = _grid(n_side)
    miss = rng.random(len(coords)) < frac_missing
    c_obs, c_new = coords[~miss], coords[miss]
    Y = (np.sin(c_obs[:, :1] / 2.0) + rng.normal(scale=0.3, size=(len(c_obs), n_genes))).astype(np.float32)
    a = ad.AnnData(Y)
    a.obsm["spatial"] = c_obs
    return a, c_new


def _Q(W, rho):
    W = W.toarray()
    return np.diag(W.sum(1)) - rho * W


@pytest.mark.parametrize("center", [False, True])
def test_fixed_obs_is_the_gaussian_conditional(center):
    a, c_new = _split()
    out = sm.tl.impute(a, c_new, prior="icar", rho=0.99, n_neighs=4, center=center, dtype="float64")
    obs = out.obs["observed"].to_numpy()
    assert obs.sum() == a.n_obs and (~obs).sum() == len(c_new)
    np.testing.assert_array_equal(out.X[obs], a.X)  # observations kept
    Q = _Q(out.obsp["spatial_connectivities"], 0.99)
    Y = np.asarray(a.X, np.float64)
    m = Y.mean(0) if center else np.zeros(a.n_vars)  # the field's prior mean
    ref = m + np.linalg.solve(Q[~obs][:, ~obs], -Q[~obs][:, obs] @ (Y - m))
    np.testing.assert_allclose(out.X[~obs], ref, atol=1e-9)
    assert out.obs["connected"].all()
    np.testing.assert_allclose(out.obsm["spatial"][~obs], c_new)
    assert out.uns["impute"]["params"]["fixed_obs"] is True


@pytest.mark.parametrize("center", [False, True])
def test_joint_denoise_and_fill_equals_dense_solve(center):
    a, c_new = _split(seed=1)
    lam = 0.7
    out = sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial=lam, n_neighs=4, center=center, dtype="float64")
    obs = out.obs["observed"].to_numpy()
    Q = _Q(out.obsp["spatial_connectivities"], 0.99)
    P = np.diag(obs.astype(float))
    Yall = np.zeros((out.n_obs, a.n_vars))
    Yall[obs] = a.X
    m = Yall[obs].mean(0) if center else np.zeros(a.n_vars)
    ref = m + np.linalg.solve(P + lam * Q, P @ (Yall - m))
    np.testing.assert_allclose(out.X, ref, atol=1e-9)


def _classic_loss(coords, rho=0.99):
    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(
        coords, k=4, verbose=False
    ) if "verbose" in SpatialWeightMatrix.calc_weights_knn.__code__.co_varnames else swm.calc_weights_knn(coords, k=4)
    return SpatialLoss("icar", swm, rho=rho, use_sparse=True)


@pytest.mark.parametrize("fixed_obs", [True, False])
def test_classic_imputetorch_agrees_with_tl_impute(fixed_obs):
    from smoother.models.impute import ImputeTorch

    a, c_new = _split(seed=2)
    coords_all = np.vstack([a.obsm["spatial"], c_new])
    loss = _classic_loss(coords_all)
    lam_c = 2.0
    m = ImputeTorch(torch.as_tensor(a.X), loss, fixed_obs=fixed_obs, lambda_spatial_loss=lam_c, quiet=True)
    assert m.impute_flag
    res = m.get_results().numpy()
    assert res.shape == (len(coords_all), a.n_vars)
    # the classic loss normalizes the fit by n_obs*G and the prior by n_all*G: lambda' = lam_c * n_obs / n_all
    lam = lam_c * a.n_obs / len(coords_all)
    out = sm.tl.impute(
        a, c_new, fixed_obs=fixed_obs, lambda_spatial=lam, n_neighs=4, rho=0.99, center=False, dtype="float64"
    )
    np.testing.assert_allclose(res, out.X, atol=1e-5)
    # and it is the optimum of the classic objective: Adam from the classic defaults ends higher
    with pytest.warns(UserWarning, match="converge"):  # 200 Adam epochs do not converge
        adam = ImputeTorch(
            torch.as_tensor(a.X),
            loss,
            fixed_obs=fixed_obs,
            lambda_spatial_loss=lam_c,
            quiet=True,
            method="adam",
            max_epochs=200,
        )
    assert m.objective() <= adam.objective(lam_c) + 1e-9
    # forward() imputes a new matrix on the same graph
    y2 = torch.as_tensor(a.X * 2)
    np.testing.assert_allclose(
        m.forward(y2, lambda_spatial_loss=lam_c, quiet=True).numpy(), 2 * res, rtol=1e-5, atol=1e-5
    )


def test_classic_nonneg_and_convex_agree():
    pytest.importorskip("cvxpy")
    from smoother.models.impute import ImputeConvex, ImputeTorch

    a, c_new = _split(seed=3, n_side=7, n_genes=2)
    a.X = np.abs(a.X) * (np.arange(a.n_obs)[:, None] % 3 != 0)  # non-negative with zeros
    coords_all = np.vstack([a.obsm["spatial"], c_new])
    loss = _classic_loss(coords_all)
    t = ImputeTorch(torch.as_tensor(a.X), loss, fixed_obs=False, nonneg=True, lambda_spatial_loss=3.0, quiet=True)
    c = ImputeConvex(torch.as_tensor(a.X), loss, fixed_obs=False, nonneg=True, lambda_spatial_loss=3.0)
    assert t.get_results().min() >= 0
    np.testing.assert_allclose(t.get_results().numpy(), c.get_results(), atol=1e-3)
    assert t.objective() <= c.objective(3.0) + 1e-7


def test_classic_rejects_negative_data_with_nonneg():
    from smoother.models.impute import ImputeTorch

    a, c_new = _split()
    loss = _classic_loss(np.vstack([a.obsm["spatial"], c_new]))
    with pytest.raises(ValueError, match="negative"):
        ImputeTorch(torch.as_tensor(a.X) - 10, loss, nonneg=True)


def test_impute_bad_inputs():
    a, c_new = _split()
    with pytest.raises(ValueError, match="shape"):
        sm.tl.impute(a, c_new[:, :1])
    with pytest.raises(ValueError, match="lambda_spatial"):
        sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial=0.0)
    b = a.copy()
    del b.obsm["spatial"]
    with pytest.raises(KeyError, match="obsm"):
        sm.tl.impute(b, c_new)


@pytest.mark.parametrize("rho", [0.9, 1.0])
@pytest.mark.parametrize("fixed_obs", [True, False])
def test_spots_without_a_path_to_data_are_flagged_not_silently_zero(rho, fixed_obs):
    a, c_new = _split()
    a.X = a.X + 5.0  # far from 0, so a silent 0 would show
    far = np.array([[1000.0, 1000.0], [1001.0, 1000.0]])  # a separate island: no graph path to any observation
    coords = np.vstack([c_new, far])
    with pytest.warns(UserWarning, match=r"2 new spot\(s\) have no graph path.*obs\['connected'\]"):
        out = sm.tl.impute(a, coords, n_neighs=4, rho=rho, fixed_obs=fixed_obs, dtype="float64")
    conn = out.obs["connected"].to_numpy()
    np.testing.assert_array_equal(conn, np.r_[np.ones(a.n_obs + len(c_new), bool), False, False])
    np.testing.assert_allclose(out.X[~conn], np.tile(np.asarray(a.X, np.float64).mean(0), (2, 1)), rtol=1e-6)
    # the connected spots get the dense solution of the problem restricted to them (the island is decoupled)
    Q = _Q(out.obsp["spatial_connectivities"], rho)[conn][:, conn]
    obs = out.obs["observed"].to_numpy()[conn]
    Y = np.asarray(a.X, np.float64)
    m = Y.mean(0)
    if fixed_obs:
        ref = m + np.linalg.solve(Q[~obs][:, ~obs], -Q[~obs][:, obs] @ (Y - m))
        np.testing.assert_allclose(out.X[conn][~obs], ref, atol=1e-8)
    else:
        Yall = np.zeros((conn.sum(), a.n_vars))
        Yall[obs] = Y - m
        ref = m + np.linalg.solve(np.diag(obs.astype(float)) + Q, Yall)  # lambda_spatial=1
        np.testing.assert_allclose(out.X[conn], ref, atol=1e-8)


def test_enhance_subspots_average_back_to_spots():
    rng = np.random.default_rng(0)
    coords = _grid(8) * 2.0
    a = ad.AnnData(rng.normal(size=(64, 3)).astype(np.float32))
    a.obsm["spatial"] = coords
    out = sm.tl.enhance(a, factor=3, lambda_spatial=1e-4, dtype="float64")
    parent = out.obs["parent_spot"]
    assert out.n_obs == 64 * 9
    assert (parent.value_counts() == 9).all()
    # sub-spots lie within their parent's footprint, on a lattice 3x finer
    d = np.abs(out.obsm["spatial"] - coords[parent.cat.codes.to_numpy()])
    assert d.max() <= 1.0 + 1e-9
    # with a tiny lambda, spot averages of the sub-spots reproduce the data
    means = np.vstack([out.X[parent.cat.codes.to_numpy() == i].mean(0) for i in range(64)])
    np.testing.assert_allclose(means, a.X, atol=1e-2)
    with pytest.raises(ValueError, match="factor"):
        sm.tl.enhance(a, factor=1)


def test_classic_stopping_rule():
    """smoother-omics 1.1.0's rule: go on while the loss drops by >= tol, or rises with patience left."""
    from smoother._core.fit import ClassicStopping

    s = ClassicStopping(max_epochs=-1, patience=2, tol=0.1)
    assert s.max_epochs == 10000 and s.keep_going()
    for loss, going in [(10.0, True), (9.0, True), (8.95, False)]:  # a drop below tol ends the fit
        s.update(loss)
        assert s.keep_going() is going
    s = ClassicStopping(max_epochs=100, patience=2, tol=0.1)
    s.update(5.0)
    s.update(6.0)  # an increase uses one unit of patience
    assert s.patience == 1 and s.keep_going()
    s.update(7.0)
    assert s.patience == 0 and not s.keep_going()
    s = ClassicStopping(max_epochs=3, patience=0, tol=0.0)  # patience is at least 1; max_epochs is a hard cap
    assert s.patience == 1
    for loss in (3.0, 2.0, 1.0):
        s.update(loss)
    assert s.epoch == 3 and not s.keep_going()


@pytest.mark.parametrize("center", [False, True])
def test_enhance_equals_dense_solve(center):
    rng = np.random.default_rng(1)
    coords = _grid(5) * 2.0
    a = ad.AnnData((3.0 + rng.normal(size=(25, 2))).astype(np.float32))
    a.obsm["spatial"] = coords
    lam, rho = 0.5, 0.9
    out = sm.tl.enhance(a, factor=2, lambda_spatial=lam, rho=rho, center=center, dtype="float64")
    codes = out.obs["parent_spot"].cat.codes.to_numpy()
    A = np.zeros((a.n_obs, out.n_obs))
    A[codes, np.arange(out.n_obs)] = 1.0
    A /= A.sum(1, keepdims=True)  # spot value = mean of its sub-spots
    Q = _Q(out.obsp["spatial_connectivities"], rho)
    Y = np.asarray(a.X, np.float64)
    m = Y.mean(0) if center else np.zeros(a.n_vars)
    ref = m + np.linalg.solve(A.T @ A + lam * Q, A.T @ (Y - m))
    np.testing.assert_allclose(out.X, ref, atol=1e-9)
    assert out.uns["enhance"]["params"]["center"] is center


def test_joint_auto_equals_the_fit_at_the_chosen_lambda():
    a, c_new = _split(seed=4, n_side=12, n_genes=4)
    out = sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial="auto", n_neighs=4, dtype="float64")
    lam = out.uns["impute"]["params"]["lambda"]
    rec = out.uns["impute"]["gcv"]
    lams, score = np.asarray(rec["lambda"]), np.asarray(rec["score"])
    assert lams[0] == 0.0 and score[np.argmin(np.abs(lams - lam))] <= score[0] + 1e-12
    if lam > 0:
        ref = sm.tl.impute(a, c_new, fixed_obs=False, lambda_spatial=lam, n_neighs=4, dtype="float64")
    else:  # lambda -> 0 of the joint fit: the observations are kept and the rest is the conditional mean
        ref = sm.tl.impute(a, c_new, fixed_obs=True, n_neighs=4, dtype="float64")
    np.testing.assert_allclose(out.X, ref.X, atol=1e-12)
    with pytest.raises(ValueError, match="fixed_obs=False"):
        sm.tl.impute(a, c_new, lambda_spatial="auto")
