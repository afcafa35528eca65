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
    assert nb["params"]["n_neighbors"] == 4
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
