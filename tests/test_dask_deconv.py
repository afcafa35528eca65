"""sm.tl.deconvolve on dask-backed AnnData (issue 12): only the genes shared with the reference are loaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import smoother as sm

da = pytest.importorskip("dask.array")


@pytest.mark.parametrize("model", ["nb", "nnls"])
def test_dask_counts_give_the_in_memory_proportions(model, caplog):
    mix, ref = sm.datasets.simulate_mixture(n_spots=300, seed=0)
    sm.pp.spatial_graph(mix)
    X = np.asarray(mix.X.toarray() if sp.issparse(mix.X) else mix.X)
    extra = np.random.default_rng(0).poisson(1.0, size=(mix.n_obs, 5)).astype(X.dtype)
    import anndata as ad

    wide = ad.AnnData(np.hstack([X, extra]), obs=mix.obs.copy(), obsm=dict(mix.obsm), obsp=dict(mix.obsp))
    wide.var_names = [*mix.var_names, *[f"not_in_reference_{i}" for i in range(5)]]
    ref_mem = sm.tl.deconvolve(wide, ref, groupby="cell_type", model=model, lambda_spatial=0.5, copy=True)
    lazy = wide.copy()
    lazy.X = da.from_array(sp.csr_matrix(wide.X), chunks=(100, 7), asarray=False)
    with caplog.at_level("INFO", logger="smoother"):
        sm.settings.verbosity = 2
        try:
            sm.tl.deconvolve(lazy, ref, groupby="cell_type", model=model, lambda_spatial=0.5)
        finally:
            sm.settings.verbosity = 1
    assert isinstance(lazy.X, da.Array)  # the input stays lazy
    assert f"{mix.n_vars} genes shared with the reference" in caplog.text
    pd.testing.assert_frame_equal(lazy.obsm["props"], ref_mem.obsm["props"], atol=1e-6)
