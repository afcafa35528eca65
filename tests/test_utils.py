"""Classic smoother.utils decay helpers against brute-force references on small data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors

from smoother.utils import (
    estimate_decay_rate,
    get_neighbor_quantile_value_by_k,
    normalize_minmax,
    quantile_feature_similarity_decay,
    quantile_feature_similarity_neighbor,
)

QS = [0.1, 0.25, 0.5, 0.75, 0.9]
COLS = ["Q10", "Q25", "Q50", "Q75", "Q90"]


@pytest.fixture
def data():
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 10, size=(150, 2))
    feats = np.vstack([np.sin(coords[:, 0]), np.cos(coords[:, 1]), rng.normal(size=(8, 150))])  # 10 x 150
    return feats, coords


def _nbrs(coords, k):
    return NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_get_neighbor_quantile_value_by_k_brute_force(data, rng):
    _, coords = data
    M = rng.normal(size=(150, 150))
    nb = _nbrs(coords, 8)
    df = get_neighbor_quantile_value_by_k(M, coords, min_k=2, max_k=8)
    assert list(df.columns) == [*COLS, "k"] and df["k"].tolist() == list(range(2, 9))
    for r, k in enumerate(range(2, 9)):
        vals = [M[i, nb[i, k]] for i in range(150)]
        np.testing.assert_allclose(df.loc[r, COLS].to_numpy(dtype=float), np.quantile(vals, QS))
    # torch and sparse inputs give the same table
    np.testing.assert_allclose(get_neighbor_quantile_value_by_k(torch.tensor(M), coords, 2, 8)[COLS], df[COLS])
    np.testing.assert_allclose(get_neighbor_quantile_value_by_k(sp.csr_matrix(M), coords, 2, 8)[COLS], df[COLS])
    # torch sparse (COO and CSR) is read entry by entry, as scipy CSR, never densified
    with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        sparse_inputs = (torch.tensor(M).to_sparse(), torch.tensor(M).to_sparse_csr())
    for Mt in sparse_inputs:
        np.testing.assert_allclose(get_neighbor_quantile_value_by_k(Mt, coords, 2, 8)[COLS], df[COLS])
    with pytest.raises(ValueError, match="shape"):
        get_neighbor_quantile_value_by_k(M[:10, :10], coords)


@pytest.mark.parametrize("topk", [False, True])
def test_quantile_feature_similarity_decay_brute_force(data, topk):
    feats, coords = data
    nb = _nbrs(coords, 6)
    df = quantile_feature_similarity_decay(torch.tensor(feats), coords, max_k=6, topk=topk, reduce="none")
    X = feats.T
    for k in range(7):
        cols = range(k + 1) if topk else [k]
        vals = [_cos(X[i], X[nb[i, c]]) for i in range(150) for c in cols]
        np.testing.assert_allclose(df.loc[k, COLS].to_numpy(dtype=float), np.quantile(vals, QS), atol=1e-12)


def test_quantile_feature_similarity_decay_pca(data):
    feats, coords = data
    df = quantile_feature_similarity_decay(feats, coords, max_k=4, reduce="pca", dim=3)
    # reference: standardize genes, top-3 principal component scores, cosine between neighbours
    Z = feats.T - feats.T.mean(0)
    Z = Z / feats.T.std(0, ddof=1)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    P = U[:, :3] * S[:3]
    nb = _nbrs(coords, 4)
    vals = [_cos(P[i], P[nb[i, 3]]) for i in range(150)]
    np.testing.assert_allclose(df.loc[3, COLS].to_numpy(dtype=float), np.quantile(vals, QS), atol=1e-10)


def test_quantile_feature_similarity_neighbor(data):
    feats, coords = data
    df = quantile_feature_similarity_neighbor(feats, coords, k=3, reduce="none", n_null=4)
    assert list(df.columns) == ["Quantile", "Data", "CumulativeDensity"] and len(df) == 202
    obs = df[df["Data"] == "Observed"]["CumulativeDensity"].to_numpy()
    nb = _nbrs(coords, 3)
    vals = [_cos(feats[:, i], feats[:, nb[i, c]]) for i in range(150) for c in (1, 2, 3)]
    np.testing.assert_allclose(obs, np.quantile(vals, np.linspace(0, 1, 101)), atol=1e-12)
    null = df[df["Data"] == "Shuffled"]["CumulativeDensity"].to_numpy()
    assert np.all(np.diff(null) >= 0) and np.median(obs) > np.median(null)


def test_normalize_minmax():
    x = np.array([[1.0, -2.0], [3.0, 2.0]])
    out, scale = normalize_minmax(x, return_scale=True)
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0], [0.5, 1.0]])
    assert float(scale) == 4.0
    np.testing.assert_allclose(normalize_minmax(x, min_zero=False).numpy(), x / 3.0)


def test_estimate_decay_rate():
    x = np.arange(0, 40.0)
    y = 0.9 * np.exp(-0.15 * x) + 0.05
    assert estimate_decay_rate(x, y) == pytest.approx(0.15, rel=1e-6)
    np.testing.assert_allclose(estimate_decay_rate(x, y, return_all_params=True), [0.9, 0.15, 0.05], rtol=1e-6)


@pytest.mark.parametrize("min_zero", [True, False])
def test_normalize_minmax_constant_data_is_defined(min_zero):
    """Classic smoother divided by zero here (all-NaN output)."""
    import torch

    x = np.full((4, 3), 2.5) if min_zero else np.zeros((4, 3))
    out, scale = normalize_minmax(x, min_zero=min_zero, return_scale=True)
    np.testing.assert_array_equal(out.numpy(), np.zeros((4, 3)))
    assert float(scale) == 1.0
    shift = torch.as_tensor(x).min(dim=0).values if min_zero else 0.0
    np.testing.assert_allclose((out * scale + shift).numpy(), x)  # the transform is still invertible
    # one constant column among varying ones keeps the classic result (that column is 0)
    y = np.column_stack([np.arange(4.0), np.full(4, 7.0)])
    np.testing.assert_allclose(normalize_minmax(y).numpy(), np.column_stack([np.arange(4.0) / 3, np.zeros(4)]))


def test_normalize_minmax_bad_input():
    from tests.contract import check_rejects

    check_rejects(normalize_minmax, np.array([[1.0, np.nan]]), error=ValueError, names="`x`")
    check_rejects(normalize_minmax, np.zeros((0, 2)), error=ValueError, names="`x`")
    check_rejects(normalize_minmax, np.array([["a", "b"]]), error=TypeError, names="`x`")
    check_rejects(normalize_minmax, np.ones((2, 2)), min_zero="yes", error=TypeError, names="min_zero")
