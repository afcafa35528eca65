"""Calibration and cost of the posterior uncertainty of ``sm.tl.smooth(..., uncertainty=True)`` (issue 14).

Calibration: coverage of nominal 50/90/95% intervals of the truth, with lambda and sigma estimated
(``lambda_spatial='auto'``), on

- fields drawn from the prior itself (exact GMRF draws of the ICAR prior on a Visium-like hex lattice, plus noise);
- mis-specified data: piecewise-constant layers (the real DLPFC 151673 geometry and layer profiles when
  ``../shared/data`` is present; else simulated zones) plus noise;
- a smooth field of another family (``sm.datasets.simulate_field``: Gaussian-kernel field, not our prior).

Cost: smoothing with and without ``uncertainty=True`` at 100k spots x 2,000 genes (fixed lambda), and the
diagonal alone at 1M spots (exact selected inversion or probing, with the measured error).

Usage: ``.venv/bin/python benchmarks/uncertainty.py [--skip-calibration] [--skip-cost] [--steps smooth,diag]
[--cost-spots 100000] [--cost-genes 2000] [--diag-spots 1000000]``.
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


class _Clock:
    """Wall and CPU seconds (this process) of a block, with the load average at its end."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        self.load = os.getloadavg()[0]


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _lattice_adata(n_spots: int, n_genes: int, seed: int = 0):
    import anndata as ad

    import smoother as sm

    lat = sm.datasets.lattice(n_spots, layout="square")
    coords = np.asarray(lat if isinstance(lat, np.ndarray) else lat.obsm["spatial"])
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.normal(size=(coords.shape[0], n_genes)).astype(np.float32))
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a)
    return a


def cost_smooth(n_spots: int, n_genes: int) -> dict:
    """``sm.tl.smooth`` at a fixed lambda with and without ``uncertainty=True``, in one run (same load)."""
    import smoother as sm

    a = _lattice_adata(n_spots, n_genes)
    out = {"n_spots": a.n_obs, "n_genes": n_genes, "smooth_commit": _commit()}
    for key, unc in (("smooth", False), ("smooth_with_sd", True)):
        with _Clock() as c:
            sm.tl.smooth(a, lambda_spatial=1.0, uncertainty=unc)
        out[f"{key}_s"], out[f"{key}_cpu_s"], out[f"{key}_load"] = c.wall, c.cpu, c.load
        print(key, c.wall, c.cpu, c.load, flush=True)
    out["ratio"] = out["smooth_with_sd_s"] / out["smooth_s"]
    out["ratio_cpu"] = out["smooth_with_sd_cpu_s"] / out["smooth_cpu_s"]
    return out


