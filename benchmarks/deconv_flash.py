"""smoother (exact NNLS, ICAR rho = 0.99, lambda = 1 and 'auto') vs FlashDeconv 0.2.0 (defaults) at 100k and 1M spots.

K = 10 types, 2,000 genes, Poisson counts (see ``_deconv_large.py``; every method rebuilds the same data from the
seed in its own subprocess). FlashDeconv runs from its own venv (``.venv-flash``: ``python3 -m venv .venv-flash &&
.venv-flash/bin/pip install flashdeconv``), because it pins its own numba/numpy. Each run has a time limit; a run
that fails or times out is recorded as such.

Usage: ``.venv/bin/python benchmarks/deconv_flash.py [--sizes 100000 1000000]``.
Writes ``benchmarks/results/deconv_flash.json`` and ``deconv_flash.md``.
"""

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PY = {
    "smoother": ROOT / ".venv" / "bin" / "python",
    "smoother_auto": ROOT / ".venv" / "bin" / "python",
    "flashdeconv": Path(os.environ.get("FLASH_PY", ROOT / ".venv-flash" / "bin" / "python")),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--methods", nargs="*", default=["smoother", "flashdeconv", "smoother_auto"])
    ap.add_argument("--timeout", type=float, default=2400)
    ap.add_argument("--out", default="deconv_flash", help="results file stem in benchmarks/results")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "note": f"Shared 2-core machine, load average at start {os.getloadavg()[0]:.1f}; cpu_seconds (user+sys of "
        "the process) is the robust figure, wall seconds are inflated by other jobs. Seconds exclude data "
        "generation and include graph building.",
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as d:
        for n in args.sizes:
            for m in args.methods:
                f = Path(d) / f"{m}_{n}.json"
                try:
                    p = subprocess.run(
                        [str(PY[m]), str(ROOT / "benchmarks" / "_deconv_large.py"), m, str(n), str(f)],
                        capture_output=True,
                        text=True,
                        timeout=args.timeout,
                    )
                    row = (
                        json.loads(f.read_text())
                        if p.returncode == 0
                        else {
                            "method": m,
                            "n_spots": n,
                            "error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed",
                        }
                    )
                except subprocess.TimeoutExpired:
                    row = {"method": m, "n_spots": n, "error": f"timed out after {args.timeout:.0f} s"}
                print(json.dumps(row), flush=True)
                out["rows"].append(row)
                (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1))
                write_md(out, args.out)


def write_md(out, stem="deconv_flash"):
    lines = [
        "# smoother vs FlashDeconv (K = 10, 2,000 genes, Poisson counts)",
        "",
        out["note"],
        "",
        "| method | spots | wall s | CPU s | peak MB | RMSE | JSD | lambda | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n_spots']} | – | – | – | – | – | – | {r['error']} |")
        else:
            lam = r.get("lambda")
            lam = f"{lam:.3g}" if isinstance(lam, float) else lam
            lines.append(
                f"| {r['method']} | {r['n_spots']} | {r['seconds']:.1f} | {r.get('cpu_seconds', float('nan')):.1f} | "
                f"{r['peak_rss_mb']:.0f} | {r['rmse']:.4f} | {r['jsd']:.4f} | {lam} | "
                f"{'iters ' + str(r['n_iter']) if 'n_iter' in r else ''} |"
            )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
