"""The input contract (issue 11) of the classic ``smoother.losses`` and ``smoother.utils`` (smoother-omics 1.1.0 API).

Rejected input: the right error type (``TypeError`` for a type, ``ValueError`` for a value; an unknown prior is
both ``ValueError`` and ``NotImplementedError``), a message naming the classic argument, raised before any work
(:func:`tests.contract.check_rejects`). Awkward but valid input (constant data, int/bool/float32 arrays, duplicate
coordinates, 2 spots): a defined result equal to an independent reference.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors
from tests.contract import check_rejects

from smoother.losses import ContrastiveSpatialLoss, SpatialLoss, quadratic_loss, sparse_quadratic_loss
from smoother.utils import (
    estimate_decay_rate,
    get_neighbor_quantile_value_by_k,
    normalize_minmax,
    quantile_feature_similarity_decay,
    quantile_feature_similarity_neighbor,
)
from smoother.weights import SpatialWeightMatrix

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
QS = [0.1, 0.25, 0.5, 0.75, 0.9]

NOT_A_NUMBER = [("0.9", TypeError), (True, TypeError), (None, TypeError), ([0.5], TypeError)]
NON_FINITE = [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError)]
BAD_RHO = [*NOT_A_NUMBER, *NON_FINITE, (-0.1, ValueError), (1.5, ValueError)]
BAD_COUNT = [("3", TypeError), (True, TypeError), (2.5, TypeError), (math.nan, TypeError), (0, ValueError)]
BAD_BOOL = [("yes", TypeError), (1, TypeError), (None, TypeError)]


@pytest.fixture(scope="module")
def coords():
    rng = np.random.default_rng(3)
    xx, yy = np.meshgrid(np.arange(6.0), np.arange(5.0))
    return np.column_stack([xx.ravel(), yy.ravel()]) + rng.normal(scale=0.03, size=(30, 2))


@pytest.fixture(scope="module")
def swm(coords):
    s = SpatialWeightMatrix()
    s.calc_weights_knn(coords, k=5, verbose=False)
    return s


@pytest.fixture(scope="module")
def loss(swm):
    return SpatialLoss("icar", swm, rho=0.9)


# ----------------------------------------------------------------------------------------------- SpatialLoss
@pytest.mark.parametrize(("value", "error"), BAD_RHO)
def test_spatial_loss_rho(swm, value, error):
    check_rejects(SpatialLoss, "icar", swm, rho=value, error=error, names="rho")


@pytest.mark.parametrize("prior", ["kl", "sma", "car"])
def test_spatial_loss_rho_checked_for_every_prior(swm, prior):
    check_rejects(SpatialLoss, prior, swm, rho=math.nan, error=ValueError, names="rho")


@pytest.mark.parametrize("arg", ["use_sparse", "standardize_cov"])
@pytest.mark.parametrize(("value", "error"), BAD_BOOL)
def test_spatial_loss_bools(swm, arg, value, error):
    check_rejects(SpatialLoss, "icar", swm, rho=0.9, **{arg: value}, error=error, names=arg)


@pytest.mark.parametrize(("prior", "error"), [("gp", ValueError), ("gp", NotImplementedError), (3, TypeError)])
def test_spatial_loss_prior(swm, prior, error):
    check_rejects(SpatialLoss, prior, swm, error=error, names="prior")


def test_spatial_loss_weights(swm):
    check_rejects(SpatialLoss, "icar", None, error=ValueError, names="spatial_weights")
    check_rejects(SpatialLoss, "icar", [np.eye(3)], error=TypeError, names="spatial_weights")
    check_rejects(SpatialLoss, "icar", [], error=TypeError, names="spatial_weights")
    check_rejects(SpatialLoss, "icar", SpatialWeightMatrix(), error=ValueError, names="calc_weights_knn")


def test_forward_and_get_precision(loss):
    check_rejects(loss, torch.zeros(2, 30), normalize="yes", error=TypeError, names="normalize")
    check_rejects(loss, torch.zeros(2, 29), error=ValueError, names="spots")
    check_rejects(loss, torch.zeros(30), error=ValueError, names="num_group, num_spot")
    check_rejects(loss.get_precision, 1, error=ValueError, names="index")
    check_rejects(loss.get_precision, "0", error=TypeError, names="index")
    check_rejects(loss.get_precision, 0.0, error=TypeError, names="index")


@pytest.mark.parametrize("func", [quadratic_loss, sparse_quadratic_loss])
def test_quadratic_losses_normalize(loss, func):
    check_rejects(func, torch.zeros(2, 30), loss.inv_cov_2d_sp, 1.0, normalize="no", error=TypeError, names="normalize")


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"min_k": 1.5}, TypeError, "min_k"),
        ({"min_k": -1}, ValueError, "min_k"),
        ({"max_k": math.nan}, TypeError, "max_k"),
        ({"max_k": "5"}, TypeError, "max_k"),
        ({"max_k": 30}, ValueError, "max_k"),
        ({"min_k": 4, "max_k": 2}, ValueError, "min_k"),
        ({"cov_ind": 1}, ValueError, "cov_ind"),
        ({"cov_ind": True}, TypeError, "cov_ind"),
        ({"return_var": "yes"}, TypeError, "return_var"),
    ],
)
def test_calc_corr_decay_stats_arguments(loss, coords, kw, error, names):
    check_rejects(loss.calc_corr_decay_stats, coords, **kw, error=error, names=names)


def test_calc_corr_decay_stats_coords(loss, coords):
    bad = coords.copy()
    bad[3, 0] = math.nan
    check_rejects(loss.calc_corr_decay_stats, bad, max_k=3, error=ValueError, names="coords")
    check_rejects(loss.calc_corr_decay_stats, coords[:, :1], max_k=3, error=ValueError, names="coords")
    check_rejects(loss.calc_corr_decay_stats, "here", max_k=3, error=TypeError, names="coords")


def test_calc_corr_decay_stats_duplicate_coordinates(swm, coords, dense_precision):
    xy = coords.copy()
    xy[1] = xy[0]
    loss = SpatialLoss("icar", swm, rho=0.9)
    df = loss.calc_corr_decay_stats(xy, max_k=4)
    C = np.linalg.inv(dense_precision(swm.weights_csr(scaled=True).toarray(), "icar", 0.9))
    d = np.sqrt(np.diag(C))
    R = C / np.outer(d, d)
    nbrs = NearestNeighbors(n_neighbors=5).fit(xy).kneighbors(xy, return_distance=False)
    ref = np.quantile(R[np.arange(30)[:, None], nbrs], QS, axis=0).T
    np.testing.assert_allclose(df[["Q10", "Q25", "Q50", "Q75", "Q90"]].to_numpy(), ref, atol=1e-8)


# --------------------------------------------------------------------------------------- estimate_confidence
def test_estimate_confidence_arguments(loss):
    rng = np.random.default_rng(1)
    ref, st_exp = rng.gamma(2.0, size=(10, 3)), rng.gamma(2.0, size=(10, 30))
    check_rejects(loss.estimate_confidence, ref, st_exp, method="svr", error=ValueError, names="method")
    check_rejects(loss.estimate_confidence, ref, st_exp, method=1, error=TypeError, names="method")
    for name, bad in (("ref_exp", ref.copy()), ("st_exp", st_exp.copy())):
        bad[0, 0] = math.nan
        args = (bad, st_exp) if name == "ref_exp" else (ref, bad)
        check_rejects(loss.estimate_confidence, *args, error=ValueError, names=name)
    check_rejects(loss.estimate_confidence, ref[:5], st_exp, error=ValueError, names="genes")
    check_rejects(loss.estimate_confidence, ref, st_exp[:, :20], error=ValueError, names="spots")
    check_rejects(loss.estimate_confidence, ref.astype(complex), st_exp, error=TypeError, names="ref_exp")


@pytest.mark.parametrize("dtype", [np.int64, np.float32, bool])
def test_estimate_confidence_integer_float32_bool(swm, dtype):
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 5, size=(12, 3)).astype(dtype)
    st_exp = rng.integers(0, 9, size=(12, 30)).astype(dtype)
    loss = SpatialLoss("icar", swm, rho=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss.estimate_confidence(ref, st_exp)
    sol = np.linalg.lstsq(ref.astype(np.float64), st_exp.astype(np.float64), rcond=None)[0]
    sd = sol.std(axis=1, ddof=1)
    expected = sd / sd.max() if sd.max() > 1e-6 else np.ones(3)
    np.testing.assert_allclose(loss.confidences.numpy(), expected, rtol=1e-3, atol=1e-5)


def test_estimate_confidence_one_spot_is_defined():
    s = SpatialWeightMatrix()
    s.calc_weights_knn(np.array([[0.0, 0.0], [1.0, 0.0]]), k=1, verbose=False)
    loss = SpatialLoss("car", s, rho=0.5)
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.warns(UserWarning, match="set to 1"):
        loss.estimate_confidence(ref, ref @ np.array([[1.0, 1.0], [2.0, 2.0]]))  # 2 identical spots
    np.testing.assert_array_equal(loss.confidences.numpy(), [1.0, 1.0])


# ------------------------------------------------------------------------------------ ContrastiveSpatialLoss
@pytest.mark.parametrize(("value", "error"), BAD_COUNT)
def test_contrastive_num_perm(swm, value, error):
    check_rejects(ContrastiveSpatialLoss, spatial_weights=swm, num_perm=value, error=error, names="num_perm")


@pytest.mark.parametrize(("value", "error"), [*NOT_A_NUMBER, *NON_FINITE, (-0.5, ValueError)])
def test_contrastive_neg2pos_ratio(swm, value, error):
    check_rejects(ContrastiveSpatialLoss, spatial_weights=swm, neg2pos_ratio=value, error=error, names="neg2pos_ratio")


@pytest.mark.parametrize(("value", "error"), [*NOT_A_NUMBER, *NON_FINITE])
def test_contrastive_lower_bound(swm, value, error):
    check_rejects(ContrastiveSpatialLoss, spatial_weights=swm, lower_bound=value, error=error, names="lower_bound")


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"check_positive_definite": "yes"}, TypeError, "check_positive_definite"),
        ({"random_state": -1}, ValueError, "random_state"),
        ({"random_state": 1.5}, TypeError, "random_state"),
        ({"random_state": "0"}, TypeError, "random_state"),
        ({"rho": math.nan}, ValueError, "rho"),
        ({"prior": "gp"}, NotImplementedError, "prior"),
    ],
)
def test_contrastive_other_arguments(swm, kw, error, names):
    check_rejects(ContrastiveSpatialLoss, spatial_weights=swm, **kw, error=error, names=names)


def test_contrastive_forward_and_check(swm):
    c = ContrastiveSpatialLoss(spatial_weights=swm, random_state=0)
    check_rejects(c, torch.zeros(2, 30), generator=0, error=TypeError, names="generator")
    check_rejects(c, torch.zeros(2, 30), normalize=None, error=TypeError, names="normalize")
    check_rejects(c.check_positive_definite, 0, error=ValueError, names="n_tests")
    check_rejects(c.check_positive_definite, 1.0, error=TypeError, names="n_tests")


@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0.0 <= x <= 1.0),
        st.text(max_size=3),
        st.booleans(),
        st.none(),
    )
)
@HYP
def test_any_bad_rho_is_rejected(swm, value):
    error = TypeError if not isinstance(value, float) else ValueError
    check_rejects(SpatialLoss, "car", swm, rho=value, error=error, names="rho")
    check_rejects(ContrastiveSpatialLoss, spatial_weights=swm, rho=value, error=error, names="rho")


# --------------------------------------------------------------------------------------------------- utils
def test_normalize_minmax_arguments():
    check_rejects(normalize_minmax, np.array([[1.0, math.inf]]), error=ValueError, names="`x`")
    check_rejects(normalize_minmax, torch.tensor([[1.0, math.nan]]), error=ValueError, names="`x`")
    check_rejects(normalize_minmax, np.zeros((0, 3)), error=ValueError, names="`x`")
    check_rejects(normalize_minmax, np.ones((2, 2)), return_scale=1, error=TypeError, names="return_scale")
    check_rejects(normalize_minmax, np.ones((2, 2)), min_zero=None, error=TypeError, names="min_zero")


@given(
    x=st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=2), min_size=1, max_size=6).map(
        np.array
    ),
    min_zero=st.booleans(),
)
@HYP
def test_normalize_minmax_always_defined_and_invertible(x, min_zero):
    out, scale = normalize_minmax(x, min_zero=min_zero, return_scale=True)
    out = out.numpy()
    assert np.isfinite(out).all() and float(scale) > 0
    assert np.abs(out).max() <= 1 + 1e-12
    shift = x.min(axis=0) if min_zero else 0.0
    np.testing.assert_allclose(out * float(scale) + shift, x, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(x).max()))


@pytest.mark.parametrize("dtype", [np.int64, np.float32, bool])
def test_normalize_minmax_dtypes(dtype):
    x = np.array([[0, 1], [1, 1], [1, 0]]).astype(dtype)
    expected = x.astype(np.float64) - x.astype(np.float64).min(axis=0)
    np.testing.assert_allclose(normalize_minmax(x).numpy(), expected / np.abs(expected).max())


def test_estimate_decay_rate_arguments():
    x = np.arange(10.0)
    check_rejects(estimate_decay_rate, x, x[:5], error=ValueError, names="`x` and `y`")
    check_rejects(estimate_decay_rate, x, "y", error=TypeError, names="`y`")
    check_rejects(estimate_decay_rate, x, x, return_all_params="yes", error=TypeError, names="return_all_params")
    with pytest.warns(UserWarning, match="does not decay"):
        estimate_decay_rate(np.arange(1.0, 15), 0.5 - 0.4 * np.exp(-0.3 * np.arange(1.0, 15)))


@pytest.fixture(scope="module")
def features(coords):
    rng = np.random.default_rng(5)
    return rng.normal(size=(8, 30))


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"max_k": math.nan}, TypeError, "max_k"),
        ({"max_k": -1}, ValueError, "max_k"),
        ({"max_k": 30}, ValueError, "max_k"),
        ({"topk": "yes"}, TypeError, "topk"),
        ({"reduce": "umap"}, ValueError, "reduce"),
        ({"reduce": None}, TypeError, "reduce"),
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": 2.0}, TypeError, "dim"),
    ],
)
def test_similarity_decay_classic_arguments(features, coords, kw, error, names):
    check_rejects(quantile_feature_similarity_decay, features, coords, **kw, error=error, names=names)


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"k": 0}, ValueError, "k"),
        ({"k": "6"}, TypeError, "k"),
        ({"n_null": 0}, ValueError, "n_null"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 0.5}, TypeError, "seed"),
        ({"dim": True}, TypeError, "dim"),
    ],
)
def test_similarity_neighbor_classic_arguments(features, coords, kw, error, names):
    kw = {"k": 4, **kw}
    check_rejects(quantile_feature_similarity_neighbor, features, coords, **kw, error=error, names=names)


def test_classic_similarity_non_finite_features(features, coords):
    bad = features.copy()
    bad[2, 7] = math.nan
    check_rejects(quantile_feature_similarity_decay, bad, coords, max_k=5, error=ValueError, names="features")
    check_rejects(quantile_feature_similarity_neighbor, bad, coords, 4, error=ValueError, names="features")
    check_rejects(quantile_feature_similarity_decay, features[:, :20], coords, error=ValueError, names="features")


def test_get_neighbor_quantile_value_by_k_arguments(coords):
    m = np.eye(30)
    check_rejects(get_neighbor_quantile_value_by_k, m, coords, max_k=1.5, error=TypeError, names="max_k")
    check_rejects(get_neighbor_quantile_value_by_k, m, coords, max_k=30, error=ValueError, names="max_k")
    check_rejects(get_neighbor_quantile_value_by_k, m[:5], coords, error=ValueError, names="sq_mat")
    check_rejects(get_neighbor_quantile_value_by_k, "m", coords, error=TypeError, names="sq_mat")


def test_estimate_confidence_non_numeric(loss):
    ref = np.array([["a"] * 3] * 10)
    check_rejects(loss.estimate_confidence, ref, np.ones((10, 30)), error=TypeError, names="ref_exp")
