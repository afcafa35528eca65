"""How long ``import smoother`` takes next to ``import anndata`` (issue 13: target <= 1.2x), in one run.

Each statement runs in a fresh interpreter, interleaved, ``--repeats`` times; the median wall time of the whole
process (interpreter start-up included, the same for every statement) and the median of ``-X importtime``'s
cumulative time of the top-level module are reported. Also measured: the first use of ``sm.pp`` / ``sm.tl`` and
the classic ``SpatialLoss`` (which load scipy/torch on demand).

Usage: ``.venv/bin/python benchmarks/import_time.py [--repeats 15]``.
Writes ``benchmarks/results/import_time.json`` and ``import_time.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CASES = {
    "python (empty)": "pass",
    "import anndata": "import anndata",
    "import smoother": "import smoother",
    "import smoother; sm.pp": "import smoother as sm; sm.pp",
    "import smoother; sm.tl": "import smoother as sm; sm.tl",
    "import smoother; sm.SpatialLoss": "import smoother as sm; sm.SpatialLoss",
    "import scanpy": "import scanpy",
}
MODULE = {"import anndata": "anndata", "import scanpy": "scanpy"}


def _run(code: str) -> tuple[float, float | None]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    top = MODULE.get(code, "smoother" if "smoother" in code else None)
    cum = None
    if top is not None:
        for line in out.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s?(\S+)$", line)
            if m and m.group(2) == top:
                cum = int(m.group(1)) / 1e6
    return wall, cum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    for code in CASES.values():  # warm the file system cache once
        _run(code)
    walls = {k: [] for k in CASES}
    cums = {k: [] for k in CASES}
    for _ in range(args.repeats):
        for name, code in CASES.items():
            w, c = _run(code)
            walls[name].append(w)
            if c is not None:
                cums[name].append(c)

    def med(v):
        return float(sorted(v)[len(v) // 2]) if v else None

    rows = {k: {"wall_median_s": med(walls[k]), "import_cumulative_median_s": med(cums[k])} for k in CASES}
    base = rows["python (empty)"]["wall_median_s"]
    for r in rows.values():
        r["wall_minus_interpreter_s"] = r["wall_median_s"] - base
    ratio = rows["import smoother"]["wall_minus_interpreter_s"] / rows["import anndata"]["wall_minus_interpreter_s"]
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_start": load0,
        "load_average_end": os.getloadavg()[0],
        "repeats": args.repeats,
        "rows": rows,
        "ratio_smoother_to_anndata": ratio,
        "target": "import smoother <= 1.2 x import anndata",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import_time.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# Import time",
        "",
        f"{out['machine']}; load average {load0:.1f} -> {out['load_average_end']:.1f}; median of {args.repeats} "
        "fresh interpreters each, interleaved. 'net' = wall time minus an empty interpreter's.",
        "",
        "| statement | wall median (s) | net (s) | top module cumulative (s) |",
        "| --- | --- | --- | --- |",
    ]
    for k, r in rows.items():
        cum = r["import_cumulative_median_s"]
        lines.append(
            f"| `{CASES[k]}` | {r['wall_median_s']:.3f} | {r['wall_minus_interpreter_s']:.3f} | "
            f"{'' if cum is None else f'{cum:.3f}'} |"
        )
    lines += ["", f"**import smoother / import anndata (net): {ratio:.2f}** (target <= 1.2)."]
    (RESULTS / "import_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
