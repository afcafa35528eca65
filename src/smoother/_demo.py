"""The ``make demo`` showcase (grows as capabilities land)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run_demo(*, n_spots: int = 3000, out: str = "demo_out", seed: int = 0) -> int:
    import torch

    from ._core import knn_graph, precision, quadratic_form, to_torch_sparse

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots)))
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_spots].astype(float)
    t0 = time.perf_counter()
    W, _ = knn_graph(xy, k=4)
    Q = precision(W, "icar", 0.99)
    smooth_field = np.sin(xy[:, 0] / 6.0) + np.cos(xy[:, 1] / 7.0)
    noise = rng.normal(size=n_spots)
    Qt = to_torch_sparse(Q, dtype=torch.float64)
    loss_smooth = quadratic_form(torch.from_numpy(smooth_field[None]), Qt).item() / n_spots
    loss_noise = quadratic_form(torch.from_numpy(noise[None]), Qt).item() / n_spots
    print(f"smoother demo: {n_spots} spots on a square grid, ICAR(rho=0.99) prior")
    print(f"  spatial loss of a smooth field: {loss_smooth:.4f}; of white noise: {loss_noise:.4f}")
    print(f"  finished in {time.perf_counter() - t0:.2f}s; output folder: {outdir}")
    return 0
