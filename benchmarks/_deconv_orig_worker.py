"""Run the published smoother-omics 1.1.0 NNLS (pytorch backend, defaults) on one problem (run by .venv-orig).

Usage: python _deconv_orig_worker.py IN.npz OUT.npz
IN holds X (genes x types), Y (genes x spots), coords (spots x 2), lam. OUT gets the coefficients (spots x types),
the bias, the weight matrix the package built (so the caller evaluates both solutions on the same precision),
seconds and peak RSS.
"""

import resource
import sys
import time


def cpu():
    """User + system CPU seconds of this process (robust to a busy machine, unlike wall time)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


import warnings

import numpy as np
import torch

from smoother import SpatialLoss, SpatialWeightMatrix
from smoother.models.deconv import NNLS

inp = np.load(sys.argv[1])
X = torch.tensor(inp["X"], dtype=torch.float32)
Y = torch.tensor(inp["Y"], dtype=torch.float32)
coords = torch.tensor(inp["coords"], dtype=torch.float32)
lam = float(inp["lam"])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, cpu0 = time.perf_counter(), cpu()
swm = SpatialWeightMatrix()
swm.calc_weights_knn(coords, k=6, verbose=False)
sl = SpatialLoss("icar", swm, rho=0.99, standardize_cov=False)
t1 = time.perf_counter()
model = NNLS(backend="pytorch")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    model.deconv(X, Y, spatial_loss=sl, lambda_spatial_loss=lam, quiet=True)
t2 = time.perf_counter()
W = swm.swm_scaled.coalesce()
idx = W.indices().numpy()
np.savez(
    sys.argv[2],
    coef=model.lr.weight.detach().abs().numpy().astype(np.float64),  # spots x types
    bias=model.lr.bias.detach().numpy().astype(np.float64),
    props=model.get_props().numpy().astype(np.float64),
    W_row=idx[0],
    W_col=idx[1],
    W_val=W.values().numpy().astype(np.float64),
    seconds_total=t2 - t0,
    seconds_fit=t2 - t1,
    seconds_graph=t1 - t0,
    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    cpu_seconds=cpu() - cpu0,
    rss0_mb=rss0 / 1024,
    warned=np.array([str(x.message) for x in w]),
)
