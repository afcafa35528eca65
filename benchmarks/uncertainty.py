"""Calibration and cost of the posterior uncertainty of ``sm.tl.smooth(..., uncertainty=True)`` (issue 14).

Calibration: coverage of nominal 50/90/95% intervals of the truth, with lambda and sigma estimated
(``lambda_spatial='auto'``), on

- fields drawn from the prior itself (exact GMRF draws of the ICAR prior on a Visium-like hex lattice, plus noise);
- mis-specified data: piecewise-constant layers (the real DLPFC 151673 geometry and layer profiles when
  ``../shared/data`` is present; else simulated zones) plus noise;
- a smooth field of another family (``sm.datasets.simulate_field``: Gaussian-kernel field, not our prior).

Cost: smoothing with and without ``uncertainty=True`` at 100k spots x 2,000 genes (fixed lambda), and the
diagonal alone at 1M spots (exact selected inversion or probing, with the measured error).

Usage: ``.venv/bin/python benchmarks/uncertainty.py [--skip-cost] [--cost-spots 100000] [--cost-genes 2000]``.
Writes ``benchmarks/results/uncertainty.json`` and ``uncertainty.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SMOOTHER_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
LEVELS = (0.5, 0.9, 0.95)


def coverage(adata, truth: np.ndarray, key: str = "smoothed") -> dict:
    import smoother as sm

    out = {}
    for level in LEVELS:
        lo, hi = sm.get.interval(adata, key=key, level=level)
        inside = (truth >= lo.to_numpy()) & (truth <= hi.to_numpy())
        out[f"{level:.2f}"] = float(inside.mean())
    return out


def from_prior(n_side: int = 60, n_genes: int = 40, lam_true: float = 3.0, sigma: float = 0.5, seed: int = 0):
    import anndata as ad
    import scipy.sparse as sp

    import smoother as sm
    from smoother._anndata import get_prior_operator
    from smoother._core.uncertainty import sample_gmrf

    adata = sm.datasets.simulate_field(n_spots=n_side * n_side, n_genes=1, seed=seed)
    coords = np.asarray(adata.obsm["spatial"])
    a = ad.AnnData(np.zeros((coords.shape[0], n_genes), dtype=np.float32))
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a)
    Q = get_prior_operator(a.obsp["spatial_connectivities"], "icar", 0.99).Q
    # prior precision lambda Q / sigma^2 around a gene-specific level
    F = sample_gmrf(sp.csr_matrix(Q) * (lam_true / sigma**2), n_genes, seed=seed)
    levels = np.random.default_rng(seed).normal(3.0, 1.0, n_genes)
    truth = F + levels[None, :]
    a.X = (truth + np.random.default_rng(seed + 1).normal(scale=sigma, size=truth.shape)).astype(np.float32)
    return a, truth


def layers_data(sigma: float = 1.0, seed: int = 0):
    import anndata as ad
    import pandas as pd

    import smoother as sm

    coords_f = DATA / "DLPFC_151673_coords.txt"
    if coords_f.is_file():
        os.environ.setdefault("SMOOTHER_DATA_DIR", str(DATA))
        a = sm.datasets.dlpfc_151673(random_state=seed)
        layer = a.obs.iloc[:, 0].astype(str).to_numpy() if "layer" not in a.obs else a.obs["layer"].astype(str)
        prof = None
        for k in a.varm:
            if isinstance(a.varm[k], pd.DataFrame):
                prof = a.varm[k]
        truth = prof[np.asarray(layer)].to_numpy().T.astype(np.float64)[:, :60]
        coords = np.asarray(a.obsm["spatial"], dtype=np.float64)
        name = "DLPFC 151673 layers (real geometry and layer profiles)"
    else:
        z = sm.datasets.simulate_field(n_spots=3600, n_genes=60, pattern="zones", seed=seed)
        truth = np.asarray(z.layers["truth"], dtype=np.float64)
        coords = np.asarray(z.obsm["spatial"])
        name = "simulated zones"
    b = ad.AnnData((truth + np.random.default_rng(seed).normal(scale=sigma, size=truth.shape)).astype(np.float32))
    b.obsm["spatial"] = coords
    sm.pp.spatial_graph(b)
    return b, truth, name


def other_family(seed: int = 0):
    import smoother as sm

    a = sm.datasets.simulate_field(n_spots=3600, n_genes=40, noise_level=0.5, seed=seed)
    sm.pp.spatial_graph(a)
    return a, np.asarray(a.layers["truth"], dtype=np.float64)


def calibration() -> list[dict]:
    import smoother as sm

    rows = []
    cases = [("GMRF draws of the ICAR prior (rho 0.99) + noise", *from_prior())]
    b, t, name = layers_data()
    cases.append((name + " + noise sd 1", b, t))
    cases.append(("Gaussian-kernel smooth field (sm.datasets.simulate_field) + noise", *other_family()))
    for (name, a, truth), criterion in [(c, k) for c in cases for k in ("risk", "ml")]:
        t0 = time.perf_counter()
        sm.tl.smooth(a, lambda_spatial="auto", criterion=criterion, uncertainty=True)
        sec = time.perf_counter() - t0
        cov = coverage(a, truth)
        est = np.asarray(a.layers["smoothed"], dtype=np.float64)
        rows.append(
            {
                "data": name,
                "criterion": criterion,
                "n_spots": a.n_obs,
                "n_genes": a.n_vars,
                "lambda": float(a.uns["smoothed"]["params"]["lambda"]),
                "rmse": float(np.sqrt(np.mean((est - truth) ** 2))),
                "mean_sd": float(sm.get.posterior_sd(a).to_numpy().mean()),
                "coverage": cov,
                "seconds": sec,
            }
        )
        print(rows[-1], flush=True)
    return rows


def cost(n_spots: int, n_genes: int, diag_spots: int) -> dict:
    import anndata as ad
    import scipy.sparse as sp

    import smoother as sm
    from smoother._anndata import get_prior_operator
    from smoother._core.uncertainty import inv_diag

    rng = np.random.default_rng(0)
    lat = sm.datasets.lattice(n_spots, layout="square") if hasattr(sm.datasets, "lattice") else None
    coords = np.asarray(lat if isinstance(lat, np.ndarray) else lat.obsm["spatial"])
    a = ad.AnnData(rng.normal(size=(coords.shape[0], n_genes)).astype(np.float32))
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a)
    out = {"n_spots": a.n_obs, "n_genes": n_genes}
    t0 = time.perf_counter()
    sm.tl.smooth(a, lambda_spatial=1.0)
    out["smooth_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=True)
    out["smooth_with_sd_s"] = time.perf_counter() - t0
    out["ratio"] = out["smooth_with_sd_s"] / out["smooth_s"]
    del a
    lat = sm.datasets.lattice(diag_spots, layout="square")
    coords = np.asarray(lat if isinstance(lat, np.ndarray) else lat.obsm["spatial"])
    b = ad.AnnData(np.zeros((coords.shape[0], 1), dtype=np.float32))
    b.obsm["spatial"] = coords
    sm.pp.spatial_graph(b)
    Q = get_prior_operator(b.obsp["spatial_connectivities"], "icar", 0.99).Q
    A = (sp.identity(Q.shape[0], format="csr") + Q).tocsr()
    for method in ("probing", "exact"):
        t0 = time.perf_counter()
        res = inv_diag(A, method=method, tol=1e-2)
        out[f"diag_{method}_s"] = time.perf_counter() - t0
        out[f"diag_{method}_max_rel_error"] = res.max_rel_error
        out[f"diag_{method}_solves"] = res.n_colors
        print(method, out[f"diag_{method}_s"], res.max_rel_error, flush=True)
    out["diag_spots"] = int(Q.shape[0])
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--cost-spots", type=int, default=100_000)
    ap.add_argument("--cost-genes", type=int, default=2000)
    ap.add_argument("--diag-spots", type=int, default=1_000_000)
    args = ap.parse_args()
    import smoother as sm

    sm.settings.progress_bar = False
    load0 = os.getloadavg()[0]
    res = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_start": load0,
        "calibration": calibration(),
    }
    if not args.skip_cost:
        res["cost"] = cost(args.cost_spots, args.cost_genes, args.diag_spots)
    res["load_average_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "uncertainty.json").write_text(json.dumps(res, indent=2))
    lines = [
        "# Posterior uncertainty of smoothing: calibration and cost",
        "",
        f"{res['machine']}; load average {load0:.1f} -> {res['load_average_end']:.1f}. lambda and sigma estimated "
        "(`lambda_spatial='auto'`, `uncertainty=True`); coverage = share of (spot, gene) truths inside the interval.",
        "",
        "| data | spots x genes | criterion | lambda | RMSE | mean sd | 50% | 90% | 95% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["calibration"]:
        c = r["coverage"]
        lines.append(
            f"| {r['data']} | {r['n_spots']} x {r['n_genes']} | {r['criterion']} | {r['lambda']:.3g} | "
            f"{r['rmse']:.3f} | "
            f"{r['mean_sd']:.3f} | {c['0.50']:.3f} | {c['0.90']:.3f} | {c['0.95']:.3f} |"
        )
    if "cost" in res:
        c = res["cost"]
        lines += [
            "",
            f"Cost at {c['n_spots']:,} spots x {c['n_genes']:,} genes (lambda = 1): smoothing {c['smooth_s']:.1f} s, "
            f"with posterior sd {c['smooth_with_sd_s']:.1f} s (**{c['ratio']:.2f}x**; target <= 1.5x).",
            f"Diagonal at {c['diag_spots']:,} spots: exact selected inversion {c['diag_exact_s']:.1f} s; probing "
            f"{c['diag_probing_s']:.1f} s ({c['diag_probing_solves']} solves, measured max relative error "
            f"{c['diag_probing_max_rel_error']:.1e}); target < 120 s. Peak RSS {c['peak_rss_gib']:.1f} GiB.",
        ]
    (RESULTS / "uncertainty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
