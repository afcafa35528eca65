"""Scaling out (issue 12): graph + smoothing (fixed lambda) and spatial PCA on dask-backed Visium HD-like data.

For every size (bins) and gene count the script

1. simulates 2 um bins (``sm.datasets.visium_hd``) straight into a ``.zarr`` store in a temporary directory (counts
   never whole in memory) and reads it back lazily (``X``: dask array of CSR chunks from anndata's lazy reader);
2. builds the graph (``sm.pp.spatial_graph``, 4 neighbours: the square grid) and the ICAR precision (rho 0.99);
3. smooths every gene at a fixed lambda (``sm.tl.smooth`` on the dask-backed AnnData when it accepts dask input,
   else the core ``blockwise.smooth_blocks`` on the same system; the JSON says which) and writes the result to
   zarr (``dask.array.to_zarr``): one Cholesky factorization, then block triangular solves;
4. runs ``sm.tl.spatial_pca`` (20 components) on the dask input and writes the scores to zarr;

and records wall time and the peak resident memory of the whole process tree (sampled every 0.1 s) per step, the
machine's load average, and a physical estimate next to each measurement: nested-dissection Cholesky of the
5-point grid, nnz(L) ~ 31/8 n log2 n and ~829/84 n^1.5 flops (George, 1973), 2 nnz(L) multiply-adds per gene
solve, L read once per block of genes, bytes of the stores read and written; at this machine's measured dense
flop rate and memory bandwidth.

Usage::

    python benchmarks/scale_out.py --bins 1e5 1e6 --genes 100 1000 [--steps smooth spca] [--tag name]
    python benchmarks/scale_out.py --bins 1e7 --genes 100 --steps graph       # simulate to zarr + graph only
    python benchmarks/scale_out.py --cluster-check 1e5 200 --skip-table      # LocalCluster vs in memory

Writes ``benchmarks/results/scale_out{_tag}.json`` and ``.md`` (merging with the rows already there).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
LAMBDA = 1.0
SPCA_LAMBDA = 0.1
RHO = 0.99
N_COMPS = 20
GENES_PER_BLOCK = 16


class PeakRSS:
    """Peak resident memory (bytes) of this process and all its children, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001  (a child that just ended)
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its ended children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def step(record: dict, name: str, func):
    """Run ``func()``; store its wall time (s), CPU time (s) and peak RSS (GiB) of the process tree."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    with PeakRSS() as mem:
        out = func()
    record[name] = {
        "time_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(cpu_seconds() - c0, 2),
        "peak_rss_gib": round(mem.peak / 2**30, 2),
    }
    print(f"    {name}: {record[name]}", flush=True)
    return out


def store_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def machine_rates() -> dict:
    """Dense float64 GEMM rate (GFLOP/s, all threads) and memory bandwidth (GB/s, a = b + c) of this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1500, 1500))
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    gflops = 3 * 2 * 1500**3 / (time.perf_counter() - t0) / 1e9
    b = np.ones(2**25)
    c = np.ones(2**25)
    out = np.empty_like(b)
    np.add(b, c, out=out)
    t0 = time.perf_counter()
    for _ in range(5):
        np.add(b, c, out=out)
    gbs = 5 * 3 * b.nbytes / (time.perf_counter() - t0) / 1e9
    return {"gemm_gflops": round(gflops, 1), "stream_gbs": round(gbs, 1)}


