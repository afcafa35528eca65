"""`import smoother` is instant: nothing heavy loads until used, and the public names exist."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("squidpy", "scanpy", "matplotlib", "gudhi", "scvi", "cvxpy", "dask", "pooch")
HEAVY_AT_IMPORT = (*OPTIONAL, "torch", "numba", "scipy", "pandas", "anndata", "sklearn")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_smoother_loads_nothing_heavy():
    code = f"import sys, smoother; print(','.join(m for m in {HEAVY_AT_IMPORT!r} if m in sys.modules))"
    assert _run(code) == "", "loaded by `import smoother`"


def test_public_names_load_on_first_use_without_optional_dependencies():
    code = f"""
import sys
import smoother as sm
for n in ('pp', 'tl', 'pl', 'datasets', 'SpatialWeightMatrix', 'SpatialLoss', 'ContrastiveSpatialLoss', 'TopLoss'):
    assert hasattr(sm, n), n
    assert n in dir(sm), n
from smoother import SpatialWeightMatrix, SpatialLoss, ContrastiveSpatialLoss, TopLoss
from smoother.weights import (coordinate_to_weights_knn_sparse, coordinate_to_weights_dist_sparse,
    coordinate_to_weights_knn_dense, coordinate_to_weights_dist_dense, sparse_weights_to_inv_cov, weights_to_inv_cov)
from smoother.losses import kl_loss_scipy, kl_loss, quadratic_loss, sparse_quadratic_loss
print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))
"""
    assert _run(code) == "", "optional dependencies loaded by the public names"


def test_unknown_attribute_and_version():
    code = """
import smoother as sm
try:
    sm.not_a_name
except AttributeError as e:
    assert 'not_a_name' in str(e)
else:
    raise SystemExit('no AttributeError')
print(sm.__version__)
"""
    assert _run(code).count(".") >= 1
    out = subprocess.run([sys.executable, "-m", "smoother", "--version"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("smoother ")


def test_main_paths_need_no_optional_dependency():
    """The demo's path (graph, smooth, decay, deconvolution) runs on the required dependencies alone."""
    code = """
import sys
import smoother as sm
a = sm.datasets.simulate_field(n_spots=200, n_genes=5, random_state=0)
sm.pp.spatial_graph(a)
sm.tl.smooth(a, lambda_spatial=1.0)
sm.tl.similarity_decay(a, max_k=4)
sm.tl.corr_decay(a, max_k=4)
mix, ref = sm.datasets.simulate_mixture(n_spots=200, random_state=0)
sm.pp.spatial_graph(mix)
sm.tl.deconvolve(mix, ref, groupby="cell_type", lambda_spatial=0.0)
print(','.join(m for m in ('squidpy', 'scanpy', 'gudhi', 'scvi', 'cvxpy') if m in sys.modules))
"""
    assert _run(code) == "", "optional dependencies imported on a main path"


def test_exact_paths_do_not_import_torch():
    """Smoothing (with uncertainty) and the count and quadratic deconvolution never train, so never load torch
    (its import costs seconds)."""
    code = """
import sys
import smoother as sm
a = sm.datasets.simulate_field(n_spots=200, n_genes=5, random_state=0)
sm.pp.spatial_graph(a)
sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=True)
mix, ref = sm.datasets.simulate_mixture(n_spots=200, random_state=0)
sm.pp.spatial_graph(mix)
sm.tl.deconvolve(mix, ref, groupby="cell_type", model="nnls", lambda_spatial=1.0, device="cpu")
sm.tl.deconvolve(mix, ref, groupby="cell_type", lambda_spatial=0.0)
print("torch" in sys.modules)
"""
    assert _run(code) == "False"
