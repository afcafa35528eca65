"""Calibration of ``sm.tl.impute(..., uncertainty=True)`` and ``sm.tl.enhance(..., uncertainty=True)`` (issue 14).

Coverage of the truth by nominal 50/90/95% intervals (``sm.get.interval``) with the scale (and, where the fit has
one, lambda) estimated from the data:

- **fixed observations** (``impute(fixed_obs=True)``, the default): exact GMRF draws of the ICAR prior on the graph
  ``impute`` builds (hex lattice, 30% of the spots held out), observed without noise; sigma is the prior scale by
  REML. Coverage of the held-out truth.
- **joint denoising and filling** (``fixed_obs=False``): draws of the prior plus Gaussian noise; lambda 'auto'
  (the default 'risk' criterion) and, for reference, the true lambda. Coverage of the held-out and of the observed
  spots' noise-free truth.
- **enhancement**: draws of the prior on the sub-spot lattice ``enhance`` builds, spot values = sub-spot means plus
  noise; the true lambda (``enhance`` has no 'auto'). Coverage of the sub-spot truth.
- **mis-specified**: piecewise-constant layers (``sm.datasets.simulate_field(pattern='zones')``), the same three
  fits: reported as measured; the intervals promise nothing there.

Cost: ``impute`` (both fits) and ``enhance`` with and without ``uncertainty=True`` at 100k spots (20% new) and
20k spots (about 80k sub-spots) x 50 genes.

Usage: ``.venv/bin/python benchmarks/impute_uncertainty.py [--skip-cost]`` (a few minutes on the shared machine). Writes
``benchmarks/results/impute_uncertainty.json`` and ``impute_uncertainty.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.5, 0.9, 0.95)
RHO = 0.99  # the default of impute / enhance


def coverage(out, truth: np.ndarray, key: str, rows: np.ndarray) -> dict:
    import smoother as sm

    cov = {}
    for level in LEVELS:
        lo, hi = sm.get.interval(out, key=key, level=level)
        inside = (truth >= lo.to_numpy()[rows]) & (truth <= hi.to_numpy()[rows])
        cov[f"{level:.2f}"] = float(inside.mean())
    return cov


def _hex(n_spots: int, seed: int) -> np.ndarray:
    import smoother as sm

    return np.asarray(sm.datasets.simulate_field(n_spots=n_spots, n_genes=1, seed=seed).obsm["spatial"], dtype=float)


def _prior_draw(coords: np.ndarray, n_neighs: int, n_genes: int, scale: float, seed: int) -> np.ndarray:
    """Exact draws of level + scale * N(0, Q^{-1}), Q the ICAR prior on the kNN graph that sm.tl builds."""
    from smoother._anndata import get_prior_operator
    from smoother._core.graph import knn_graph
    from smoother._core.uncertainty import sample_gmrf

    W, _ = knn_graph(coords, n_neighs, symmetrize="mutual")
    Q = get_prior_operator(W, "icar", RHO, False).Q
    F = sample_gmrf(Q, n_genes, seed=seed)
    levels = np.random.default_rng(seed).normal(3.0, 1.0, n_genes)
    return levels[None, :] + scale * F


def _held_out(n: int, seed: int, frac: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed + 100).random(n) < frac


def _row(name, fit, out, truth, key, rows, sec, **extra) -> dict:
    import smoother as sm

    est = np.asarray(out.X, dtype=np.float64)[rows]
    sd = sm.get.posterior_sd(out, key=key).to_numpy()[rows]
    unc = out.uns[key]["uncertainty"]
    row = {
        "data": name,
        "fit": fit,
        "n_spots": int(out.n_obs),
        "n_genes": int(out.n_vars),
        "rows_scored": int(rows.sum()),
        "lambda": out.uns[key]["params"].get("lambda", out.uns[key]["params"].get("lambda_spatial")),
        "rmse": float(np.sqrt(np.mean((est - truth) ** 2))),
        "mean_sd": float(np.nanmean(sd)),
        "sigma_median": float(np.median(out.var[f"{key}_sigma"])),
        "diag_method": unc["method"],
        "coverage": coverage(out, truth, key, rows),
        "seconds": sec,
        **extra,
    }
    print(row, flush=True)
    return row


def impute_rows(name: str, coords: np.ndarray, truth: np.ndarray, noise: float, seed: int, lam_true=None):
    import anndata as ad

    import smoother as sm

    rows = []
    held = _held_out(coords.shape[0], seed)
    c_obs, c_new = coords[~held], coords[held]
    # the prior draws are made in impute's order (observed first), so the graph is exactly the one it builds
    T_obs, T_new = truth[~held], truth[held]
    rng = np.random.default_rng(seed + 7)
    fits = [("fixed_obs=True", {"fixed_obs": True}, 0.0)]
    if noise > 0:
        fits = [
            ("fixed_obs=False, lambda='auto' (criterion 'risk', the default)",
             {"fixed_obs": False, "lambda_spatial": "auto"}, noise),
            ("fixed_obs=False, lambda='auto', criterion='ml'",
             {"fixed_obs": False, "lambda_spatial": "auto", "criterion": "ml"}, noise),
        ]  # fmt: skip
        if lam_true is not None:
            kw_true = {"fixed_obs": False, "lambda_spatial": lam_true}
            fits.append((f"fixed_obs=False, lambda={lam_true:g} (true)", kw_true, noise))
    for fit, kw, sd_noise in fits:
        Y = T_obs + (rng.normal(scale=sd_noise, size=T_obs.shape) if sd_noise > 0 else 0.0)
        a = ad.AnnData(Y.astype(np.float64))
        a.obsm["spatial"] = c_obs
        t0 = time.perf_counter()
        out = sm.tl.impute(a, c_new, uncertainty=True, dtype="float64", **kw)
        sec = time.perf_counter() - t0
        new = ~out.obs["observed"].to_numpy()
        rows.append(_row(name, fit + " [held-out spots]", out, T_new, "impute", new, sec))
        if sd_noise > 0:
            rows.append(_row(name, fit + " [observed spots, noise-free truth]", out, T_obs, "impute", ~new, sec))
    return rows


def enhance_rows(name: str, coords: np.ndarray, truth_fn, noise: float, lam: float, seed: int):
    import anndata as ad
    import scipy.sparse as sp

    import smoother as sm
    from smoother.tl._impute import subspot_lattice

    sub, parent = subspot_lattice(coords, 2)
    T = truth_fn(sub)
    counts = np.bincount(parent, minlength=coords.shape[0])
    A = sp.csr_matrix((1.0 / counts[parent], (parent, np.arange(sub.shape[0]))), shape=(coords.shape[0], len(sub)))
    Y = A @ T + np.random.default_rng(seed + 3).normal(scale=noise, size=(coords.shape[0], T.shape[1]))
    a = ad.AnnData(Y)
    a.obsm["spatial"] = coords
    t0 = time.perf_counter()
    out = sm.tl.enhance(a, factor=2, lambda_spatial=lam, uncertainty=True, dtype="float64")
    sec = time.perf_counter() - t0
    assert np.allclose(out.obsm["spatial"], sub)
    return [_row(name, f"enhance factor=2, lambda={lam:g}", out, T, "enhance", np.ones(out.n_obs, bool), sec)]


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def cost(n_spots: int, n_genes: int, enhance_spots: int) -> list[dict]:
    """Wall/CPU seconds with and without ``uncertainty=True`` (same process, one after the other)."""
    import anndata as ad

    import smoother as sm

    rows = []
    # warm-up (imports, compiled kernels) so that the first timed call does not pay for them
    w = ad.AnnData(np.random.default_rng(2).normal(size=(60, 2)))
    w.obsm["spatial"] = _hex(80, 0)[:60]
    for fixed in (True, False):
        sm.tl.impute(w, _hex(80, 0)[60:], fixed_obs=fixed, uncertainty=True)
    sm.tl.enhance(w, factor=2, uncertainty=True)
    coords = _hex(n_spots, 0)
    held = _held_out(n_spots, 0, frac=0.2)
    Y = np.random.default_rng(0).normal(size=(int((~held).sum()), n_genes))
    a = ad.AnnData(Y)
    a.obsm["spatial"] = coords[~held]
    for kw in ({"fixed_obs": True}, {"fixed_obs": False, "lambda_spatial": 1.0}):
        for unc in (False, True):
            out, wall, cpu = _timed(lambda kw=kw, unc=unc: sm.tl.impute(a, coords[held], uncertainty=unc, **kw))
            rows.append({"fit": f"impute {kw}", "n_spots": n_spots, "n_genes": n_genes, "uncertainty": unc,
                         "wall_seconds": wall, "cpu_seconds": cpu, "loadavg": os.getloadavg(),
                         "diag": out.uns["impute"].get("uncertainty", {}).get("method")})  # fmt: skip
            print(rows[-1], flush=True)
    ce = _hex(enhance_spots, 0)
    b = ad.AnnData(np.random.default_rng(1).normal(size=(enhance_spots, n_genes)))
    b.obsm["spatial"] = ce
    for unc in (False, True):
        out, wall, cpu = _timed(lambda unc=unc: sm.tl.enhance(b, factor=2, uncertainty=unc))
        rows.append({"fit": "enhance factor=2", "n_spots": enhance_spots, "n_sub": int(out.n_obs),
                     "n_genes": n_genes, "uncertainty": unc, "wall_seconds": wall, "cpu_seconds": cpu,
                     "loadavg": os.getloadavg(),
                     "diag": out.uns["enhance"].get("uncertainty", {}).get("method")})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--cost-spots", type=int, default=100_000)
    parser.add_argument("--cost-genes", type=int, default=50)
    parser.add_argument("--enhance-spots", type=int, default=20_000)
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    t_all, c_all = time.perf_counter(), time.process_time()
    n_spots, n_genes, seed = 2500, 40, 0
    coords = _hex(n_spots, seed)
    held = _held_out(n_spots, seed)
    order = np.r_[np.flatnonzero(~held), np.flatnonzero(held)]
    rows = []
    # fixed observations: the field itself, tau = 1
    T = np.empty((n_spots, n_genes))
    T[order] = _prior_draw(coords[order], 6, n_genes, 1.0, seed)
    rows += impute_rows("ICAR prior draws (rho 0.99), exact observations", coords, T, 0.0, seed)
    # joint: x ~ N(level, sigma^2 / lambda Q^{-1}), noise sigma
    sigma, lam = 0.5, 3.0
    T = np.empty((n_spots, n_genes))
    T[order] = _prior_draw(coords[order], 6, n_genes, sigma / np.sqrt(lam), seed + 1)
    rows += impute_rows(f"ICAR prior draws + noise (lambda {lam:g}, sigma {sigma:g})", coords, T, sigma, seed, lam)
    # enhancement on prior draws at the sub-spot level
    lam_e, sigma_e = 0.3, 0.3
    c_small = _hex(900, seed)
    rows += enhance_rows(
        f"ICAR prior draws on the sub-spot lattice (lambda {lam_e:g}, sigma {sigma_e:g})",
        c_small,
        lambda sub: _prior_draw(sub, 4, n_genes, sigma_e / np.sqrt(lam_e), seed + 2),
        sigma_e,
        lam_e,
        seed,
    )
    # mis-specified: piecewise-constant zones
    import smoother as sm

    z = sm.datasets.simulate_field(n_spots=n_spots, n_genes=n_genes, pattern="zones", seed=seed)
    Tz = np.asarray(z.layers["truth"], dtype=np.float64)
    cz = np.asarray(z.obsm["spatial"], dtype=np.float64)
    rows += impute_rows("zones (piecewise constant), exact observations", cz, Tz, 0.0, seed)
    rows += impute_rows("zones (piecewise constant) + noise sd 0.5", cz, Tz, 0.5, seed)
    rows += enhance_rows(
        "zones (piecewise constant) on the sub-spot lattice + noise sd 0.3",
        cz[:900],
        lambda sub: _zones_at(sub, cz, Tz),
        0.3,
        lam_e,
        seed,
    )
    costs = [] if args.skip_cost else cost(args.cost_spots, args.cost_genes, args.enhance_spots)
    meta = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "wall_seconds": time.perf_counter() - t_all,
        "cpu_seconds": time.process_time() - c_all,
    }
    RESULTS.mkdir(exist_ok=True)
    payload = {"meta": meta, "calibration": rows, "cost": costs}
    (RESULTS / "impute_uncertainty.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / "impute_uncertainty.md").write_text(_markdown(rows, meta, costs))
    print(meta)


def _zones_at(points: np.ndarray, coords: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Piecewise-constant truth at ``points``: the value of the nearest spot of the zones dataset."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=1).fit(coords).kneighbors(points)[1][:, 0]
    return truth[idx]


def _markdown(rows: list[dict], meta: dict, costs: list[dict]) -> str:
    lines = [
        "# Calibration of imputation / enhancement uncertainty (issue 14)",
        "",
        "`benchmarks/impute_uncertainty.py`: coverage of the truth by nominal 50/90/95% intervals "
        "(`sm.get.interval` on the result of `sm.tl.impute` / `sm.tl.enhance` with `uncertainty=True`), sigma (and "
        "lambda where marked 'auto') estimated from the data. With the observations fixed, sigma is the prior's "
        "scale by REML (no noise term). Diagonals exact (selected inversion).",
        "",
        "| data | fit | spots scored x genes | lambda | RMSE | mean sd | median sigma | 50% | 90% | 95% | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["coverage"]
        lam = "—" if r["lambda"] is None else (f"{r['lambda']:.3g}" if isinstance(r["lambda"], float) else r["lambda"])
        lines.append(
            f"| {r['data']} | {r['fit']} | {r['rows_scored']} x {r['n_genes']} | {lam} | {r['rmse']:.3f} | "
            f"{r['mean_sd']:.3f} | {r['sigma_median']:.3f} | {100 * c['0.50']:.1f} | {100 * c['0.90']:.1f} | "
            f"{100 * c['0.95']:.1f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "Reading the table:",
        "",
        "- On data drawn from the prior the intervals are calibrated (within 2 points of nominal) when the scale is "
        "estimated and lambda is known (fixed observations: no lambda; joint fit and enhancement at the true "
        "lambda) or chosen by `criterion='ml'` (empirical Bayes). The default `criterion='risk'` over-smooths a "
        "little on such data and its intervals are too narrow (about 43/83/90%), as for `sm.tl.smooth`; "
        "`enhance` has no 'auto'.",
        "- On piecewise-constant layers (not the prior) the intervals promise nothing: with exact observations "
        "they over-cover at 50%; with noise, 'risk' is close to nominal on average, while 'ml' picks a tiny lambda "
        "(the one-scale model cannot fit both jumps and noise) and its observed-spot intervals badly under-cover. "
        "Use 'ml' for calibrated intervals only where a smooth Gaussian field is a fair description.",
        "",
        *_cost_lines(costs),
        f"Whole run: {meta['wall_seconds']:.0f} s wall, {meta['cpu_seconds']:.0f} s CPU, load average "
        f"{', '.join(f'{x:.1f}' for x in meta['loadavg'])} ({meta['cpu_count']} cores, shared).",
        "",
    ]
    return "\n".join(lines)


def _cost_lines(costs: list[dict]) -> list[str]:
    if not costs:
        return []
    lines = [
        "## Cost (same process, one after the other; CPU seconds are the comparable figure on a shared machine)",
        "",
        "| fit | spots (sub-spots) x genes | uncertainty | wall s | CPU s | ratio (CPU) | diagonal | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for r in costs:
        key = r["fit"]
        if not r["uncertainty"]:
            base[key] = r["cpu_seconds"]
        ratio = r["cpu_seconds"] / base[key] if r["uncertainty"] and base.get(key) else 1.0
        size = f"{r['n_spots']}" + (f" ({r['n_sub']})" if "n_sub" in r else "")
        lines.append(
            f"| {r['fit']} | {size} x {r['n_genes']} | {r['uncertainty']} | {r['wall_seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | {ratio:.2f} | {r['diag'] or '—'} | {r['loadavg'][0]:.1f} |"
        )
    return [*lines, ""]


if __name__ == "__main__":
    main()