def estimate(n: int, g: int, rates: dict, x_bytes: int, nnz_x: int) -> dict:
    """Physical estimate for the 5-point grid with nested dissection (George 1973)."""
    nnz_l = 31 / 8 * n * math.log2(max(n, 2))
    fact_flops = 829 / 84 * n**1.5
    solve_flops = 2 * nnz_l * g  # multiply-adds, forward + backward
    n_blocks = math.ceil(g / GENES_PER_BLOCK)
    solve_bytes = 2 * 12 * nnz_l * n_blocks  # L (value + index) read forward and backward per block of genes
    out_bytes = 4 * n * g  # the float32 smoothed layer (uncompressed)
    rhs_bytes = 2 * 8 * n * g  # dense float64 right-hand sides, read and written per solve
    # spatial PCA: X^T X and X^T (Q X) over sparse rows (z non-zeros per row, Q X ~ 5z)
    z = nnz_x / max(n, 1)
    gram_flops = 2 * n * z * (z + 5 * z)
    # Chebyshev iteration (solver='auto' when the factor does not fit): Gershgorin interval of the grid, lambda 1,
    # 4 block passes (8 bytes) per iteration plus A (12 bytes x 5n) read once per block of 9 genes
    r = LAMBDA * RHO * 4 / (1 + 4 * LAMBDA)
    kappa = (1 + r) / (1 - r)
    sigma = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    its = math.ceil(math.log(2 / 1e-6) / -math.log(sigma))
    cheb_bytes = its * (32 * n * g + 60 * n * math.ceil(g / 9))
    flop_rate = rates["gemm_gflops"] * 1e9
    bw = rates["stream_gbs"] * 1e9
    # sparse kernels run far below the GEMM peak: count factorization at 1/4 of it (supernodal), solves and the
    # sparse gram by memory traffic
    return {
        "nnz_L": int(nnz_l),
        "factor_gflop": round(fact_flops / 1e9, 2),
        "solve_gflop": round(solve_flops / 1e9, 2),
        "solve_traffic_gb": round((solve_bytes + rhs_bytes) / 1e9, 2),
        "bytes_read_gb": round(x_bytes / 1e9, 3),
        "bytes_written_gb": round(out_bytes / 1e9, 3),
        "t_factor_s": round(fact_flops / (0.25 * flop_rate), 2),
        "t_solve_s": round(max(solve_flops / flop_rate, (solve_bytes + rhs_bytes) / bw), 2),
        "spca_gflop": round(gram_flops / 1e9, 2),
        "t_spca_s": round(max(gram_flops / (0.1 * flop_rate), 12 * 7 * nnz_x / bw), 2),
        "cheb_iterations": its,
        "cheb_traffic_gb": round(cheb_bytes / 1e9, 1),
        "t_cheb_s": round(cheb_bytes / bw, 1),
    }


def _block_colsum(b):
    return np.asarray(b.sum(axis=0), dtype=np.float64).ravel()


def column_sums(X) -> np.ndarray:
    """Column sums of a row-chunked dask array with scipy-sparse chunks (one task per chunk)."""
    import dask

    parts = [dask.delayed(_block_colsum)(X.blocks[i, 0]) for i in range(X.numblocks[0])]
    return np.sum(dask.compute(*parts), axis=0)


