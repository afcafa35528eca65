"""smoother.losses against independent dense references (numpy formulas, brute force, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from smoother.losses import (
    ContrastiveSpatialLoss,
    SpatialLoss,
    kl_loss,
    kl_loss_scipy,
    quadratic_loss,
    sparse_quadratic_loss,
)
from smoother.weights import SpatialWeightMatrix

PRIORS = ["sma", "sar", "isar", "car", "icar"]
RHO = {"sma": 0.7, "sar": 0.3, "isar": 0.9, "car": 0.2, "icar": 0.9}


# ---------------------------------------------------------------------------------------------------------------
# fixtures and dense references
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coords():
    rng = np.random.default_rng(3)
    xx, yy = np.meshgrid(np.arange(6.0), np.arange(5.0))
    return np.column_stack([xx.ravel(), yy.ravel()]) + rng.normal(scale=0.03, size=(30, 2))


@pytest.fixture(scope="module")
def swm(coords):
    """kNN weights scaled by expression: non-binary, symmetric, with some edges removed."""
    rng = np.random.default_rng(4)
    s = SpatialWeightMatrix()
    s.calc_weights_knn(coords, k=5, verbose=False)
    s.scale_by_expr(rng.gamma(2.0, size=(8, 30)), reduce="none", verbose=False)
    return s


def dense_W(swm):
    return swm.weights_csr(scaled=True).toarray()  # float64 (swm_scaled is the float32 torch view)


# ---------------------------------------------------------------------------------------------------------------
# precisions
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("standardize", [False, True])
def test_precision_matches_dense_formula(swm, prior, standardize, dense_precision):
    W = dense_W(swm)
    ref = dense_precision(W, prior, RHO[prior], standardize)
    loss = SpatialLoss(prior, swm, rho=RHO[prior], standardize_cov=standardize)
    Q = loss.get_precision(0)
    Qd = Q.toarray() if sp.issparse(Q) else Q
    np.testing.assert_allclose(Qd, ref, rtol=1e-8, atol=1e-10)
    # the classic accessors agree (float32)
    np.testing.assert_allclose(loss.inv_cov.to_dense()[0].double().numpy(), ref, rtol=1e-4, atol=1e-5)
    Qc = swm.get_inv_cov(prior, RHO[prior], standardize=standardize, return_sparse=False)
    np.testing.assert_allclose(Qc.double().numpy(), ref, rtol=1e-4, atol=1e-5)
    if prior != "sma":
        assert loss.inv_cov_2d_sp.is_sparse
        assert sp.issparse(Q)


def test_icar_rho1_standardize_is_normalized_laplacian(swm):
    W = dense_W(swm)
    with pytest.warns(UserWarning, match="singular"):
        loss = SpatialLoss("icar", swm, rho=1, standardize_cov=True)
    L = np.diag(W.sum(1)) - W
    d = 1.0 / (np.sqrt(np.diag(L)) + 1e-8)
    np.testing.assert_allclose(loss.get_precision().toarray(), L * np.outer(d, d), rtol=1e-10)


def test_multi_group_precisions_and_block_diag(coords, swm, dense_precision):
    s2 = SpatialWeightMatrix()
    s2.calc_weights_knn(coords, k=4, verbose=False)
    loss = SpatialLoss("icar", [swm, s2, swm], rho=0.9)
    assert loss.n_precisions == 3
    assert loss.get_precision(0) is loss.get_precision(2)  # computed once per distinct weight matrix
    n = 30
    assert tuple(loss.inv_cov_2d_sp.shape) == (3 * n, 3 * n)
    assert tuple(loss.inv_cov.shape) == (3, n, n)
    rng = np.random.default_rng(0)
    beta = torch.tensor(rng.normal(size=(3, n)))
    refs = [dense_precision(dense_W(s), "icar", 0.9) for s in (swm, s2, swm)]
    conf = np.array([0.5, 1.0, 2.0])
    loss.confidences = torch.tensor(conf)
    expected = sum(c * b @ Q @ b for c, b, Q in zip(conf, beta.numpy(), refs, strict=True)) / beta.numel()
    np.testing.assert_allclose(float(loss.double()(beta)), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        loss(beta[:2])


# ---------------------------------------------------------------------------------------------------------------
# losses: sparse vs dense, normalization, gradients
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["sar", "isar", "car", "icar"])
def test_sparse_and_dense_loss_agree(swm, prior, dense_precision):
    rng = np.random.default_rng(1)
    beta = torch.tensor(rng.normal(size=(4, 30)), dtype=torch.float32)
    ls = SpatialLoss(prior, swm, rho=RHO[prior], use_sparse=True)
    ld = SpatialLoss(prior, swm, rho=RHO[prior], use_sparse=False)
    assert ld.inv_cov_2d_sp is None and ld.inv_cov.layout == torch.strided
    b = beta.double().numpy()
    ref = np.einsum("gi,ij,gj->", b, dense_precision(dense_W(swm), prior, RHO[prior]), b)
    for normalize, denom in ((True, beta.numel()), (False, 1)):
        a = float(ls(beta, normalize=normalize))
        b = float(ld(beta, normalize=normalize))
        np.testing.assert_allclose(a, ref / denom, rtol=1e-4)
        np.testing.assert_allclose(b, ref / denom, rtol=1e-4)
    # the module functions directly, with a (G, n, n) stack and a block-diagonal sparse matrix
    Q = torch.tensor(dense_precision(dense_W(swm), prior, RHO[prior]))
    b64 = beta.double()
    scales = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    stack = Q.expand(4, 30, 30).contiguous()
    blk = torch.block_diag(*[Q] * 4).to_sparse()
    expected = float((scales * torch.einsum("gi,ij,gj->g", b64, Q, b64)).sum() / b64.numel())
    np.testing.assert_allclose(float(quadratic_loss(b64, stack, scales)), expected, rtol=1e-10)
    np.testing.assert_allclose(float(quadratic_loss(b64, stack.to_sparse(), scales)), expected, rtol=1e-10)
    np.testing.assert_allclose(float(sparse_quadratic_loss(b64, blk, scales)), expected, rtol=1e-10)
    np.testing.assert_allclose(
        float(sparse_quadratic_loss(b64, Q.to_sparse(), torch.ones(1), normalize=False)),
        float(torch.einsum("gi,ij,gj->", b64, Q, b64)),
        rtol=1e-10,
    )


def test_sma_ignores_use_sparse_and_is_dense(swm):
    loss = SpatialLoss("sma", swm, rho=0.5, use_sparse=True)
    assert loss.inv_cov_2d_sp is None
    assert isinstance(loss.get_precision(), np.ndarray)


@pytest.mark.parametrize("prior", ["sma", "icar", "sar"])
def test_gradient_matches_finite_differences(swm, prior):
    loss = SpatialLoss(prior, [swm, swm], rho=RHO[prior]).double()
    loss.confidences = torch.tensor([0.3, 1.7])
    beta = torch.randn(2, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: loss(b), (beta,), eps=1e-6, atol=1e-7)
    # and the analytic gradient 2 s_g Q beta_g / numel
    loss(beta).backward()
    Q = loss.get_precision()
    Qd = Q.toarray() if sp.issparse(Q) else Q
    Qd = Qd.astype(np.float32).astype(np.float64)  # buffers are float32
    expected = 2 * np.array([0.3, 1.7])[:, None] * (beta.detach().numpy() @ Qd.T) / beta.numel()
    np.testing.assert_allclose(beta.grad.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_buffers_follow_dtype_and_device(swm):
    loss = SpatialLoss("icar", swm, rho=0.9)
    assert "_inv_cov_sp" in dict(loss.named_buffers())
    assert loss.inv_cov_2d_sp.dtype == torch.float32
    loss = loss.double()
    assert loss.inv_cov_2d_sp.dtype == torch.float64
    assert loss.confidences.dtype == torch.float64
    loss = loss.to("cpu")
    assert loss.inv_cov_2d_sp.device.type == "cpu"
    assert loss.state_dict() == {} or "_inv_cov_sp" not in loss.state_dict()


# ---------------------------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------------------------
def _brute_kl(p):
    p = p + 1e-20
    return stats.entropy(p[:, :, None], p[:, None, :])  # (n, n), normalizes the columns


def test_kl_loss_matches_scipy_and_brute_force(swm):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 30))
    p = torch.softmax(torch.tensor(logits), dim=0)
    kl = _brute_kl(p.numpy())
    np.testing.assert_allclose(kl_loss_scipy(p.numpy()), kl.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(kl_loss(p)), kl.mean(), rtol=1e-8)
    W = dense_W(swm)
    np.testing.assert_allclose(kl_loss_scipy(p.numpy(), W), (kl * W).mean(), rtol=1e-10)
    np.testing.assert_allclose(kl_loss_scipy(p.numpy(), sp.csr_matrix(W)), (kl * W).mean(), rtol=1e-10)
    # torch version: weighted sum over the number of nonzero weights (classic convention)
    expected = (kl * W).sum() / (W != 0).sum()
    for w in (torch.tensor(W), torch.tensor(W).to_sparse(), sp.csr_matrix(W), W):
        np.testing.assert_allclose(float(kl_loss(p, w)), expected, rtol=1e-8)
    # the 'kl' prior of SpatialLoss applies softmax over groups and uses swm_scaled
    np.testing.assert_allclose(float(SpatialLoss("kl", [swm])(torch.tensor(logits))), expected, rtol=1e-6)
    np.testing.assert_allclose(float(SpatialLoss("kl")(torch.tensor(logits))), kl.mean(), rtol=1e-6)


def test_kl_gradient(swm):
    loss = SpatialLoss("kl", swm)
    x = torch.randn(3, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: loss(b), (x,), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# contrastive
# ---------------------------------------------------------------------------------------------------------------
def test_contrastive_matches_definition_with_fixed_seed(swm):
    """Seed given as ``random_state=7`` (a private torch.Generator); the same perms are drawn by hand."""
    loss = ContrastiveSpatialLoss(spatial_weights=swm, rho=0.9, num_perm=4, neg2pos_ratio=0.3, random_state=7)
    rng = np.random.default_rng(9)
    beta = torch.tensor(rng.normal(size=(2, 30)))
    Q = loss.get_precision().toarray()
    Q32 = Q.astype(np.float32).astype(np.float64)
    g = torch.Generator().manual_seed(7)
    perms = [torch.randperm(30, generator=g).numpy() for _ in range(4)]
    b = beta.numpy()

    def L(x):
        return np.einsum("gi,ij,gj->", x, Q32, x) / x.size

    expected = L(b) - 0.3 * np.mean([L(b[:, p]) for p in perms])
    np.testing.assert_allclose(float(loss(beta)), max(expected, -1.0), rtol=1e-5)
    # a second call continues the generator; an explicit generator reproduces the first call
    assert float(loss(beta)) != pytest.approx(float(expected), rel=1e-9)
    np.testing.assert_allclose(float(loss(beta, generator=torch.Generator().manual_seed(7))), expected, rtol=1e-5)
    # lower bound: in units of the normalized loss, times numel when normalize=False
    tight = ContrastiveSpatialLoss(
        spatial_weights=swm, rho=0.9, num_perm=4, neg2pos_ratio=50.0, lower_bound=-0.25, random_state=7
    )
    assert float(tight(beta)) == pytest.approx(-0.25)
    assert float(tight(beta, normalize=False)) == pytest.approx(-0.25 * beta.numel())


def test_contrastive_check_positive_definite(swm):
    n = 30
    ok = ContrastiveSpatialLoss(spatial_weights=swm, neg2pos_ratio=0.0, random_state=0)
    assert ok.check_positive_definite(n_tests=2)
    bad = ContrastiveSpatialLoss(spatial_weights=swm, neg2pos_ratio=5.0, random_state=0)
    # reference: the same permutations, dense eigenvalues
    Q = bad.get_precision().toarray()
    g = torch.Generator().manual_seed(0)
    acc = sum(Q[np.ix_(p, p)] for p in (torch.randperm(n, generator=g).numpy() for _ in range(10)))
    assert np.linalg.eigvalsh(Q - 5.0 / 10 * acc)[0] < -1e-3
    with pytest.warns(UserWarning, match="neg2pos_ratio"):
        assert not bad.check_positive_definite(n_tests=1)


# ---------------------------------------------------------------------------------------------------------------
# confidence and correlation decay
# ---------------------------------------------------------------------------------------------------------------
def test_estimate_confidence(swm):
    rng = np.random.default_rng(6)
    ref = rng.gamma(2.0, size=(20, 3))
    st = rng.gamma(2.0, size=(20, 30))
    loss = SpatialLoss("icar", swm, rho=0.9)
    loss.estimate_confidence(torch.tensor(ref), torch.tensor(st))
    sol = np.linalg.lstsq(ref, st, rcond=None)[0]
    sd = sol.std(axis=1, ddof=1)
    np.testing.assert_allclose(loss.confidences.numpy(), sd / sd.max(), rtol=1e-8)
    beta = torch.tensor(rng.normal(size=(3, 30)))
    Q = loss.get_precision().toarray().astype(np.float32).astype(np.float64)
    expected = sum(c * b @ Q @ b for c, b in zip(sd / sd.max(), beta.numpy(), strict=True)) / 90
    np.testing.assert_allclose(float(loss(beta)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="genes"):
        loss.estimate_confidence(torch.tensor(ref[:5]), torch.tensor(st))
    with pytest.raises(ValueError, match="`method`"):
        loss.estimate_confidence(torch.tensor(ref), torch.tensor(st), method="svr")


def _ref_decay(C, coords, min_k, max_k):
    from scipy.spatial.distance import cdist

    sd = np.sqrt(np.diag(C))
    R = C / np.outer(sd, sd)
    order = np.argsort(cdist(coords, coords), axis=1, kind="stable")
    rows = []
    for k in range(min_k, max_k + 1):
        v = R[np.arange(len(coords)), order[:, k]]
        rows.append([*np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9]), k])
    return np.array(rows)


@pytest.mark.parametrize("prior", ["icar", "sma", "car"])
def test_corr_decay_against_dense_covariance(swm, coords, prior, dense_precision):
    rho = RHO[prior]
    loss = SpatialLoss(prior, swm, rho=rho)
    W = dense_W(swm)
    if prior == "sma":
        A = np.eye(30) + rho * W
        C = A @ A.T
    else:
        C = np.linalg.inv(dense_precision(W, prior, rho))
    df, var = loss.calc_corr_decay_stats(coords, min_k=0, max_k=6, return_var=True)
    assert list(df.columns) == ["Q10", "Q25", "Q50", "Q75", "Q90", "k"]
    np.testing.assert_allclose(df.to_numpy(dtype=float), _ref_decay(C, coords, 0, 6), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        var.to_numpy(dtype=float).ravel(), np.quantile(np.diag(C), [0.1, 0.25, 0.5, 0.75, 0.9]), rtol=1e-6
    )
    df2 = loss.calc_corr_decay_stats(coords, min_k=2, max_k=4)
    np.testing.assert_allclose(df2.to_numpy(dtype=float), _ref_decay(C, coords, 2, 4), rtol=1e-6, atol=1e-8)


def test_corr_decay_errors(swm, coords):
    with pytest.raises(ValueError, match="kl"):
        SpatialLoss("kl", swm).calc_corr_decay_stats(coords)
    loss = SpatialLoss("icar", swm, rho=0.9)
    with pytest.raises(ValueError, match="cov_ind"):
        loss.calc_corr_decay_stats(coords, cov_ind=1)
    with pytest.raises(ValueError, match="spots"):
        loss.calc_corr_decay_stats(coords[:10])
    with pytest.warns(UserWarning, match="singular"):
        singular = SpatialLoss("icar", swm, rho=1)
    with pytest.raises(ValueError, match="rho < 1"):
        singular.calc_corr_decay_stats(coords, max_k=3)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
def test_bad_input(swm):
    with pytest.raises(ValueError, match="Unknown prior"):
        SpatialLoss("gp", swm)
    with pytest.raises(ValueError, match="spatial weight matrix must be supplied"):
        SpatialLoss("icar")
    with pytest.raises(ValueError, match="rho"):
        SpatialLoss("icar", swm, rho=1.5)
    with pytest.raises(TypeError, match="SpatialWeightMatrix"):
        SpatialLoss("icar", [np.eye(3)])
    with pytest.raises(ValueError, match="calc_weights_knn"):
        SpatialLoss("icar", SpatialWeightMatrix())
    loss = SpatialLoss("icar", swm, rho=0.9)
    with pytest.raises(ValueError, match="spots"):
        loss(torch.zeros(2, 29))
    with pytest.raises(ValueError, match="num_group, num_spot"):
        loss(torch.zeros(30))
    with pytest.raises(ValueError, match="index"):
        loss.get_precision(1)
    with pytest.raises(ValueError, match="num_perm"):
        ContrastiveSpatialLoss(spatial_weights=swm, num_perm=0)


# ---------------------------------------------------------------------------------------------------------------
# issue 11: defined results on constant data, true hints, the classic argument names
# ---------------------------------------------------------------------------------------------------------------
def test_estimate_confidence_constant_data_is_defined(swm):
    """Classic smoother divided 0 by 0 here (NaN confidences, then an obscure error)."""
    rng = np.random.default_rng(7)
    ref = torch.tensor(rng.gamma(2.0, size=(20, 3)))
    st = ref @ torch.tensor([[1.0], [2.0], [0.5]], dtype=ref.dtype).repeat(1, 30)  # every spot the same mixture
    loss = SpatialLoss("icar", swm, rho=0.9)
    with pytest.warns(UserWarning, match="set to 1"):
        loss.estimate_confidence(ref, st)
    np.testing.assert_array_equal(loss.confidences.numpy(), np.ones(3))
    beta = torch.tensor(rng.normal(size=(3, 30)))
    Q = loss.get_precision().toarray().astype(np.float32).astype(np.float64)
    expected = sum(b @ Q @ b for b in beta.numpy()) / 90
    np.testing.assert_allclose(float(loss(beta)), expected, rtol=1e-5)
    bad = st.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="st_exp"):
        loss.estimate_confidence(ref, bad)


def test_corr_decay_stats_not_pd_hint_is_true(swm, coords, dense_precision):
    import re

    loss = SpatialLoss("car", swm, rho=0.9)  # above 1 / lambda_max(W)
    with pytest.raises(ValueError, match="positive definite exactly for 0 <= rho <") as info:
        loss.calc_corr_decay_stats(coords, max_k=3)
    example = float(re.search(r"e\.g\. rho=([0-9]+\.?[0-9]*)", str(info.value)).group(1))
    W = dense_W(swm)
    assert np.linalg.eigvalsh(dense_precision(W, "car", 0.9)).min() < 0
    assert np.linalg.eigvalsh(dense_precision(W, "car", example)).min() > 0
    df = SpatialLoss("car", swm, rho=example).calc_corr_decay_stats(coords, max_k=3)
    assert np.isfinite(df.to_numpy(dtype=float)).all()
