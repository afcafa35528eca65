"""`import smoother` is light: no heavy optional dependency is imported, and the public names exist."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("squidpy", "scanpy", "matplotlib", "gudhi", "scvi", "cvxpy")

CODE = f"""
import sys
import smoother as sm
heavy = [m for m in {HEAVY!r} if m in sys.modules]
for n in ('pp', 'tl', 'pl', 'datasets', 'SpatialWeightMatrix', 'SpatialLoss', 'ContrastiveSpatialLoss', 'TopLoss'):
    assert hasattr(sm, n), n
from smoother import SpatialWeightMatrix, SpatialLoss, ContrastiveSpatialLoss, TopLoss
from smoother.weights import (coordinate_to_weights_knn_sparse, coordinate_to_weights_dist_sparse,
    coordinate_to_weights_knn_dense, coordinate_to_weights_dist_dense, sparse_weights_to_inv_cov, weights_to_inv_cov)
from smoother.losses import kl_loss_scipy, kl_loss, quadratic_loss, sparse_quadratic_loss
heavy += [m for m in {HEAVY!r} if m in sys.modules and m not in heavy]
print(','.join(heavy))
"""


def test_import_is_light_and_classic_names_exist():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported by `import smoother` / the classic modules: {out.stdout.strip()}"
