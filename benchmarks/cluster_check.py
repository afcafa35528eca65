"""A ``distributed.LocalCluster`` against the in-memory path (issue 12): same results, worker memory vs genes.

For each gene count, Visium HD-like 8 um bins (``sm.datasets.visium_hd``, a dask array of CSR chunks) are smoothed
(``sm.tl.smooth``, ICAR rho 0.99, lambda 1, written to a zarr store by the workers), reduced
(``sm.tl.spatial_pca``, 20 components) and deconvolved (``sm.tl.deconvolve(model='nnls')`` with the domain profiles
as reference) twice: on a fresh LocalCluster of 2 worker processes (1 thread each) from the dask-backed AnnData, and
in memory from the same counts. Recorded: the largest relative difference of each result, wall seconds, and the
peak RSS of the worker processes during each step (sampled every 20 ms from the client), which should not grow with
the number of genes (blocks are streamed).

Usage: ``python benchmarks/cluster_check.py --bins 1e5 --genes 200 800``; writes ``results/cluster_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


class WorkerRSS:
    """Peak resident memory of given worker processes, sampled every 20 ms in a thread; :meth:`take` returns the
    peaks (GiB) since the previous call and starts a new window."""

    def __init__(self, pids):
        import threading

        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peaks = [0] * len(pids)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sample()
        self._thread.start()

    def _sample(self):
        with self._lock:
            for i, p in enumerate(self.procs):
                try:
                    self.peaks[i] = max(self.peaks[i], p.memory_info().rss)
                except Exception:  # noqa: BLE001  (a worker that just restarted)
                    pass

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.02)

    def take(self) -> list[float]:
        self._sample()
        with self._lock:
            out = [round(v / 2**30, 3) for v in self.peaks]
            self.peaks = [0] * len(self.peaks)
        return out

    def stop(self):
        self._stop.set()
        self._thread.join()


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def run(n_target: int, g: int, workers: int = 2) -> dict:
    import zarr
    from distributed import Client, LocalCluster

    import smoother as sm
    from smoother.datasets._visium_hd import visium_hd

    side = round(math.sqrt(n_target))
    adata = visium_hd(8, area_mm=side * 8 / 1000, n_genes=g, n_domains=8, chunk_size=2**15, random_state=0)
    sm.pp.spatial_graph(adata, n_neighs=4)
    mem = adata.copy()
    mem.X = adata.X.compute(scheduler="threads")
    ref = np.asarray(adata.varm["domain_mean"])
    ref_df = pd.DataFrame(ref, index=adata.var_names, columns=[f"type{k}" for k in range(ref.shape[1])])
    rec: dict = {"bins": adata.n_obs, "genes": g, "workers": workers, "load_before": os.getloadavg()}
    kw = {"prior": "icar", "rho": 0.99, "lambda_spatial": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        sm.tl.smooth(mem, **kw)
        sm.tl.spatial_pca(mem, n_comps=20, lambda_spatial=0.1)
        sm.tl.deconvolve(mem, ref_df, model="nnls", lambda_spatial=1.0, bias=False)
        rec["in_memory_s"] = round(time.perf_counter() - t0, 2)
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
            Client(lc) as client,
        ):
            pids = list(client.run(os.getpid).values())
            mon = WorkerRSS(pids)
            t0 = time.perf_counter()
            rec["worker_rss_gib_start"] = mon.take()
            sm.tl.smooth(adata, **kw)
            # streamed to a store by the workers (a .compute() would hold the whole result for the client)
            with tempfile.TemporaryDirectory() as tmp:
                adata.layers["smoothed"].to_zarr(f"{tmp}/smoothed.zarr")
                rec["worker_peak_rss_gib_smooth"] = mon.take()
                Xs = zarr.open_array(f"{tmp}/smoothed.zarr", mode="r")[:]
            sm.tl.spatial_pca(adata, n_comps=20, lambda_spatial=0.1)
            H = adata.obsm["X_spatial_pca"].compute()
            rec["worker_peak_rss_gib_spca"] = mon.take()
            sm.tl.deconvolve(adata, ref_df, model="nnls", lambda_spatial=1.0, bias=False)
            rec["cluster_s"] = round(time.perf_counter() - t0, 2)
            rec["worker_peak_rss_gib_deconvolve"] = mon.take()
            mon.stop()
    P, Pm = np.asarray(adata.obsm["props"]), np.asarray(mem.obsm["props"])
    rec["max_rel_diff"] = {
        "smooth": _rel(Xs, mem.layers["smoothed"]),
        "spatial_pca_scores": _rel(H, mem.obsm["X_spatial_pca"]),
        "deconvolve_proportions": _rel(P, Pm),
    }
    rec["load_after"] = os.getloadavg()
    print(" ", rec, flush=True)
    return rec


def _peaks(r: dict) -> str:
    keys = ("worker_rss_gib_start", "worker_peak_rss_gib_smooth", "worker_peak_rss_gib_spca")
    return " / ".join(str(max(r[k])) for k in (*keys, "worker_peak_rss_gib_deconvolve"))


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "# LocalCluster (2 worker processes, 1 thread each) vs the in-memory path",
        "",
        "Written by `benchmarks/cluster_check.py`. Visium HD-like 8 um bins (dask array of CSR chunks); "
        "`sm.tl.smooth` (ICAR 0.99, lambda 1), `sm.tl.spatial_pca` (20 components, lambda 0.1) and "
        "`sm.tl.deconvolve(model='nnls', lambda_spatial=1)` run on the dask-backed AnnData with a `distributed` "
        "client, and on the same counts in memory. Largest relative difference (max |a - b| / max |b|) of each "
        "result; largest RSS of a worker process before the first step and its peak during each step (sampled "
        "every 20 ms). Shared 2-core machine: load average before/after.",
        "",
        "| bins | genes | smooth rel. diff | spatial PCA scores rel. diff | proportions rel. diff | worker peak RSS "
        "GiB: at start / smooth / spatial PCA / deconvolve | cluster s | in memory s | load |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        d = r["max_rel_diff"]
        lines.append(
            f"| {r['bins']:,} | {r['genes']:,} | {d['smooth']:.1e} | {d['spatial_pca_scores']:.1e} | "
            f"{d['deconvolve_proportions']:.1e} | {_peaks(r)} | "
            f"{r['cluster_s']} | {r['in_memory_s']} | {r['load_before'][0]:.1f}/{r['load_after'][0]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bins", type=float, default=1e5)
    ap.add_argument("--genes", type=int, nargs="+", default=[200, 800])
    args = ap.parse_args(argv)
    rows = [run(int(args.bins), g) for g in args.genes]
    (RESULTS / "cluster_check.json").write_text(json.dumps({"rows": rows}, indent=1, default=float))
    (RESULTS / "cluster_check.md").write_text(to_markdown(rows))


if __name__ == "__main__":
    main()
