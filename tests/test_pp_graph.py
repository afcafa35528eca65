"""sm.pp.spatial_graph and the sm.pp.scale_by_* rescalings."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import smoother as sm
from smoother._core import knn_graph


@pytest.fixture
def adata(grid_coords, rng):
    a = ad.AnnData(rng.normal(size=(grid_coords.shape[0], 8)).astype(np.float32))
    a.obsm["spatial"] = grid_coords
    return a


def test_spatial_graph_writes_squidpy_keys(adata, grid_coords):
    sm.pp.spatial_graph(adata, n_neighs=4)
    W, D = knn_graph(grid_coords, 4, symmetrize="mutual")
    assert (adata.obsp["spatial_connectivities"] != W).nnz == 0
    assert (adata.obsp["spatial_distances"] != D).nnz == 0
    nb = adata.uns["spatial_neighbors"]
    assert nb["connectivities_key"] == "spatial_connectivities"
    assert nb["distances_key"] == "spatial_distances"
    assert nb["params"]["n_neighs"] == 4 and nb["params"]["radius"] is None
    # interior spots of a square grid have exactly 4 mutual neighbours at distance 1
    deg = np.asarray(adata.obsp["spatial_connectivities"].sum(1)).ravel()
    assert deg.max() == 4
    Dc = adata.obsp["spatial_distances"].tocoo()
    np.testing.assert_allclose(Dc.data, np.linalg.norm(grid_coords[Dc.row] - grid_coords[Dc.col], axis=1))


def test_spatial_graph_radius_and_copy(adata):
    b = sm.pp.spatial_graph(adata, method="radius", radius=1.5, bandwidth=1.0, key_added="rad", copy=True)
    assert "rad_connectivities" not in adata.obsp and "rad_connectivities" in b.obsp
    W = b.obsp["rad_connectivities"]
    vals = np.unique(np.round(W.data, 6))
    np.testing.assert_allclose(vals, np.round(np.exp(-np.array([2.0, 1.0]) / 2.0), 6))  # d = sqrt2, 1
    with pytest.raises(ValueError, match="radius"):
        sm.pp.spatial_graph(adata, method="radius")
    with pytest.raises(ValueError, match="method"):
        sm.pp.spatial_graph(adata, method="delaunay")


def test_scale_by_identity_cuts_boundary_edges(adata, grid_coords):
    sm.pp.spatial_graph(adata, n_neighs=4)
    adata.obs["zone"] = pd.Categorical(np.where(grid_coords[:, 0] < 6, "a", "b"))
    W0 = adata.obsp["spatial_connectivities"].copy()
    sm.pp.scale_by_identity(adata, "zone", boundary_connectivity=0.25)
    assert (adata.obsp["spatial_connectivities"] != W0).nnz == 0  # input graph untouched
    Ws = adata.obsp["smoother_connectivities"].tocoo()
    z = adata.obs["zone"].to_numpy()
    cross = z[Ws.row] != z[Ws.col]
    assert cross.any() and np.allclose(Ws.data[cross], 0.25) and np.allclose(Ws.data[~cross], 1.0)
    sm.tl.smooth(adata, connectivity_key="smoother_connectivities")
    with pytest.raises(KeyError, match="obs"):
        sm.pp.scale_by_identity(adata, "nope")


def test_scale_by_expr_weakens_edges_between_different_spots(grid_coords, rng):
    zone = grid_coords[:, 0] < 6
    X = np.where(zone[:, None], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]) + rng.normal(scale=0.1, size=(len(zone), 3))
    a = ad.AnnData(X.astype(np.float32))
    a.obsm["spatial"] = grid_coords
    sm.pp.spatial_graph(a, n_neighs=4)
    sm.pp.scale_by_expr(a, n_pcs=None, metric="cosine")
    W = a.obsp["smoother_connectivities"].tocoo()
    cross = zone[W.row] != zone[W.col]
    assert W.data[cross].max() < 0.1 < W.data[~cross].min()
    sm.pp.scale_by_expr(a, n_pcs=2, metric="euclidean", key_added="eu")
    We = a.obsp["eu_connectivities"].tocoo()
    assert We.data[zone[We.row] != zone[We.col]].max() < We.data[zone[We.row] == zone[We.col]].min()
    with pytest.raises(KeyError, match="spatial_graph"):
        sm.pp.scale_by_expr(ad.AnnData(X.astype(np.float32)))


def test_scale_by_histology_reads_visium_layout(grid_coords):
    # synthetic "H&E": left half dark, right half bright, spots at 10 px spacing in full resolution
    full = grid_coords * 10.0 + 20.0
    scalef = 0.5
    img = np.zeros((100, 100, 3))
    img[:, 53:] = 1.0  # the boundary falls between two columns of spots (hires x = 50 and 55)
    a = ad.AnnData(np.zeros((len(full), 2), dtype=np.float32))
    a.obsm["spatial"] = full
    a.uns["spatial"] = {
        "lib": {"images": {"hires": img}, "scalefactors": {"spot_diameter_fullres": 6.0, "tissue_hires_scalef": scalef}}
    }
    sm.pp.spatial_graph(a, n_neighs=4)
    sm.pp.scale_by_histology(a)
    W = a.obsp["smoother_connectivities"].tocoo()
    bright = full[:, 0] * scalef >= 53
    cross = bright[W.row] != bright[W.col]
    assert cross.any() and W.data[cross].max() < 0.05 and W.data[~cross].min() > 0.5
    del a.uns["spatial"]
    with pytest.raises(KeyError, match="read_visium"):
        sm.pp.scale_by_histology(a)


def test_scale_by_expr_large_sparse_uses_truncated_svd_without_densifying(monkeypatch):
    """Above the size limit a sparse X goes through TruncatedSVD: never densified, same edges, similar weights."""
    import scipy.sparse as sp

    import smoother as sm
    import smoother.pp._graph as graph_mod

    adata = sm.datasets.simulate_field(n_spots=400, layout="hex", pattern="zones", n_genes=40, noise="poisson", seed=1)
    adata.X = sp.csr_matrix(adata.X)
    sm.pp.spatial_graph(adata)
    dense_path = sm.pp.scale_by_expr(adata, n_pcs=5, copy=True).obsp["smoother_connectivities"]

    def no_densify(self, *args, **kwargs):
        raise AssertionError("sparse X was densified")

    monkeypatch.setattr(graph_mod, "_DENSE_PCA_MAX_ENTRIES", 0)
    monkeypatch.setattr(sp.csr_matrix, "toarray", no_densify)
    sparse_path = sm.pp.scale_by_expr(adata, n_pcs=5, copy=True).obsp["smoother_connectivities"]
    monkeypatch.undo()
    W = adata.obsp["spatial_connectivities"]
    assert (sparse_path != 0).sum() <= W.nnz + adata.n_obs
    a = np.asarray(dense_path[W.nonzero()]).ravel()
    b = np.asarray(sparse_path[W.nonzero()]).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5


# ---------------------------------------------------------------------------------------------------------------
# issue 11: no silent graph damage, defined behaviour on degenerate input
# ---------------------------------------------------------------------------------------------------------------
def _brute_cosine(X, r, c):
    """Cosine of rows, max(0, .), and 1 where a row is zero (the documented rule), one pair at a time."""
    out = []
    for i, j in zip(r, c, strict=True):
        ni, nj = np.linalg.norm(X[i]), np.linalg.norm(X[j])
        out.append(1.0 if ni == 0 or nj == 0 else max(0.0, float(X[i] @ X[j]) / (ni * nj)))
    return np.array(out)


@pytest.mark.parametrize("sparse", [False, True])
def test_scale_by_expr_cosine_zero_rows_keep_their_edges(grid_coords, rng, sparse):
    import scipy.sparse as sp

    X = rng.poisson(2.0, size=(len(grid_coords), 6)).astype(np.float32)
    empty = rng.choice(len(grid_coords), 15, replace=False)
    X[empty] = 0.0
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X)
    a.obsm["spatial"] = grid_coords
    sm.pp.spatial_graph(a, n_neighs=4)
    W = a.obsp["spatial_connectivities"].tocoo()
    with pytest.warns(UserWarning, match=r"15 spot\(s\) have a zero expression vector") as rec:
        sm.pp.scale_by_expr(a, n_pcs=None)
    assert not any("lost every edge" in str(w.message) for w in rec)
    Ws = a.obsp["smoother_connectivities"]
    np.testing.assert_allclose(np.asarray(Ws[W.row, W.col]).ravel(), _brute_cosine(X.astype(float), W.row, W.col))
    assert a.uns["smoother_neighbors"]["n_zero_spots"] == 15
    assert np.isfinite(Ws.data).all()


@pytest.mark.parametrize("value", [0.0, 3.0])
@pytest.mark.parametrize("n_pcs", [None, 2])
def test_scale_by_expr_constant_expression_keeps_the_graph(grid_coords, value, n_pcs):
    a = ad.AnnData(np.full((len(grid_coords), 5), value, dtype=np.float32))
    a.obsm["spatial"] = grid_coords
    sm.pp.spatial_graph(a, n_neighs=4)
    if value == 0.0 or n_pcs is not None:  # a zero vector (after centring for PCA): cosine undefined, set to 1
        with pytest.warns(UserWarning, match=rf"{len(grid_coords)} spot\(s\) have a zero expression vector"):
            sm.pp.scale_by_expr(a, n_pcs=n_pcs)
    else:  # equal non-zero profiles: cosine 1
        sm.pp.scale_by_expr(a, n_pcs=n_pcs)
    W0, Ws = a.obsp["spatial_connectivities"], a.obsp["smoother_connectivities"]
    np.testing.assert_allclose((W0 - Ws).toarray(), 0.0, atol=1e-12)  # identical spots keep every edge (was: none)
    assert Ws.nnz == W0.nnz
    # euclidean: distance 0 everywhere, similarity 1, no warning needed
    sm.pp.scale_by_expr(a, n_pcs=n_pcs, metric="euclidean", key_added="eu")
    np.testing.assert_allclose((W0 - a.obsp["eu_connectivities"]).toarray(), 0.0, atol=1e-12)


def test_scale_by_expr_warns_when_spots_lose_every_edge(grid_coords):
    # a checkerboard of opposite profiles: every edge of the square grid joins anti-parallel vectors (cosine -1)
    parity = (grid_coords.sum(1) % 2).astype(bool)
    X = np.where(parity[:, None], [1.0, -1.0], [-1.0, 1.0]).astype(np.float32)
    a = ad.AnnData(X)
    a.obsm["spatial"] = grid_coords
    sm.pp.spatial_graph(a, n_neighs=4)
    W = a.obsp["spatial_connectivities"].toarray()
    same = parity[:, None] == parity[None, :]
    lost = ~((W > 0) & same & ~np.eye(len(W), dtype=bool)).any(axis=1)  # brute force: no same-parity neighbour
    assert lost.sum() > 100
    with pytest.warns(UserWarning, match=rf"{lost.sum()} spot\(s\) lost every edge"):
        sm.pp.scale_by_expr(a, n_pcs=None)
    Ws = a.obsp["smoother_connectivities"].toarray()
    np.testing.assert_array_equal(np.diag(Ws)[lost], 1.0)  # a self edge, nothing else
    assert (Ws[lost] > 0).sum() == lost.sum()
    assert a.uns["smoother_neighbors"]["n_isolated"] == lost.sum()


def test_scale_by_expr_sparse_no_pca_equals_dense(grid_coords, rng):
    import scipy.sparse as sp

    X = rng.poisson(1.0, size=(len(grid_coords), 30)).astype(np.float32)
    a = ad.AnnData(X)
    a.obsm["spatial"] = grid_coords
    sm.pp.spatial_graph(a, n_neighs=4)
    b = a.copy()
    b.X = sp.csc_matrix(X)  # any sparse format
    for metric in ("cosine", "euclidean"):
        dense = sm.pp.scale_by_expr(a, n_pcs=None, metric=metric, copy=True).obsp["smoother_connectivities"]
        sparse = sm.pp.scale_by_expr(b, n_pcs=None, metric=metric, copy=True).obsp["smoother_connectivities"]
        np.testing.assert_allclose(dense.toarray(), sparse.toarray(), rtol=1e-12, atol=1e-15)


def test_rerun_replaces_the_uns_entry(adata):
    sm.pp.spatial_graph(adata, n_neighs=4)
    sm.pp.scale_by_expr(adata, metric="euclidean", bandwidth=2.0)
    assert adata.uns["smoother_neighbors"]["params"]["bandwidth"] == 2.0
    sm.pp.scale_by_expr(adata, metric="cosine")
    entry = adata.uns["smoother_neighbors"]
    assert entry["params"]["bandwidth"] is None and entry["params"]["metric"] == "cosine"
    adata.obs["g"] = pd.Categorical(np.arange(adata.n_obs) % 2)
    sm.pp.scale_by_identity(adata, "g", boundary_connectivity=0.5)
    assert set(adata.uns["smoother_neighbors"]) == {"params", "connectivities_key", "n_isolated"}
    assert "metric" not in adata.uns["smoother_neighbors"]["params"]


def test_spatial_graph_duplicate_coordinates(grid_coords):
    coords = np.vstack([grid_coords, grid_coords[:3]])  # three spots doubled
    a = ad.AnnData(np.zeros((len(coords), 1), dtype=np.float32))
    a.obsm["spatial"] = coords
    with pytest.warns(UserWarning, match="6 spots share their coordinates"):
        sm.pp.spatial_graph(a, n_neighs=4, mutual=False)
    W, D = a.obsp["spatial_connectivities"], a.obsp["spatial_distances"]
    # distances list exactly the edges of the connectivities; the doubled spots are neighbours at distance 0
    assert (abs(W.sign()) != (D != 0).astype(float) + _explicit_zeros(D)).nnz == 0
    n = len(grid_coords)
    for i in range(3):
        assert W[i, n + i] == 1.0 and D[i, n + i] == 0.0 and _stored(D, i, n + i)


def _explicit_zeros(D):
    Z = D.copy()
    Z.data = (Z.data == 0).astype(float)
    Z.eliminate_zeros()
    return Z


def _stored(D, i, j):
    row = D.indices[D.indptr[i] : D.indptr[i + 1]]
    return j in row


def test_spatial_graph_degenerate_spot_counts():
    def make(coords):
        a = ad.AnnData(np.zeros((len(coords), 2), dtype=np.float32))
        a.obsm["spatial"] = np.asarray(coords, dtype=float).reshape(-1, 2)
        return a

    with pytest.raises(ValueError, match="at least 1 spots"):
        sm.pp.spatial_graph(make([]))
    with pytest.raises(ValueError, match="at least 2 spots"):
        sm.pp.spatial_graph(make([[0, 0]]))
    with pytest.raises(ValueError, match=r"`n_neighs` <= n_obs - 1 = 1.*n_neighs=1"):
        sm.pp.spatial_graph(make([[0, 0], [1, 0]]))
    two = make([[0, 0], [1, 0]])
    sm.pp.spatial_graph(two, n_neighs=1)
    np.testing.assert_array_equal(two.obsp["spatial_connectivities"].toarray(), [[0, 1], [1, 0]])
    one = make([[0, 0]])
    sm.pp.spatial_graph(one, method="radius", radius=1.0)
    np.testing.assert_array_equal(one.obsp["spatial_connectivities"].toarray(), [[1.0]])  # isolated: self edge
    for method, kw in (("knn", {}), ("radius", {"radius": 1.0})):
        with pytest.raises(ValueError, match="same point"):
            sm.pp.spatial_graph(make(np.zeros((10, 2))), method=method, **kw)


def test_spatial_graph_non_unique_obs_names_follow_row_order(adata):
    b = adata.copy()
    b.obs_names = ["s"] * b.n_obs
    sm.pp.spatial_graph(adata, n_neighs=4)
    out = sm.pp.spatial_graph(b, n_neighs=4, copy=True)
    assert (out.obsp["spatial_connectivities"] != adata.obsp["spatial_connectivities"]).nnz == 0
    assert "spatial_connectivities" not in b.obsp


def _visium(full, img, scalef=0.5, diameter=6.0):
    a = ad.AnnData(np.zeros((len(full), 2), dtype=np.float32))
    a.obsm["spatial"] = full
    sf = {"spot_diameter_fullres": diameter, "tissue_hires_scalef": scalef}
    a.uns["spatial"] = {"lib": {"images": {"hires": img}, "scalefactors": sf}}
    sm.pp.spatial_graph(a, n_neighs=4)
    return a


def test_histology_features_ignore_nan_pixels_like_brute_force(rng):
    from smoother.pp._graph import _histology_features

    img = rng.uniform(size=(20, 24, 2))
    img[5, 6, 0] = np.nan
    img[10:12, 3:5, :] = np.nan
    xy = np.array([[6.0, 5.0], [4.0, 11.0], [23.0, 19.0], [0.0, 0.0]])
    F = _histology_features(img, xy, 2.0, "img")
    for s, (x, y) in enumerate(np.round(xy).astype(int)):
        patch = img[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
        np.testing.assert_allclose(F[s, :2], np.nanmean(patch, axis=(0, 1)), rtol=1e-10)
        np.testing.assert_allclose(F[s, 2:], np.nanstd(patch, axis=(0, 1)), rtol=1e-6, atol=1e-7)


def test_scale_by_histology_nan_inf_and_outside(grid_coords):
    full = grid_coords * 10.0 + 20.0
    img = np.zeros((100, 100, 3))
    img[:, 53:] = 1.0
    img[30, 30, 1] = np.nan  # one masked pixel inside a spot's footprint
    a = _visium(full, img)
    sm.pp.scale_by_histology(a)
    W = a.obsp["smoother_connectivities"]
    assert np.isfinite(W.data).all() and a.uns["smoother_neighbors"]["n_nan_pixels"] == 1
    bright = full[:, 0] * 0.5 >= 53
    C = W.tocoo()
    cross = bright[C.row] != bright[C.col]
    assert W.data[cross].max() < 0.05 and C.data[~cross].min() > 0.5
    bad = img.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        sm.pp.scale_by_histology(_visium(full, bad))
    masked = img.copy()
    masked[:, :40] = np.nan  # the left spots see only NaN pixels
    with pytest.raises(ValueError, match="only NaN pixels"):
        sm.pp.scale_by_histology(_visium(full, masked))
    with pytest.raises(ValueError, match="outside the image"):
        sm.pp.scale_by_histology(_visium(full * 3.0, img))
