"""Benchmark: forward + backward of the topological loss (smoother.losses.TopLoss, no topologylayer).

Cases: PSBL(H0, skip 1) + PSBL(H1, skip 0) on 100 x 100, 78 x 128 and 500 x 500 grids (random noise and
smoothed noise), and TopLoss with 10 groups on 100 x 100. The published layer (topologylayer's
LevelSetLayer2D + PartialSumBarcodeLengths) cannot be installed here (not on PyPI, fails to build), so the
ratios are against its published timings on this kind of machine (spec/toploss.md): ~0.13 s on 100 x 100 and
5-7 s (+ 1.5 s to build its complex) on 500 x 500.

Run: ``.venv/bin/python benchmarks/toploss_bench.py`` -> benchmarks/results/toploss.json and .md
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from smoother._core.persistence import superlevel_persistence
from smoother.losses import TopLoss

OUT = Path(__file__).resolve().parent / "results"
PUBLISHED = {"100x100": 0.13, "500x500": (5.0, 7.0)}  # seconds, forward + backward, published layer


def image(shape, kind, rng):
    x = rng.random(shape)
    if kind == "smoothed":
        x = gaussian_filter(x, sigma=3.0, mode="nearest")
    return x


def time_call(fn, repeats):
    fn()  # warm-up (numba compilation is cached on disk after the first run)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


LOAD_START = os.getloadavg()


def main():
    rng = np.random.default_rng(0)
    rows = []
    for shape in [(100, 100), (78, 128), (500, 500)]:
        xy = np.argwhere(np.ones(shape, dtype=bool))
        t0 = time.perf_counter()
        tl = TopLoss({0: {0: 1, 1: 0}}, xy)
        build = time.perf_counter() - t0
        for kind in ("noise", "smoothed"):
            img = image(shape, kind, rng)
            beta = torch.tensor(img.reshape(1, -1), dtype=torch.float32, requires_grad=True)

            def step(beta=beta, tl=tl):
                beta.grad = None
                tl(beta).backward()

            repeats = 5 if shape == (500, 500) else 30
            med, best = time_call(step, repeats)
            pmed, _ = time_call(lambda img=img: superlevel_persistence(img), repeats)
            pairs = superlevel_persistence(img)
            rows.append(
                {
                    "case": f"PSBL(H0,skip1)+PSBL(H1,skip0) {shape[0]}x{shape[1]} {kind}",
                    "grid": f"{shape[0]}x{shape[1]}",
                    "input": kind,
                    "groups": 1,
                    "n_bars_h0": len(pairs[0]),
                    "n_bars_h1": len(pairs[1]),
                    "seconds_median": med,
                    "seconds_min": best,
                    "persistence_only_seconds": pmed,
                    "build_seconds": build,
                }
            )
    # 10 groups on 100 x 100
    xy = np.argwhere(np.ones((100, 100), dtype=bool))
    tl = TopLoss({g: {0: 1, 1: 0} for g in range(10)}, xy)
    beta = torch.tensor(
        np.stack([image((100, 100), "smoothed", rng).ravel() for _ in range(10)]), dtype=torch.float32
    ).requires_grad_(True)

    def step10():
        beta.grad = None
        tl(beta).backward()

    med, best = time_call(step10, 20)
    rows.append(
        {
            "case": "TopLoss 10 groups {0: 1, 1: 0} 100x100 smoothed",
            "grid": "100x100",
            "input": "smoothed",
            "groups": 10,
            "seconds_median": med,
            "seconds_min": best,
        }
    )
    for r in rows:
        if r["grid"] == "100x100" and r["groups"] == 1:
            r["published_seconds"] = PUBLISHED["100x100"]
            r["speedup_vs_published"] = PUBLISHED["100x100"] / r["seconds_median"]
        elif r["grid"] == "500x500":
            r["published_seconds"] = list(PUBLISHED["500x500"])
            r["speedup_vs_published"] = [p / r["seconds_median"] for p in PUBLISHED["500x500"]]
        elif r["grid"] == "100x100" and r["groups"] == 10:
            # the published TopLoss runs its layer once per group: ~10 x 0.13 s
            r["published_seconds"] = 10 * PUBLISHED["100x100"]
            r["speedup_vs_published"] = r["published_seconds"] / r["seconds_median"]
    meta = {
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}"
        ),
        "load_average_at_start": LOAD_START,
        "load_average_at_end": os.getloadavg(),
        "note": (
            "topologylayer cannot be installed (not on PyPI, does not build); speedups are against the "
            "published timings in spec/toploss.md, not a side-by-side run. The machine was shared with other "
            "jobs (see load average). Targets: 100x100 < 0.03 s, 500x500 < 1 s."
        ),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "toploss.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# TopLoss forward + backward (no topologylayer)",
        "",
        meta["note"],
        "",
        f"Machine: {meta['machine']}; load average (1, 5, 15 min) at start: "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_at_start'])}, at end: "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_at_end'])} (2 cores shared with other jobs).",
        "",
        "| case | bars H0 / H1 | fwd+bwd median (s) | fwd+bwd best (s) | persistence only (s) | published (s) "
        "| speed-up (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        pub = r.get("published_seconds", "")
        sp = r.get("speedup_vs_published", "")
        if isinstance(pub, list):
            pub = f"{pub[0]:g}-{pub[1]:g}"
            sp = f"{sp[0]:.0f}-{sp[1]:.0f}x"
        elif sp != "":
            sp = f"{sp:.0f}x"
        bars = f"{r['n_bars_h0']} / {r['n_bars_h1']}" if "n_bars_h0" in r else ""
        po = f"{r['persistence_only_seconds']:.4f}" if "persistence_only_seconds" in r else ""
        lines.append(
            f"| {r['case']} | {bars} | {r['seconds_median']:.4f} | {r['seconds_min']:.4f} | {po} | {pub} | {sp} |"
        )
    (OUT / "toploss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
