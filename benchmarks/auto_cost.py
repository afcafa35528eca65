"""Cost of ``sm.tl.smooth(lambda_spatial='auto')`` relative to a fixed lambda (issue 12: at most 2x).

Each case is run in fresh subprocesses (so that peak memory is the process's own): ``base`` (build the data
only), ``fixed`` (``sm.tl.smooth(adata, lambda_spatial=1.0)``) and ``auto`` (``lambda_spatial='auto'``, the default
criterion 'risk'); optionally ``auto_old``: 'auto' with the search of commit efe4061 and before (a factorization of
``I + lambda Q`` and solves for up to 500 genes at each of 18 grid values plus a Brent refinement;
``gcv(method='factor', max_genes=500)``). Reported per mode: CPU seconds of the work (``time.process_time``
after the data are built, all threads of the process; no child processes), wall seconds, the peak resident memory of
the process (``ru_maxrss``) and its increase over ``base``, the lambda chosen. On dask input the result layer is
lazy, so the work includes streaming it once (``layers['smoothed'].sum().compute()``, threaded scheduler), which
never holds the whole dense result.

Cases (this machine has 2 cores shared with other jobs; the load average is recorded):

- ``dlpfc``: 3,600 spots (hex lattice, 6 neighbours) x 2,000 genes, ``sm.datasets.simulate_field`` (Gaussian
  noise, 5 zones), dense float32 in memory;
- ``1e5x1000``, ``1e6x100``: Visium HD-like bins (``sm.datasets.visium_hd``: 8 um / 2 um bins, sparse Poisson counts,
  4 neighbours), computed into memory as scipy CSR;
- ``dask_1e5x1000``: the same 1e5 x 1,000 bins left dask-backed (CSR chunks of 2^15 bins).

Run: ``python benchmarks/auto_cost.py [case ...] [--old] [--modes base,fixed,auto,auto_old] [--repeat R]``;
results (per case and mode) are merged into
``benchmarks/results/auto_cost.json`` and tabulated in ``auto_cost.md``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"

CASES = {
    "dlpfc": {"n": 3600, "genes": 2000, "kind": "field"},
    "1e5x1000": {"n": 100_000, "genes": 1000, "kind": "hd", "bin": 8},
    "1e6x100": {"n": 1_000_000, "genes": 100, "kind": "hd", "bin": 2},
    "dask_1e5x1000": {"n": 100_000, "genes": 1000, "kind": "hd", "bin": 8, "dask": True},
}


def build(case: dict):
    import math

    import numpy as np

    import smoother as sm

    if case["kind"] == "field":
        a = sm.datasets.simulate_field(n_spots=case["n"], layout="hex", n_genes=case["genes"], seed=0)
        a.X = np.asarray(a.X, dtype=np.float32)
        sm.pp.spatial_graph(a)
        return a
    from smoother.datasets._visium_hd import visium_hd

    side = round(math.sqrt(case["n"]))
    a = visium_hd(case["bin"], area_mm=side * case["bin"] / 1000, n_genes=case["genes"], chunk_size=2**15)
    if not case.get("dask"):
        a.X = a.X.compute().tocsr()
    sm.pp.spatial_graph(a, n_neighs=4)
    return a


def worker(name: str, mode: str) -> dict:
    import numpy as np

    import smoother as sm
    from smoother._core import smooth as core

    sm.settings.progress_bar = False
    case = CASES[name]
    t0 = time.process_time()
    a = build(case)
    build_cpu = time.process_time() - t0
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB on Linux)
    rec = {"case": name, "mode": mode, "n_obs": a.n_obs, "n_vars": a.n_vars, "build_cpu_s": round(build_cpu, 2)}
    if mode == "auto_old":
        new = core.gcv

        def old(*args, **kw):
            kw.setdefault("method", "factor")
            kw.setdefault("max_genes", 500)
            return new(*args, **kw)

        core.gcv = old
    spent = [0.0]  # CPU seconds inside the lambda search (core.gcv)
    inner = core.gcv

    def timed(*args, **kw):
        c = time.process_time()
        try:
            return inner(*args, **kw)
        finally:
            spent[0] += time.process_time() - c

    core.gcv = timed
    load = os.getloadavg()
    c0, w0 = time.process_time(), time.perf_counter()
    if mode != "base":
        lam = 1.0 if mode == "fixed" else "auto"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm.tl.smooth(a, lambda_spatial=lam)
        X = a.layers["smoothed"]
        if case.get("dask"):
            rec["checksum"] = float(X.sum().compute())
        else:
            rec["checksum"] = float(np.asarray(X, dtype=np.float64).sum())
        rec["lambda"] = a.uns["smoothed"]["params"]["lambda"]
        g = a.uns["smoothed"].get("gcv")
        if g is not None:
            rec["trace_method"] = g.get("trace_method")
            rec["n_genes_search"] = g.get("n_genes")
    rec["cpu_s"] = round(time.process_time() - c0, 3)
    rec["search_cpu_s"] = round(spent[0], 3)
    rec["wall_s"] = round(time.perf_counter() - w0, 3)
    rec["load_before"] = [round(x, 2) for x in load]
    rec["load_after"] = [round(x, 2) for x in os.getloadavg()]
    rec["peak_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    rec["base_gib"] = round(rss_base, 3)
    return rec


def run_case(name: str, modes: list[str], repeat: int) -> list[dict]:
    recs = []
    for r in range(repeat):
        for mode in modes:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            p = subprocess.run(
                [sys.executable, __file__, "--worker", name, mode],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if p.returncode != 0:
                print(p.stderr[-3000:], flush=True)
                recs.append({"case": name, "mode": mode, "error": p.stderr[-500:]})
                continue
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            rec["repeat"] = r
            print(json.dumps(rec), flush=True)
            recs.append(rec)
    return recs


def summarize(recs: list[dict]) -> dict:
    import numpy as np

    out = {}
    for name in dict.fromkeys(r["case"] for r in recs):
        rows = [r for r in recs if r["case"] == name and "error" not in r]
        by = {m: [r for r in rows if r["mode"] == m] for m in ("base", "fixed", "auto", "auto_old")}
        if not by["fixed"]:
            continue
        base_peak = float(np.median([r["peak_gib"] for r in by["base"]])) if by["base"] else 0.0
        fixed_cpu = float(np.median([r["cpu_s"] for r in by["fixed"]]))
        fixed_mem = float(np.median([r["peak_gib"] for r in by["fixed"]])) - base_peak
        s = {"fixed_cpu_s": fixed_cpu, "fixed_extra_gib": round(fixed_mem, 3), "base_peak_gib": base_peak}
        for m in ("auto", "auto_old"):
            if not by[m]:
                continue
            cpu = float(np.median([r["cpu_s"] for r in by[m]]))
            mem = float(np.median([r["peak_gib"] for r in by[m]])) - base_peak
            s[m] = {
                "cpu_s": cpu,
                "cpu_ratio": round(cpu / fixed_cpu, 2),
                "wall_ratio": round(
                    float(np.median([r["wall_s"] for r in by[m]]))
                    / float(np.median([r["wall_s"] for r in by["fixed"]])),
                    2,
                ),
                "search_cpu_s": float(np.median([r.get("search_cpu_s", np.nan) for r in by[m]])),
                "extra_gib": round(mem, 3),
                "mem_ratio": round(mem / fixed_mem, 2) if fixed_mem > 0.01 else None,
                "peak_ratio": round((mem + base_peak) / (fixed_mem + base_peak), 2),
                "lambda": [r["lambda"] for r in by[m]],
            }
        out[name] = s
    return out


def write(recs: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "auto_cost.json"
    old = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    for r in recs:
        r["commit"] = commit.stdout.strip()
    done = {(r["case"], r["mode"]) for r in recs}
    runs = [r for r in old["runs"] if (r["case"], r["mode"]) not in done] + recs
    summary = summarize(runs)
    path.write_text(json.dumps({**old, "runs": runs, "summary": summary}, indent=1))
    lines = [
        "# Cost of lambda_spatial='auto' relative to a fixed lambda (sm.tl.smooth)",
        "",
        "Generated by `benchmarks/auto_cost.py` (see its docstring). Medians over repeats; each mode in a fresh "
        "process. CPU ratio = CPU seconds of 'auto' / CPU seconds of lambda=1 (both including the final fit); "
        "memory = peak RSS of the process minus the peak after building the data ('extra'), and the ratio of the "
        "whole peaks. `auto (old)`: the factorization search of efe4061 (18 grid values + Brent, 500 genes).",
        "",
        "`search CPU s`: CPU seconds inside the lambda search alone (`core.gcv`; not recorded in the first runs), "
        "and `1 + search/fixed`, the ratio without the run-to-run noise of the two fits. Modes of one case "
        "may come from separate invocations (the `auto (old)` rows, the dask case: one repeat) at other loads "
        "of this shared machine (column `load`: 1-min load average before each run): compare CPU seconds, "
        "not wall seconds.",
        "",
        "| case | fixed CPU s | fixed extra GiB | mode | CPU s | CPU ratio | search CPU s | 1 + search/fixed "
        "| wall ratio | extra GiB | peak ratio | lambda | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        loads = [r["load_before"][0] for r in runs if r["case"] == name and "load_before" in r]
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else ""
        for m, label in (("auto", "auto (new)"), ("auto_old", "auto (old)")):
            if m not in s:
                continue
            a = s[m]
            lam = ", ".join(f"{x:.3g}" for x in a["lambda"])
            lines.append(
                f"| {name} | {s['fixed_cpu_s']:.2f} | {s['fixed_extra_gib']:.2f} | {label} | {a['cpu_s']:.2f} | "
                f"{a['cpu_ratio']:.2f} | {a.get('search_cpu_s', float('nan')):.2f} | "
                f"{1 + a.get('search_cpu_s', float('nan')) / s['fixed_cpu_s']:.2f} | {a['wall_ratio']:.2f} | "
                f"{a['extra_gib']:.2f} | {a['peak_ratio']:.2f} | {lam} | {load} |"
            )
    acc = old.get("accuracy")
    if acc:
        lines += [
            "",
            "## The choice: old search vs new (DLPFC generators of benchmarks/smooth_defaults.py, 3,611 x 350)",
            "",
            "RMSE against the truth of `sm.tl.smooth` with 'auto' (criterion 'risk'); `new` for three gene draws "
            "(random_state 0, 1, 2). CPU s of the whole call (search + fit of 350 genes).",
            "",
            "| generator | rho | search | lambda | RMSE | CPU s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        groups: dict = {}
        for r in acc["rows"]:
            groups.setdefault((r["generator"], r["rho"], r["search"]), []).append(r)
        for (gen, rho, search), rs in groups.items():
            lam = ", ".join(f"{r['lambda']:.3g}" for r in rs)
            rmse = ", ".join(f"{r['rmse']:.4f}" for r in rs)
            cpu = ", ".join(f"{r['cpu_s']:.2f}" for r in rs)
            lines.append(f"| {gen} | {rho} | {search} | {lam} | {rmse} | {cpu} |")
    (OUT / "auto_cost.md").write_text("\n".join(lines) + "\n")


def accuracy() -> list[dict]:
    """The choice and its error against the truth on the DLPFC generators of ``benchmarks/smooth_defaults.py``
    (3,611 spots, 350 genes): the old search (``method='factor'``, 500 genes: all 350) against the new one
    (spectral, one gene in 20 drawn by sum of squares) for three gene draws (``random_state`` 0, 1, 2)."""
    import anndata as ad
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import smooth_defaults as bd

    import smoother as sm
    from smoother._core import smooth as core

    sm.settings.progress_bar = False
    coords, layers, markers = bd.load(bd.data_dir())
    new = core.gcv

    def old(*args, **kw):
        kw.setdefault("method", "factor")
        kw.setdefault("max_genes", 500)
        return new(*args, **kw)

    rows = []
    for kind in ("log+noise", "nb_counts"):
        Y, truth = bd.simulate(coords, layers, markers, kind, 0)
        a = ad.AnnData(Y.astype(np.float32))
        a.obsm["spatial"] = coords
        sm.pp.spatial_graph(a)
        for rho in (0.99, 1.0):
            for label, fn, seeds in (("old", old, [0]), ("new", new, [0, 1, 2])):
                core.gcv = fn
                for rs in seeds:
                    c0 = time.process_time()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        b = sm.tl.smooth(a, rho=rho, copy=True, random_state=rs)
                    rows.append(
                        {
                            "generator": kind,
                            "rho": rho,
                            "search": label,
                            "random_state": rs,
                            "lambda": b.uns["smoothed"]["params"]["lambda"],
                            "rmse": bd.rmse(b.layers["smoothed"], truth),
                            "cpu_s": round(time.process_time() - c0, 3),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            core.gcv = new
    return rows


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--worker":
        print(json.dumps(worker(argv[1], argv[2])))
        return
    if argv and argv[0] == "--accuracy":
        rows = accuracy()
        path = OUT / "auto_cost.json"
        res = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        res["accuracy"] = {"load_average": list(os.getloadavg()), "rows": rows}
        path.write_text(json.dumps(res, indent=1))
        write([])
        return
    repeat = 2
    if "--repeat" in argv:
        i = argv.index("--repeat")
        repeat = int(argv[i + 1])
        del argv[i : i + 2]
    modes = ["base", "fixed", "auto"]
    if "--old" in argv:
        argv.remove("--old")
        modes.append("auto_old")
    if "--modes" in argv:
        i = argv.index("--modes")
        modes = argv[i + 1].split(",")
        del argv[i : i + 2]
    names = argv or list(CASES)
    recs = []
    for name in names:
        recs += run_case(name, modes, repeat)
    write(recs)


if __name__ == "__main__":
    main(sys.argv[1:])