def residual_check(adata, W, out: Path, lam: float, n_genes: int = 3) -> dict:
    """Relative residual of the written result, recomputed independently for a few genes: ``(I + lam Q)(x - m) =
    y - m`` (centred, as ``sm.tl.smooth``), from the raw counts and the float32 values read back from the store."""
    import scipy.sparse as sp
    import zarr

    from smoother._anndata import get_prior_operator

    op = get_prior_operator(W, "icar", RHO, False)
    A = (sp.identity(W.shape[0], format="csr") + lam * op.Q).tocsr()
    Z = zarr.open_array(str(out), mode="r")
    g = adata.n_vars
    res = []
    for j in sorted({0, g // 2, g - 1}):
        y = adata.X[:, j : j + 1].compute()
        y = (y.toarray() if sp.issparse(y) else np.asarray(y)).ravel().astype(np.float64)
        b = y - y.mean()
        x = np.asarray(Z[:, j], dtype=np.float64) - y.mean()
        res.append(float(np.linalg.norm(b - A @ x) / np.linalg.norm(b)))
    return {"genes": n_genes, "max_rel_residual_float32": max(res)}


def _codec_kwargs(codec: str) -> dict:
    """``dask.array.to_zarr`` keywords for the output codec: zarr's default (zstd level 3) or Blosc-LZ4 with byte
    shuffle, which on smoothed float32 values compresses better (1.25 vs 1.18) at ~40% of the CPU time."""
    if codec == "zstd":
        return {}
    from zarr.codecs import BloscCodec

    return {"zarr_array_kwargs": {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}}


def smooth_supports_dask() -> bool:
    from smoother.tl import _smooth

    return "is_dask" in inspect.getsource(_smooth)


def run_one(
    n_target: int,
    g: int,
    steps: list[str],
    tmp: Path,
    rates: dict,
    chunk: int,
    spca_standardize: bool = True,
    bin_um: int = 2,
    solver: str = "auto",
    codec: str = "zstd",
    lam: float | str = LAMBDA,
) -> dict:
    import dask.array as da
    import zarr

    import smoother as sm
    from smoother._core import blockwise
    from smoother.datasets._visium_hd import visium_hd

    side = round(math.sqrt(n_target))
    area = side * bin_um / 1000
    rec: dict = {"bins_target": n_target, "genes": g, "bin_um": bin_um, "load_before": os.getloadavg()}
    store = tmp / f"hd_{n_target}_{g}.zarr"
    print(f"  {side}x{side} {bin_um} um bins x {g} genes", flush=True)
    adata = step(
        rec,
        "simulate_to_zarr",
        lambda: visium_hd(bin_um, area_mm=area, n_genes=g, chunk_size=chunk, store=store, random_state=0),
    )
    n = adata.n_obs
    rec["bins"] = n
    rec["store_gb"] = round(store_bytes(store) / 1e9, 3)
    nnz_x = int(zarr.open(str(store), mode="r")["X"]["indptr"][-1])
    rec["nnz_X"] = nnz_x
    rec["estimate"] = estimate(n, g, rates, store_bytes(Path(store) / "X"), nnz_x)

    step(rec, "graph", lambda: sm.pp.spatial_graph(adata, n_neighs=4))
    W = adata.obsp["spatial_connectivities"]

    if "smooth" in steps:
        out = tmp / f"smoothed_{n_target}_{g}.zarr"
        rec["smooth_via"] = "sm.tl.smooth (dask-backed AnnData)"
        rec["codec"] = codec
        rec["lambda_spatial"] = lam

        def run_smooth():
            t0, c0 = time.perf_counter(), cpu_seconds()
            sm.tl.smooth(adata, prior="icar", rho=RHO, lambda_spatial=lam, solver=solver)
            # the call itself: the column means (one pass over the data) and, with 'auto', the search of lambda;
            # the lazy fit runs in to_zarr
            rec["smooth_call"] = {"time_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu_seconds() - c0, 2)}
            da.to_zarr(adata.layers["smoothed"], str(out), **_codec_kwargs(codec))

        blockwise.clear_cache()
        step(rec, "smooth", run_smooth)
        u = adata.uns["smoothed"]
        rec["smooth_solver"] = u["params"]["solver"]
        rec["lambda_used"] = float(u["lambda"])
        rec["smooth_tol"] = u["params"]["tol"]
        if "solver" in u:  # iterative: what the blocks solved in this process (threaded scheduler) achieved
            infos = [i for i in blockwise.solver_info(u["solver"]["token"]) if i["method"] == rec["smooth_solver"]]
            if infos:
                i = infos[0]
                rec["solver_info"] = {k: i[k] for k in ("kappa_bound", "columns", "iterations_max", "residual_max")}
        rec["residual_check"] = residual_check(adata, W, out, float(u["lambda"]))
        print("    solver", rec["smooth_solver"], rec.get("solver_info"), rec["residual_check"], flush=True)
        blockwise.clear_cache()
        rec["smooth_written_gb"] = round(store_bytes(out) / 1e9, 3)
        shutil.rmtree(out, ignore_errors=True)

    if "spca" in steps:
        out = tmp / f"spca_{n_target}_{g}.zarr"

        def run_spca():
            with warnings.catch_warnings():  # raw 2 um counts: the trailing components may be negative
                warnings.simplefilter("ignore", UserWarning)
                sm.tl.spatial_pca(
                    adata,
                    n_comps=N_COMPS,
                    lambda_spatial=SPCA_LAMBDA,
                    prior="icar",
                    rho=RHO,
                    standardize=spca_standardize,
                )
            da.to_zarr(adata.obsm["X_spatial_pca"], str(out))

        rec["spca_standardize"] = spca_standardize
        step(rec, "spatial_pca", run_spca)
        shutil.rmtree(out, ignore_errors=True)
    rec["load_after"] = os.getloadavg()
    shutil.rmtree(store, ignore_errors=True)
    return rec


def _row_key(rec: dict) -> tuple:
    """Rows are replaced per (bins, genes, whether lambda was 'auto')."""
    return rec["bins_target"], rec["genes"], rec.get("lambda_spatial") == "auto"


def _bins(rec: dict) -> str:
    """Number of bins, with the bin size when it is not 2 um."""
    um = rec.get("bin_um", 2)
    return f"{rec['bins']:,}" + ("" if um == 2 else f" ({um} um)")


def _wc(rec: dict) -> str:
    """``wall (cpu)`` of a step record."""
    return f"{rec['time_s']} ({rec['cpu_s']} CPU)" if "cpu_s" in rec else f"{rec['time_s']}"


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Scaling out: graph + smooth (fixed lambda) and spatial PCA on dask-backed Visium HD-like data",
        "",
        f"Machine: {m['cpus']} cores, {m['mem_gib']} GiB, {m['gemm_gflops']} GFLOP/s dense GEMM, "
        f"{m['stream_gbs']} GB/s memory bandwidth (measured at the start of the latest run; each row's estimate uses "
        "the rates measured in its own run); shared with other jobs - load average "
        "before/after each row is listed. 2 um bins from `sm.datasets.visium_hd` written to zarr and read back "
        f"lazily (CSR chunks); ICAR rho={RHO}, graph of 4 neighbours; smoothing lambda={LAMBDA} (centred, as "
        f"sm.tl.smooth), {N_COMPS} spatial PCs at lambda={SPCA_LAMBDA}. "
        "Wall times in seconds (CPU seconds of the process in brackets where recorded; est. = physical estimate), "
        "spatial_pca includes building the standardized precision. Peak RSS of the whole process tree in GiB. "
        "Estimate: nested-dissection Cholesky of the "
        "5-point grid (nnz(L) ~ 31/8 n log2 n, 829/84 n^1.5 flops at 1/4 of the GEMM rate), solves 2 nnz(L) "
        "multiply-adds per gene bounded by memory traffic (L read per 16-gene block), spatial PCA by its sparse "
        "products.",
        "",
        "| bins | genes | nnz(X) | simulate->zarr s | graph s | smooth s (est.) | smooth GiB | spatial_pca s (est.) "
        "| spca GiB | nnz(L) est. | factor GFLOP | solve GFLOP | read GB | written GB | load before/after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in res["rows"]:
        e = r["estimate"]
        sm_t = _wc(r["smooth"]) if "smooth" in r else "-"
        sm_m = r.get("smooth", {}).get("peak_rss_gib", "-")
        sp_t = _wc(r["spatial_pca"]) if "spatial_pca" in r else "-"
        if "spatial_pca" in r and not r.get("spca_standardize", True):
            sp_t += " [standardize=False]"
        sp_m = r.get("spatial_pca", {}).get("peak_rss_gib", "-")
        iterative = r.get("smooth_solver") in ("cg", "chebyshev")
        est_smooth = e["t_cheb_s"] if iterative else round(e["t_factor_s"] + e["t_solve_s"], 1)
        if "smooth" in r and "smooth_solver" in r:
            sm_t += f" [{r['smooth_solver']}"
            if r.get("lambda_spatial") == "auto":
                call = r.get("smooth_call", {})
                sm_t += f", lambda 'auto' -> {r['lambda_used']:.3g}, search + means {_wc(call)} s" if call else ""
            sm_t += f", {r['codec']}]" if "codec" in r else "]"
        lines.append(
            f"| {_bins(r)} | {r['genes']:,} | {r['nnz_X']:,} | {r['simulate_to_zarr']['time_s']} | "
            f"{r['graph']['time_s']} | {sm_t} ({est_smooth}) | {sm_m} | {sp_t} ({e['t_spca_s']}) | {sp_m} | "
            f"{e['nnz_L']:.3g} | {e['factor_gflop']} | {e['solve_gflop']} | {e['bytes_read_gb']} | "
            f"{r.get('smooth_written_gb', '-')} | {r['load_before'][0]:.1f}/{r['load_after'][0]:.1f} |"
        )
    for r in res["rows"]:
        if "residual_check" in r:
            info = r.get("solver_info", {})
            lines += [
                "",
                f"Smoothing at {r['bins']:,} bins ({r['bin_um']} um) x {r['genes']:,} genes by `{r['smooth_solver']}`"
                + (
                    f" (tol {r['smooth_tol']:g}; Gershgorin bound on the Jacobi-scaled condition number "
                    f"{info.get('kappa_bound', float('nan')):.3g}, at most {info.get('iterations_max')} iterations, "
                    f"largest achieved relative residual {info.get('residual_max', float('nan')):.2g} over "
                    f"{info.get('columns')} genes; estimate {r['estimate']['cheb_iterations']} iterations, "
                    f"{r['estimate']['cheb_traffic_gb']} GB of memory traffic)"
                    if r.get("smooth_tol")
                    else ""
                )
                + f": relative residual recomputed independently from the counts and the float32 result read back "
                f"for 3 genes: {r['residual_check']['max_rel_residual_float32']:.2g}.",
            ]
    skipped = [r for r in res["rows"] if "smooth_skipped" in r]
    for r in skipped:
        lines += ["", f"Smoothing at {r['bins']:,} bins x {r['genes']:,} genes not run: {r['smooth_skipped']}."]
    vias = sorted({r.get("smooth_via", "") for r in res["rows"]} - {""})
    lines += ["", "Smoothing ran through: " + "; ".join(vias) + "." if vias else ""]
    if any("factor" in r for r in res["rows"]):
        lines += [
            "",
            "Wall (CPU) seconds of the smoothing steps; CPU time is absent for rows measured before it was recorded.",
            "",
            "| bins | genes | precision s | factor s (est.) | solve+write s (est.) |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in res["rows"]:
            if "factor" in r:
                e = r["estimate"]
                lines.append(
                    f"| {_bins(r)} | {r['genes']:,} | {_wc(r['precision'])} | {_wc(r['factor'])} "
                    f"({e['t_factor_s']}) | {_wc(r['solve_and_write'])} ({e['t_solve_s']}) |"
                )
    c = res.get("cluster_check")
    if c:
        lines += [
            "",
            f"LocalCluster check ({c['workers']} worker processes, 1 thread each; 8 um bins): spatial_pca on "
            f"{c['bins']:,} bins x {c['genes']} genes took {c['cluster_s']} s on the cluster vs {c['in_memory_s']} s "
            f"in memory; largest relative difference of the scores {c['max_rel_diff_scores']:.1e}, of the "
            f"objective {c['max_rel_diff_objective']:.1e}; worker RSS afterwards {c['worker_rss_gib']} GiB.",
        ]
    cmp_ = res.get("solver_comparison")
    if cmp_:
        lines += [
            "",
            f"Solvers side by side (one run, load {cmp_['load_before'][0]:.1f}/{cmp_['load_after'][0]:.1f}): "
            f"I + lambda Q on {cmp_['bins']:,} 2 um bins (ICAR rho {RHO}), {cmp_['genes']} standard-normal "
            "right-hand sides, float64, tolerance 1e-6 for the iterative ones; residual recomputed independently.",
            "",
            "| lambda | solver | setup CPU s | solve CPU s | iterations | kappa bound | residual | rel. diff to factor "
            "|",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in cmp_["runs"]:
            lines.append(
                f"| {r['lambda']:g} | {r['solver']} | {r['setup_cpu_s']} | {r['solve_cpu_s']} | "
                f"{r['iterations'] if r['iterations'] is not None else '-'} | "
                f"{'-' if r['kappa_bound'] is None else round(r['kappa_bound'], 1)} | "
                f"{r['residual']:.1e} | {r['max_rel_diff_to_cholesky']:.1e} |"
            )
    return "\n".join(lines) + "\n"


def warmup(tmp: Path) -> None:
    """Import and compile everything once on a tiny problem, so that no step pays first-call costs."""
    import dask.array as da

    import smoother as sm
    from smoother._anndata import get_prior_operator
    from smoother._core import blockwise
    from smoother.datasets._visium_hd import visium_hd

    a = visium_hd(2, area_mm=0.06, n_genes=30, store=tmp / "warmup.zarr")
    sm.pp.spatial_graph(a, n_neighs=4)
    op = get_prior_operator(a.obsp["spatial_connectivities"], "icar", RHO, True)
    A = (op.Q * LAMBDA).tocsr()
    A.setdiag(A.diagonal() + 1.0)
    blockwise.smooth_blocks(a.X, A, token="warmup", genes_per_block=8).compute()
    blockwise.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.spatial_pca(a, n_comps=3)
    da.to_zarr(a.obsm["X_spatial_pca"], str(tmp / "warmup_out.zarr"))
    shutil.rmtree(tmp / "warmup.zarr")
    shutil.rmtree(tmp / "warmup_out.zarr")


def cluster_check(n_target: int, g: int, workers: int = 2) -> dict:
    """spatial_pca on a ``workers``-process LocalCluster against the in-memory path (issue 12: 100k x 200)."""
    import psutil
    from distributed import Client, LocalCluster

    import smoother as sm
    from smoother.datasets._visium_hd import visium_hd

    side = round(math.sqrt(n_target))
    adata = visium_hd(8, area_mm=side * 8 / 1000, n_genes=g, chunk_size=2**15, random_state=0)
    sm.pp.spatial_graph(adata, n_neighs=4)
    mem = adata.copy()
    mem.X = adata.X.compute(scheduler="threads")
    rec: dict = {"bins": adata.n_obs, "genes": g, "workers": workers, "load_before": os.getloadavg()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        sm.tl.spatial_pca(mem, n_comps=N_COMPS, lambda_spatial=SPCA_LAMBDA)
        rec["in_memory_s"] = round(time.perf_counter() - t0, 2)
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
            Client(lc) as client,
        ):
            t0 = time.perf_counter()
            sm.tl.spatial_pca(adata, n_comps=N_COMPS, lambda_spatial=SPCA_LAMBDA)
            H = adata.obsm["X_spatial_pca"].compute()
            rec["cluster_s"] = round(time.perf_counter() - t0, 2)
            rss = client.run(lambda: psutil.Process().memory_info().rss)
            rec["worker_rss_gib"] = [round(v / 2**30, 2) for v in rss.values()]
    ref = mem.obsm["X_spatial_pca"].astype(np.float64)
    rec["max_rel_diff_scores"] = float(np.abs(H - ref).max() / np.abs(ref).max())
    rec["max_rel_diff_objective"] = float(
        np.max(np.abs(adata.uns["spatial_pca"]["objective"] - mem.uns["spatial_pca"]["objective"]))
        / np.abs(mem.uns["spatial_pca"]["objective"]).max()
    )
    rec["load_after"] = os.getloadavg()
    print("  cluster check", rec, flush=True)
    return rec


def compare_solvers(n_target: int, g: int, lams=(1.0, 10.0)) -> dict:
    """The factor, Jacobi-CG, AMG-CG and the Chebyshev iteration on one system (2 um grid, ICAR rho 0.99), in one
    run: setup and solve CPU seconds for ``g`` standard-normal right-hand sides, iterations, the residual recomputed
    here and the relative difference to the factor's solution."""
    import scipy.sparse as sp

    import smoother as sm
    from smoother._anndata import get_prior_operator
    from smoother._core.iterative import CGSolver, ChebyshevSolver
    from smoother._core.linalg import SPDFactor
    from smoother.datasets._visium_hd import visium_hd

    side = round(math.sqrt(n_target))
    a = visium_hd(2, area_mm=side * 2 / 1000, n_genes=1, random_state=0)
    sm.pp.spatial_graph(a, n_neighs=4)
    op = get_prior_operator(a.obsp["spatial_connectivities"], "icar", RHO, False)
    n = op.Q.shape[0]
    B = np.random.default_rng(0).standard_normal((n, g))
    out: dict = {"bins": n, "genes": g, "load_before": os.getloadavg(), "runs": []}
    makers = {
        "cholesky": SPDFactor,
        "cg-jacobi": lambda A: CGSolver(A, preconditioner="jacobi"),
        "cg-amg": lambda A: CGSolver(A, preconditioner="amg"),
        "chebyshev": ChebyshevSolver,
    }
    for lam in lams:
        A = (sp.identity(n, format="csr") + lam * op.Q).tocsr()
        ref = None
        for name, make in makers.items():
            c0 = time.process_time()
            s = make(A)
            c1 = time.process_time()
            X = s.solve(B)
            c2 = time.process_time()
            res = float((np.linalg.norm(B - A @ X, axis=0) / np.linalg.norm(B, axis=0)).max())
            ref = X if name == "cholesky" else ref
            diff = float(np.abs(X - ref).max() / np.abs(ref).max())
            r = {
                "lambda": lam,
                "solver": name,
                "setup_cpu_s": round(c1 - c0, 2),
                "solve_cpu_s": round(c2 - c1, 2),
                "iterations": s.info.get("iterations_max"),
                "kappa_bound": s.info.get("kappa_bound"),
                "residual": res,
                "max_rel_diff_to_cholesky": diff,
            }
            out["runs"].append(r)
            print("   ", r, flush=True)
            del s, X
    out["load_after"] = os.getloadavg()
    return out


def write(path_json: Path, machine: dict, rows: dict, checks) -> None:
    res = {"machine": machine, "rows": sorted(rows.values(), key=lambda r: (r["bins_target"], r["genes"]))}
    if checks:
        res.update({k: v for k, v in checks.items() if v is not None})
    path_json.write_text(json.dumps(res, indent=1, default=float))
    path_json.with_suffix(".md").write_text(to_markdown(res))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bins", nargs="+", type=float, default=[1e5, 1e6])
    p.add_argument("--genes", nargs="+", type=int, default=[100, 1000])
    p.add_argument("--steps", nargs="+", default=["smooth", "spca"], choices=["smooth", "spca", "graph"])
    p.add_argument("--chunk", type=int, default=2**18, help="bins per dask chunk")
    p.add_argument("--bin-um", type=int, default=2, choices=[2, 8, 16], help="bin size of the simulated data")
    p.add_argument(
        "--solver", default="auto", choices=["auto", "cholesky", "cg", "chebyshev"], help="sm.tl.smooth(solver=)"
    )
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument(
        "--codec", default="blosc-lz4", choices=["blosc-lz4", "zstd"], help="codec of the smoothed output store"
    )
    p.add_argument("--lambda", dest="lam", default=str(LAMBDA), help="smoothing lambda_spatial (a number or 'auto')")
    p.add_argument("--cluster-check", nargs=2, type=float, metavar=("BINS", "GENES"), default=None)
    p.add_argument(
        "--spca-unstandardized",
        action="store_true",
        help="spatial_pca with standardize=False (skips the selected inversion of the precision)",
    )
    p.add_argument("--compare-solvers", nargs=2, type=float, metavar=("BINS", "GENES"), default=None)
    p.add_argument("--skip-table", action="store_true", help="only the cluster check / solver comparison")
    p.add_argument("--tmp", default=None, help="directory for the zarr stores (default: a new temp dir)")
    args = p.parse_args(argv)

    import psutil

    rates = machine_rates()
    machine = {
        "cpus": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        **rates,
    }
    print("machine", machine, "load", os.getloadavg(), flush=True)
    name = "scale_out" + (f"_{args.tag}" if args.tag else "")
    path_json = OUT / f"{name}.json"
    old = json.loads(path_json.read_text()) if path_json.exists() else {"rows": []}
    rows = {_row_key(r): r for r in old.get("rows", [])}
    tmp = Path(tempfile.mkdtemp(prefix="scale_out_", dir=args.tmp))
    warmup(tmp)
    if args.cluster_check:
        old["cluster_check"] = cluster_check(int(args.cluster_check[0]), int(args.cluster_check[1]))
    if args.compare_solvers:
        old["solver_comparison"] = compare_solvers(int(args.compare_solvers[0]), int(args.compare_solvers[1]))
    checks = {"cluster_check": old.get("cluster_check"), "solver_comparison": old.get("solver_comparison")}
    if args.skip_table and "machine" in old:
        machine = old["machine"]  # the table's rows were measured with the earlier rates
    try:
        for n in [] if args.skip_table else args.bins:
            for g in args.genes:
                rec = run_one(
                    int(n),
                    g,
                    args.steps,
                    tmp,
                    rates,
                    args.chunk,
                    not args.spca_unstandardized,
                    bin_um=args.bin_um,
                    solver=args.solver,
                    codec=args.codec,
                    lam=args.lam if args.lam == "auto" else float(args.lam),
                )
                rows[_row_key(rec)] = rec
                write(path_json, machine, rows, checks)
        write(path_json, machine, rows, checks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
