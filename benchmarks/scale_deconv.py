"""Deconvolution of dask-backed Visium HD-like bins (issue 12: NNLS, 20 types, 2 um bins x 2,000 genes < 15 min).

For each size: simulate 2 um bins with 20 tissue domains (``sm.datasets.visium_hd``, written to a zarr store and
read back lazily as CSR chunks), build the 4-neighbour graph (``sm.pp.spatial_graph``) and run
``sm.tl.deconvolve(model='nnls', lambda_spatial=1)`` with the 20 domain profiles (``varm['domain_mean']``) as the
reference. Each bin holds one domain, so the accuracy check is the share of bins whose largest proportion is their
own domain (2 um bins hold ~4 UMIs: most of them carry almost no information on their own; the spatial prior
pools their neighbours). Wall and CPU seconds and the peak RSS of the process tree per step; results in
``results/scale_deconv.{json,md}``.

Usage: ``python benchmarks/scale_deconv.py --area 0.4 2.0 6.32`` (side of the simulated square in mm; 6.32 mm
gives 10^7 bins).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scale_out import PeakRSS, cpu_seconds, step  # noqa: F401  (same measurement helpers as the smoothing table)

RESULTS = Path(__file__).resolve().parent / "results"
N_TYPES, N_GENES, LAMBDA = 20, 2000, 1.0


def run(area: float, tmp: Path) -> dict:
    import smoother as sm

    rec: dict = {"area_mm": area, "load_before": [round(x, 1) for x in os.getloadavg()]}
    store = tmp / f"hd_{area}.zarr"
    adata = step(
        rec,
        "simulate_to_zarr",
        lambda: sm.datasets.visium_hd(2, area_mm=area, n_genes=N_GENES, n_domains=N_TYPES, store=store),
    )
    rec["bins"], rec["genes"] = int(adata.n_obs), int(adata.n_vars)
    step(rec, "graph", lambda ad=adata: sm.pp.spatial_graph(ad, n_neighs=4))
    reference = pd.DataFrame(
        adata.varm["domain_mean"], index=adata.var_names, columns=[f"type{k}" for k in range(N_TYPES)]
    )
    step(
        rec,
        "deconvolve",
        lambda ad=adata: sm.tl.deconvolve(ad, reference, model="nnls", lambda_spatial=LAMBDA, bias=False),
    )
    conv = adata.uns["props"]["convergence"]
    rec["solver"] = {
        "n_iter": int(conv["n_iter"]),
        "kkt_residual": float(conv["kkt_residual"]),
        "converged": bool(conv["converged"]),
        "solve_wall_s": round(float(conv["seconds"]), 2),
    }
    props = np.asarray(adata.obsm["props"])
    truth = adata.obs["domain"].cat.codes.to_numpy()
    rec["argmax_accuracy"] = round(float(np.mean(props.argmax(axis=1) == truth)), 4)
    rec["sum_to_one_max_dev"] = float(np.abs(props.sum(axis=1) - 1).max())
    rec["load_after"] = [round(x, 1) for x in os.getloadavg()]
    del adata
    shutil.rmtree(store, ignore_errors=True)
    return rec


def pass_timing(side: int, n_types: int = N_TYPES, reps: int = 5) -> dict:
    """CPU and wall seconds of one fused FISTA pass on a ``side x side`` grid (ICAR, random C), 1 and 2 threads."""
    import numba
    import scipy.sparse as sp

    from smoother._core import deconv as core

    n = side * side
    rng = np.random.default_rng(0)
    T = sp.diags([np.ones(side - 1), np.ones(side - 1)], [-1, 1])
    A = (sp.kron(sp.identity(side), T) + sp.kron(T, sp.identity(side))).tocsr()
    Q = (sp.diags(np.asarray(A.sum(axis=1)).ravel()) - 0.99 * A).tocsr()
    indptr, indices, qdata = Q.indptr.astype(np.int32), Q.indices.astype(np.int32), Q.data
    X = rng.gamma(1.0, 1.0, size=(N_GENES, n_types)) / N_GENES
    H = X.T @ X
    C = rng.standard_normal((n, n_types)) * 1e-3
    Zc = np.abs(rng.standard_normal((n, n_types))) * 1e-2
    Zp = 0.9 * Zc
    Zn = np.empty_like(Zc)
    s, hd, qd = np.ones(n_types), np.diag(H).copy(), Q.diagonal()
    k_step = core._fista_kernels()[0]
    nb = (n + core._BLOCK - 1) // core._BLOCK
    stats = np.zeros((nb, 5))
    args = (indptr, indices, qdata, H, C, Zc, Zp, Zn, 0.5, 1e-8, 1e-5, s, hd, qd, 2.0, 1e-12, True, core._BLOCK, stats)
    out = {"bins": n, "types": n_types, "load_before": [round(x, 1) for x in os.getloadavg()]}
    default = numba.get_num_threads()
    for nt in sorted({1, default}):
        numba.set_num_threads(nt)
        k_step(*args)
        best = (np.inf, np.inf)
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            k_step(*args)
            best = min(best, (time.process_time() - c, time.perf_counter() - t))
        out[f"threads_{nt}"] = {"cpu_s": round(best[0], 3), "wall_s": round(best[1], 3)}
    numba.set_num_threads(default)
    out["load_after"] = [round(x, 1) for x in os.getloadavg()]
    return out


def to_markdown(rows: list[dict], machine: dict, timing: list[dict] | None = None) -> str:
    lines = [
        "# Deconvolution on dask-backed Visium HD-like 2 um bins (NNLS, 20 types, lambda = 1)",
        "",
        f"Machine: {machine['cores']} cores, {machine['mem_gib']} GiB, shared with other jobs (load average before/"
        "after each row). `sm.datasets.visium_hd(2, n_domains=20, n_genes=2000)` written to zarr and read back lazily"
        " (CSR chunks); graph of 4 neighbours; `sm.tl.deconvolve(model='nnls', lambda_spatial=1, bias=False)` with "
        "the 20 domain profiles as the reference. Wall seconds (CPU seconds in brackets); 'of which FISTA' is the "
        "wall time of the solver alone (relative KKT tolerance 1e-6); peak RSS of the process tree. Accuracy: "
        "share of bins whose largest proportion is their own domain. Target (issue 12): "
        "< 15 min and < 12 GiB at 2 um (~10^7 bins) x 2,000 genes.",
        "",
        "| bins | genes | simulate->zarr s | graph s | deconvolve s | of which FISTA s | iterations | KKT residual "
        "| peak GiB | argmax accuracy | load before/after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        d = r["deconvolve"]
        peak = max(r[k]["peak_rss_gib"] for k in ("simulate_to_zarr", "graph", "deconvolve"))
        sv = r.get("solver", {})
        lines.append(
            f"| {r['bins']:,} | {r['genes']:,} | {r['simulate_to_zarr']['time_s']} | {r['graph']['time_s']} | "
            f"{d['time_s']} ({d['cpu_s']} CPU) | {sv.get('solve_wall_s', '')} | {sv.get('n_iter', '')} | "
            f"{sv.get('kkt_residual', float('nan')):.1e} | {peak} | {r['argmax_accuracy']} | "
            f"{r['load_before'][0]}/{r['load_after'][0]} |"
        )
    if timing:
        lines += [
            "",
            "One fused FISTA pass (the whole per-iteration cost: gradient at the extrapolated point, step, projection,"
            " restart test, KKT residual and loss of the current iterate) on a grid with an ICAR precision and 20 "
            "types, best of 5; CPU seconds (wall in brackets):",
            "",
            "| bins | 1 thread | 2 threads | load before/after |",
            "| ---: | ---: | ---: | --- |",
        ]
        for t in timing:
            one, two = t.get("threads_1", {}), t.get("threads_2", {})
            lines.append(
                f"| {t['bins']:,} | {one.get('cpu_s', '')} ({one.get('wall_s', '')}) | {two.get('cpu_s', '')} "
                f"({two.get('wall_s', '')}) | {t['load_before'][0]}/{t['load_after'][0]} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--area", type=float, nargs="*", default=[0.4, 2.0])
    ap.add_argument("--out", default="scale_deconv")
    ap.add_argument("--pass-timing", type=int, nargs="*", default=[], help="grid sides for the per-pass timing")
    args = ap.parse_args(argv)
    import psutil

    machine = {
        "cores": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    path = RESULTS / f"{args.out}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows, timing = old.get("rows", []), old.get("pass_timing", [])
    for side in args.pass_timing:
        print(f"pass timing {side} x {side}", flush=True)
        t = pass_timing(side)
        timing = sorted([x for x in timing if x["bins"] != t["bins"]] + [t], key=lambda x: x["bins"])
        path.write_text(json.dumps({"machine": machine, "rows": rows, "pass_timing": timing}, indent=1))
        (RESULTS / f"{args.out}.md").write_text(to_markdown(rows, machine, timing))
    with tempfile.TemporaryDirectory() as tmp:
        for area in args.area:
            print(f"area {area} mm", flush=True)
            rec = run(area, Path(tmp))
            rows = [r for r in rows if r["bins"] != rec["bins"]] + [rec]
            rows.sort(key=lambda r: r["bins"])
            path.write_text(json.dumps({"machine": machine, "rows": rows, "pass_timing": timing}, indent=1))
            (RESULTS / f"{args.out}.md").write_text(to_markdown(rows, machine, timing))


if __name__ == "__main__":
    main()