def cost_diag(diag_spots: int, methods=("exact", "probing"), n_verify: int = 64) -> dict:
    """The diagonal of ``(I + Q)^{-1}`` (ICAR, rho 0.99) alone; each method's error against solved columns."""
    import scipy.sparse as sp

    from smoother._anndata import get_prior_operator
    from smoother._core.linalg import SPDFactor
    from smoother._core.uncertainty import exact_columns_diag, inv_diag

    b = _lattice_adata(diag_spots, 1)
    Q = get_prior_operator(b.obsp["spatial_connectivities"], "icar", 0.99).Q
    del b
    n = Q.shape[0]
    A = (sp.identity(n, format="csr") + Q).tocsr()
    out = {"diag_spots": int(n), "diag_commit": _commit()}
    diags = {}
    for method in methods:
        with _Clock() as c:
            res = inv_diag(A, method=method, tol=1e-2)
        diags[method] = res.diag
        out[f"diag_{method}_s"], out[f"diag_{method}_cpu_s"], out[f"diag_{method}_load"] = c.wall, c.cpu, c.load
        out[f"diag_{method}_max_rel_error"] = res.max_rel_error
        out[f"diag_{method}_mean_rel_error"] = res.mean_rel_error
        out[f"diag_{method}_solves"] = res.n_colors
        out[f"diag_{method}_distance"] = res.distance
        print(method, c.wall, c.cpu, c.load, res.max_rel_error, res.n_colors, flush=True)
    # independent check: unit-vector solves (a different factorization) at random spots not used by the estimator
    idx = np.sort(np.random.default_rng(12345).choice(n, size=n_verify, replace=False))
    ref = exact_columns_diag(SPDFactor(A), idx)
    for method, d in diags.items():
        out[f"diag_{method}_verify_max_rel"] = float(np.max(np.abs(d[idx] - ref) / ref))
    out["verify_spots"] = n_verify
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-calibration", action="store_true", help="keep the calibration rows of the last run")
    ap.add_argument("--steps", default="smooth,diag", help="cost steps: smooth (100k x 2000), diag (1M)")
    ap.add_argument("--cost-spots", type=int, default=100_000)
    ap.add_argument("--cost-genes", type=int, default=2000)
    ap.add_argument("--diag-spots", type=int, default=1_000_000)
    args = ap.parse_args()
    import smoother as sm

    sm.settings.progress_bar = False
    old = json.loads((RESULTS / "uncertainty.json").read_text()) if (RESULTS / "uncertainty.json").is_file() else {}
    load0 = os.getloadavg()[0]
    res = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_start": load0,
    }
    if args.skip_calibration and "calibration" in old:
        res["calibration"] = old["calibration"]
        res["calibration_load"] = old.get(
            "calibration_load", [old.get("load_average_start"), old.get("load_average_end")]
        )
    else:
        res["calibration"] = calibration()
        res["calibration_load"] = [load0, os.getloadavg()[0]]
    if not args.skip_cost:
        steps = set(args.steps.split(","))
        cost = dict(old.get("cost", {})) if old.get("cost_version") == 2 else {}
        if "smooth" in steps:
            cost.update(cost_smooth(args.cost_spots, args.cost_genes))
        if "diag" in steps:
            cost.update(cost_diag(args.diag_spots))
        res["cost"] = cost
        res["cost_version"] = 2
    res["load_average_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "uncertainty.json").write_text(json.dumps(res, indent=2))
    cl = res["calibration_load"]
    lines = [
        "# Posterior uncertainty of smoothing: calibration and cost",
        "",
        f"{res['machine']}. Calibration (load average {cl[0]:.1f} -> {cl[1]:.1f}): lambda and sigma estimated "
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
    c = res.get("cost", {})
    if c:
        lines += [
            "",
            "## Cost",
            "",
            "Wall seconds (inflated by the other jobs on the shared machine), CPU seconds of "
            "this process, and the load average at the end of each step.",
            "",
        ]
    if "smooth_s" in c:
        lines += [
            f"- Smoothing at {c['n_spots']:,} spots x {c['n_genes']:,} genes (lambda = 1), one run (commit "
            f"{c.get('smooth_commit', '?')}): alone "
            f"{c['smooth_s']:.1f} s wall / {c['smooth_cpu_s']:.1f} s CPU (load {c['smooth_load']:.1f}); with "
            f"posterior sd {c['smooth_with_sd_s']:.1f} s wall / {c['smooth_with_sd_cpu_s']:.1f} s CPU (load "
            f"{c['smooth_with_sd_load']:.1f}): **{c['ratio']:.2f}x** wall, **{c['ratio_cpu']:.2f}x** CPU "
            "(target <= 1.5x).",
        ]
    if "diag_exact_s" in c or "diag_probing_s" in c:
        parts = []
        if "diag_exact_s" in c:
            parts.append(
                f"exact supernodal selected inversion {c['diag_exact_s']:.1f} s wall / {c['diag_exact_cpu_s']:.1f} s "
                f"CPU (load {c['diag_exact_load']:.1f}; max relative difference to {c['verify_spots']} solved unit "
                f"columns {c['diag_exact_verify_max_rel']:.1e})"
            )
        if "diag_probing_s" in c:
            parts.append(
                f"probing (tol 1e-2) {c['diag_probing_s']:.1f} s wall / {c['diag_probing_cpu_s']:.1f} s CPU (load "
                f"{c['diag_probing_load']:.1f}; distance {c['diag_probing_distance']}, {c['diag_probing_solves']} "
                f"solves; measured max relative error {c['diag_probing_max_rel_error']:.1e} on its own checked spots, "
                f"{c['diag_probing_verify_max_rel']:.1e} on {c['verify_spots']} independent spots)"
            )
        lines += [
            f"- Diagonal of (I + Q)^-1 at {c['diag_spots']:,} spots (ICAR rho 0.99, square lattice; commit "
            f"{c.get('diag_commit', '?')}): "
            + "; ".join(parts)
            + f". Target < 120 s. Peak RSS {c['peak_rss_gib']:.1f} GiB.",
        ]
    (RESULTS / "uncertainty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
