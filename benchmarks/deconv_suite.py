"""Neutral deconvolution benchmark (issue 15): every generator x method side by side, in one run.

Data: ``benchmarks/deconv_generators.py`` (none of the generators is any method's model). Each problem is written
once to ``spatial.h5ad`` + ``reference.h5ad`` (integer counts; the true proportions are kept by this parent
process only), and every method runs in its own subprocess on those files, with a time limit, one BLAS / OpenMP /
numba / torch thread by default (``--threads``), in its own interpreter:

================== ============================================================== =============================
method             call                                                           interpreter
================== ============================================================== =============================
smoother           ``sm.pp.spatial_graph`` + ``sm.tl.deconvolve`` at its defaults project ``.venv``
smoother_auto      ... ``lambda_spatial='auto'``                                   project ``.venv``
smoother_lam0      ... ``lambda_spatial=0`` (no spatial prior)                     project ``.venv``
smoother_nnls      ... ``model='nnls'`` (the classic baseline, default lambda)     project ``.venv``
smoother_nnls_auto ... ``model='nnls', lambda_spatial='auto'``                     project ``.venv``
smoother_nnls_lam0 ... ``model='nnls', lambda_spatial=0``                          project ``.venv``
flashdeconv        ``flashdeconv.tl.deconvolve`` at its defaults (lambda 'auto')   ``$FLASH_PY``
flashdeconv_lam0   ... ``lambda_spatial=0``                                        ``$FLASH_PY``
destvi             scvi-tools ``CondSCVI`` + ``DestVI``                            project ``.venv``
stereoscope        scvi-tools ``RNAStereoscope`` + ``SpatialStereoscope``          project ``.venv``
cell2location      ``RegressionModel`` + ``Cell2location``                         ``$C2L_PY``
tangram            ``tangram.map_cells_to_space(mode='clusters')``                 ``$TANGRAM_PY``
================== ============================================================== =============================

Peers live in venvs OUTSIDE the repository (never committed)::

    python3 -m venv /work/venvs/flash && /work/venvs/flash/bin/pip install "flashdeconv[io]"
    # cell2location 0.1.5 and tangram-sc 1.0.4 reuse the project venv's torch/scvi-tools through a .pth file:
    python3 -m venv /work/venvs/c2l && echo $PWD/.venv/lib/python3.11/site-packages \\
        > /work/venvs/c2l/lib/python3.11/site-packages/_project_venv.pth
    /work/venvs/c2l/bin/pip install --no-deps cell2location "pyro-ppl==1.8.6"   # 0.1.5 needs pyro < 1.9
    (same for /work/venvs/tangram with ``pip install --no-deps tangram-sc``)

A method whose interpreter is missing, that fails or that times out is recorded with the reason.

Scoring (one function, :func:`score`, for every method): the estimate is aligned to the true types (a type the
method does not report, e.g. the one missing from the reference, counts as 0) and each row renormalized to 1;
RMSE over all spot x type entries, Pearson correlation of all entries, and the Jensen-Shannon divergence
(base 2) per spot, averaged over spots. ``rare_type`` adds the RMSE / Pearson of the rare type's column.
Seconds: wall time of the fit (graph building and any model training included, reading the inputs excluded);
``cpu_s`` = user + system CPU seconds of the worker; ``peak_mb`` = the worker's peak RSS (includes the
interpreter, the libraries and the loaded inputs; ``load_mb`` is the RSS after loading).

Sizes: ``dlpfc`` = DLPFC 151673 (3,611 spots, 7 types, 350 genes) for every generator; an integer N = a hex
lattice of N spots, K = 10, 2,000 genes, sparse counts (depth 200–800) with ``--scale-generators``
(``nb_mixture``) and ``--scale-methods`` (smoother, smoother_auto, flashdeconv) for speed.

Usage (the whole DLPFC comparison, results merged into ``benchmarks/results/deconv_suite.{json,md}``)::

    .venv/bin/python benchmarks/deconv_suite.py
    .venv/bin/python benchmarks/deconv_suite.py --methods smoother smoother_auto --generators cell_sum
    .venv/bin/python benchmarks/deconv_suite.py --sizes 10000 1000000 --timeout 3600
    # the 10^6 speed row (FlashDeconv peaks at ~20 GB); --cache keeps the built problem for the next run
    .venv/bin/python benchmarks/deconv_suite.py --sizes 1000000 --scale-methods smoother flashdeconv \
        --timeout 3000 --cache /tmp/deconvcache

Rows of an earlier run that this run does not redo are kept (each row records when it ran and the load then);
``--fresh`` starts a new file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROJECT_PY = Path(os.environ.get("SMOOTHER_PY", ROOT / ".venv" / "bin" / "python"))
VENVS = Path(os.environ.get("PEER_VENVS", "/work/venvs"))

# method -> (interpreter, worker kind, keyword arguments, note)
METHODS = {
    "smoother": (PROJECT_PY, "smoother", {}, "defaults"),
    "smoother_auto": (PROJECT_PY, "smoother", {"lambda_spatial": "auto"}, "lambda_spatial='auto'"),
    "smoother_lam0": (PROJECT_PY, "smoother", {"lambda_spatial": 0.0}, "lambda_spatial=0"),
    "smoother_nnls": (PROJECT_PY, "smoother", {"model": "nnls"}, "model='nnls'"),
    "smoother_nnls_auto": (
        PROJECT_PY,
        "smoother",
        {"model": "nnls", "lambda_spatial": "auto"},
        "model='nnls', lambda_spatial='auto'",
    ),
    "smoother_nnls_lam0": (PROJECT_PY, "smoother", {"model": "nnls", "lambda_spatial": 0.0}, "model='nnls', lambda=0"),
    "flashdeconv": (Path(os.environ.get("FLASH_PY", VENVS / "flash/bin/python")), "flashdeconv", {}, "defaults"),
    "flashdeconv_lam0": (
        Path(os.environ.get("FLASH_PY", VENVS / "flash/bin/python")),
        "flashdeconv",
        {"lambda_spatial": 0.0},
        "lambda_spatial=0",
    ),
    "destvi": (PROJECT_PY, "destvi", {"sc_epochs": 300, "st_epochs": 300}, "CondSCVI(prior=mog) 300 + DestVI 300 ep."),
    "stereoscope": (PROJECT_PY, "stereoscope", {"sc_epochs": 100, "st_epochs": 300}, "RNA 100 + spatial 300 epochs"),
    "cell2location": (
        Path(os.environ.get("C2L_PY", VENVS / "c2l/bin/python")),
        "cell2location",
        {"sc_epochs": 250, "st_epochs": 2000, "n_cells": 5, "detection_alpha": 20},
        "regression 250 + 2000 epochs, N_cells=5, alpha=20",
    ),
    "tangram": (
        Path(os.environ.get("TANGRAM_PY", VENVS / "tangram/bin/python")),
        "tangram",
        {"epochs": 1000},
        "clusters mode, 1000 epochs",
    ),
}
DLPFC_METHODS = list(METHODS)
SCALE_METHODS = ["smoother", "smoother_auto", "flashdeconv"]
SCALE_DEPTH = (200, 800)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


# ------------------------------------------------------------------------------------------------------ scoring
def score(est, truth, rare: str | None = None) -> dict:
    """RMSE, Pearson (all entries) and mean per-spot JSD (base 2) of estimated vs true proportions.

    ``est`` and ``truth`` are DataFrames (spots x types); ``est`` is aligned to ``truth``'s columns (absent types
    = 0), negative entries clipped and rows renormalized (an all-zero row becomes uniform).
    """
    T = truth.to_numpy(dtype=np.float64)
    E = est.reindex(columns=truth.columns, fill_value=0.0).to_numpy(dtype=np.float64)
    E = np.nan_to_num(np.clip(E, 0.0, None))
    s = E.sum(1, keepdims=True)
    E = np.where(s > 0, E / np.where(s > 0, s, 1.0), 1.0 / E.shape[1])
    M = 0.5 * (E + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_e = np.where(E > 0, E * np.log2(E / M), 0.0).sum(1)
        kl_t = np.where(T > 0, T * np.log2(T / M), 0.0).sum(1)
    spot_mse = np.mean((E - T) ** 2, axis=1)
    rmse = float(np.sqrt(spot_mse.mean()))
    out = {
        "rmse": rmse,
        # standard error of the RMSE over spots (delta method): the spot-sampling noise of the figure
        "rmse_se": float(spot_mse.std(ddof=1) / np.sqrt(len(spot_mse)) / (2 * max(rmse, 1e-12))),
        "pearson": float(np.corrcoef(E.ravel(), T.ravel())[0, 1]),
        "jsd": float(np.mean(0.5 * (kl_e + kl_t))),
        "missing_types": [c for c in truth.columns if c not in est.columns],
    }
    if rare is not None:
        k = list(truth.columns).index(rare)
        out["rare_rmse"] = float(np.sqrt(np.mean((E[:, k] - T[:, k]) ** 2)))
        out["rare_pearson"] = float(np.corrcoef(E[:, k], T[:, k])[0, 1])
    return out


# ------------------------------------------------------------------------------------------------------- workers
def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proportions(df):
    import pandas as pd

    df = pd.DataFrame(df)
    return df.div(df.sum(1).replace(0, 1), axis=0)


def _run_smoother(sp_, ref, kw, threads):
    import smoother as sm

    sm.settings.progress_bar = False
    _torch_threads(threads)
    sm.pp.spatial_graph(sp_)
    sm.tl.deconvolve(sp_, ref, groupby="cell_type", key_added="bench", **kw)
    u = sp_.uns["bench"]
    params = u.get("params", {})
    info = {
        "version": sm.__version__,
        "model": params.get("model"),
        "lambda": params.get("lambda_spatial"),
        "converged": (u.get("convergence") or {}).get("converged"),
    }
    la = u.get("lambda_auto")
    if isinstance(la, dict):
        info["lambda_chosen"] = la.get("chosen", la.get("lambda"))
    return sp_.obsm["bench"], _jsonable(info)


def _run_flash(sp_, ref, kw, threads):
    import flashdeconv as fd

    out = fd.tl.deconvolve(sp_, ref, cell_type_key="cell_type", copy=True, **kw)
    params = out.uns.get("flashdeconv_params", {})
    info = {"version": getattr(fd, "__version__", "?"), "lambda": params.get("lambda_spatial")}
    return out.obsm["flashdeconv"], _jsonable(info)


def _torch_threads(threads):
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _as_float(a):
    a = a.copy()
    a.X = a.X.astype(np.float32)
    return a


def _run_destvi(sp_, ref, kw, threads):
    import scvi
    from scvi.model import CondSCVI, DestVI

    _torch_threads(threads)
    scvi.settings.seed = 0
    ref, sp_ = _as_float(ref), _as_float(sp_)
    CondSCVI.setup_anndata(ref, labels_key="cell_type")
    # prior="mog": scvi-tools 1.4.2 from_rna_model reads the prior from the init kwargs (KeyError without it), and
    # its empirical vamp-prior path (prior="normal") fails on a numpy buffer
    sc_model = CondSCVI(ref, weight_obs=False, prior="mog")
    sc_model.train(max_epochs=kw["sc_epochs"], accelerator="cpu", enable_progress_bar=False)
    DestVI.setup_anndata(sp_)
    st_model = DestVI.from_rna_model(sp_, sc_model)
    st_model.train(max_epochs=kw["st_epochs"], accelerator="cpu", enable_progress_bar=False)
    return _proportions(st_model.get_proportions()), {"version": scvi.__version__, **kw}


def _run_stereoscope(sp_, ref, kw, threads):
    import scvi
    from scvi.external import RNAStereoscope, SpatialStereoscope

    _torch_threads(threads)
    scvi.settings.seed = 0
    ref, sp_ = _as_float(ref), _as_float(sp_)
    RNAStereoscope.setup_anndata(ref, labels_key="cell_type")
    sc_model = RNAStereoscope(ref)
    sc_model.train(max_epochs=kw["sc_epochs"], accelerator="cpu", enable_progress_bar=False)
    SpatialStereoscope.setup_anndata(sp_)
    st_model = SpatialStereoscope.from_rna_model(sp_, sc_model)
    st_model.train(max_epochs=kw["st_epochs"], accelerator="cpu", enable_progress_bar=False)
    return _proportions(st_model.get_proportions()), {"version": scvi.__version__, **kw}


def _run_c2l(sp_, ref, kw, threads):
    import cell2location
    import scvi
    from cell2location.models import Cell2location, RegressionModel

    _torch_threads(threads)
    scvi.settings.seed = 0
    ref, sp_ = _as_float(ref), _as_float(sp_)
    RegressionModel.setup_anndata(ref, labels_key="cell_type")
    reg = RegressionModel(ref)
    reg.train(max_epochs=kw["sc_epochs"], accelerator="cpu", enable_progress_bar=False)
    ref = reg.export_posterior(ref, sample_kwargs={"num_samples": 200, "batch_size": 2500})
    names = ref.uns["mod"]["factor_names"]
    sig = ref.varm["means_per_cluster_mu_fg"][[f"means_per_cluster_mu_fg_{n}" for n in names]]
    sig.columns = names
    Cell2location.setup_anndata(sp_)
    mod = Cell2location(
        sp_, cell_state_df=sig, N_cells_per_location=kw["n_cells"], detection_alpha=kw["detection_alpha"]
    )
    mod.train(max_epochs=kw["st_epochs"], batch_size=None, train_size=1, accelerator="cpu", enable_progress_bar=False)
    sp_ = mod.export_posterior(sp_, sample_kwargs={"num_samples": 200, "batch_size": mod.adata.n_obs})
    ab = sp_.obsm["means_cell_abundance_w_sf"].copy()
    ab.columns = [c.replace("meanscell_abundance_w_sf_", "") for c in ab.columns]
    return _proportions(ab), {"version": cell2location.__version__, **kw}


def _run_tangram(sp_, ref, kw, threads):
    import tangram as tg

    _torch_threads(threads)
    ref, sp_ = _as_float(ref), _as_float(sp_)
    tg.pp_adatas(ref, sp_, genes=None)
    amap = tg.map_cells_to_space(
        ref, sp_, mode="clusters", cluster_label="cell_type", device="cpu", num_epochs=kw["epochs"], verbose=False
    )
    tg.project_cell_annotations(amap, sp_, annotation="cell_type")
    return _proportions(sp_.obsm["tangram_ct_pred"]), {"version": getattr(tg, "__version__", "?"), **kw}


RUNNERS = {
    "smoother": _run_smoother,
    "flashdeconv": _run_flash,
    "destvi": _run_destvi,
    "stereoscope": _run_stereoscope,
    "cell2location": _run_c2l,
    "tangram": _run_tangram,
}


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v if isinstance(v, str | int | float | bool | type(None) | list) else str(v)
    return out


def worker(kind: str, kwargs: str, indir: str, outdir: str, threads: int):
    """Run one method on ``indir/{spatial,reference}.h5ad``; write ``props.csv`` and ``meta.json`` to ``outdir``."""
    import warnings

    import anndata as ad

    warnings.filterwarnings("ignore")
    sp_ = ad.read_h5ad(Path(indir) / "spatial.h5ad")
    ref = ad.read_h5ad(Path(indir) / "reference.h5ad")
    load_mb = _rss_mb()
    kw = json.loads(kwargs)
    t0, c0 = time.perf_counter(), _cpu()
    props, info = RUNNERS[kind](sp_, ref, kw, threads)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    props.to_csv(Path(outdir) / "props.csv")
    meta = {"seconds": wall, "cpu_s": cpu, "peak_mb": _rss_mb(), "load_mb": load_mb, "info": info}
    (Path(outdir) / "meta.json").write_text(json.dumps(meta))


# -------------------------------------------------------------------------------------------------------- parent
def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "n_cpus": os.cpu_count(), "memory": mem, "platform": platform.platform()}


def _problem(size: str, generator: str, seed: int):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deconv_generators as dg

    if size == "dlpfc":
        return dg.make(generator, geometry="dlpfc", seed=seed)
    return dg.make(
        generator, geometry="lattice", n_spots=int(size), n_types=10, n_genes=2000, seed=seed, depth_range=SCALE_DEPTH
    )


def _inputs(size: str, gen: str, seed: int, cache: str | None, tmp: Path):
    """The problem's input directory, the true proportions, the generator's record and the shape."""
    import anndata as ad
    import pandas as pd

    d = Path(cache) / f"{gen}_{size}_{seed}" if cache else tmp
    if cache and (d / "truth.pkl").exists():
        truth = pd.read_pickle(d / "truth.pkl")
        sp_ = ad.read_h5ad(d / "spatial.h5ad", backed="r")
        ref = ad.read_h5ad(d / "reference.h5ad", backed="r")
        out = (d, truth, _plain(sp_.uns["generator"]), [sp_.n_obs, sp_.n_vars, ref.n_obs])
        sp_.file.close()
        ref.file.close()
        return out
    spatial, reference = _problem(size, gen, seed)
    truth = spatial.obsm.pop("props_truth")
    d.mkdir(parents=True, exist_ok=True)
    spatial.write_h5ad(d / "spatial.h5ad")
    reference.write_h5ad(d / "reference.h5ad")
    if cache:
        truth.to_pickle(d / "truth.pkl")
    return d, truth, _plain(spatial.uns["generator"]), [spatial.n_obs, spatial.n_vars, reference.n_obs]


def _plain(d) -> dict:
    """A generator record with plain Python values (an h5ad read returns numpy scalars and arrays)."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(d).items()}


def _source_state() -> str:
    """The commit of the checkout and whether ``src/`` has uncommitted changes (smoother runs from the work tree)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        )
        return head.stdout.strip() + (" + uncommitted src changes" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def run_method(method: str, indir: Path, timeout: float, threads: int) -> dict:
    py, kind, kw, note = METHODS[method]
    row = {"method": method, "setting": note}
    if kind == "smoother":
        row["smoother_source"] = _source_state()
    if not Path(py).exists():
        return {**row, "error": f"skipped: interpreter {py} missing (see the module docstring to install it)"}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "benchmarks"), MPLBACKEND="agg")
    env.update({v: str(threads) for v in THREAD_VARS})
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(py), str(Path(__file__).resolve()), "--worker", kind, json.dumps(kw), str(indir), out]
        cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {**row, "error": f"timed out after {timeout:.0f} s"}
        if p.returncode != 0 or not (Path(out) / "meta.json").exists():
            tail = [s for s in (p.stderr or "").strip().splitlines() if s.strip()]
            return {**row, "error": (tail[-1] if tail else f"exit code {p.returncode}")[:300]}
        import pandas as pd

        meta = json.loads((Path(out) / "meta.json").read_text())
        props = pd.read_csv(Path(out) / "props.csv", index_col=0)
        props.columns = props.columns.astype(str)
        return {**row, **meta, "process_s": time.perf_counter() - t0, "_props": props}


def fmt(v, spec):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def write_md(out: dict, stem: str):
    rows = out["rows"]
    lines = [
        "# Neutral deconvolution benchmark (issue 15)",
        "",
        "Written by `benchmarks/deconv_suite.py` (generators: `benchmarks/deconv_generators.py`). Every method runs "
        "in its own subprocess on the same input files, with one thread, and is scored by one function "
        "(RMSE and Pearson over all spot x type entries, Jensen-Shannon divergence per spot averaged; a type "
        "absent from the estimate counts as 0). Wall seconds include graph building and model training; peak MB "
        "is the worker's peak RSS (interpreter, libraries and inputs included).",
        "",
        f"Machine: {out['machine']['cpu']}, {out['machine']['n_cpus']} CPUs, {out['machine']['memory']} "
        f"(shared with other engineers). Last run {out['runs'][-1]['started']} – {out['runs'][-1].get('ended', '?')}, "
        f"load average at start {out['runs'][-1]['load_start']} / end {out['runs'][-1].get('load_end', '?')}.",
        "",
        "Re-run (rows are replaced, others kept): smoother only, every DLPFC generator: `.venv/bin/python "
        "benchmarks/deconv_suite.py --methods smoother smoother_auto smoother_lam0`; everything (peers take "
        "minutes each): `.venv/bin/python benchmarks/deconv_suite.py`; speed: `... --sizes 10000 1000000`. Each "
        "smoother row records the commit it ran from (`source`), and whether `src/` had uncommitted changes.",
        "",
    ]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for metric, spec in (("rmse", ".4f"), ("jsd", ".4f"), ("pearson", ".3f")):
        lines += [f"## {metric.upper()} (problem x method)", ""]
        lines += ["| problem | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for pb in problems:
            cells = []
            for m in methods:
                r = next((r for r in rows if r["problem"] == pb and r["method"] == m), None)
                cells.append("" if r is None else ("err" if "error" in r else fmt(r.get(metric), spec)))
            lines.append(f"| {pb} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _targets(rows, problems)
    lines += [
        "## All rows",
        "",
        "| problem | method | setting | RMSE | Pearson | JSD | wall s | CPU s | peak MB | load | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['problem']} | {r['method']} | {r['setting']} | | | | | | | {r['load']} | {r['error']} |"
            )
            continue
        info = r.get("info", {})
        notes = ", ".join(f"{k}={v}" for k, v in info.items() if v is not None)
        if r.get("smoother_source"):
            notes += f"; source {r['smoother_source']}"
        if "rare_rmse" in r:
            notes += f"; rare type RMSE {r['rare_rmse']:.4f}, Pearson {r['rare_pearson']:.3f}"
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['setting']} | {fmt(r['rmse'], '.4f')} | "
            f"{fmt(r['pearson'], '.3f')} | {fmt(r['jsd'], '.4f')} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['load']} | {notes} |"
        )
    lines += ["", "Runs:", ""]
    for run in out["runs"]:
        lines.append(
            f"- {run['started']} – {run.get('ended', '?')}: `{run['command']}`, load {run['load_start']} → "
            f"{run.get('load_end', '?')}"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def _targets(rows, problems) -> list[str]:
    """Issue 15's targets per problem: smoother's default vs FlashDeconv's default, and 'auto' vs lambda = 0."""

    def get(pb, m):
        r = next((r for r in rows if r["problem"] == pb and r["method"] == m), None)
        return None if r is None or "error" in r else r

    lines = [
        "## Targets (issue 15)",
        "",
        "smoother (default) vs FlashDeconv (default): RMSE and JSD at most, Pearson at least FlashDeconv's. "
        "'auto' vs lambda = 0: RMSE difference against 2 x the combined spot-sampling standard error.",
        "",
        "| problem | RMSE smoother / flash | JSD smoother / flash | Pearson smoother / flash | accuracy target "
        "| RMSE auto - lam0 (2 SE) | auto target |",
        "|---|---|---|---|---|---|---|",
    ]
    for pb in problems:
        a, f = get(pb, "smoother"), get(pb, "flashdeconv")
        acc = ["–"] * 4
        if a and f:
            ok = a["rmse"] <= f["rmse"] and a["jsd"] <= f["jsd"] and a["pearson"] >= f["pearson"]
            acc = [
                f"{a['rmse']:.4f} / {f['rmse']:.4f}",
                f"{a['jsd']:.4f} / {f['jsd']:.4f}",
                f"{a['pearson']:.3f} / {f['pearson']:.3f}",
                "met" if ok else "**not met**",
            ]
        au, l0 = get(pb, "smoother_auto"), get(pb, "smoother_lam0")
        auto = ["–", "–"]
        if au and l0:
            d = au["rmse"] - l0["rmse"]
            noise = 2 * np.hypot(au.get("rmse_se", 0.0), l0.get("rmse_se", 0.0))
            auto = [f"{d:+.4f} ({noise:.4f})", "met" if d <= noise else "**not met**"]
        lines.append(f"| {pb} | " + " | ".join(acc + auto) + " |")
    return lines + [""]


def save(path: Path, rows: list, run: dict | None, stem: str, fresh: bool = False):
    """Merge ``rows`` (and ``run``) into the results file as it is now (so concurrent runs keep each other's rows)."""
    cur = json.loads(path.read_text()) if path.exists() and not fresh else {"rows": [], "runs": []}
    keys = {(r["problem"], r["method"]) for r in rows}
    cur["rows"] = sorted([x for x in cur["rows"] if (x["problem"], x["method"]) not in keys] + rows, key=_row_order)
    if run is not None:
        cur["runs"] = [x for x in cur["runs"] if (x["started"], x["command"]) != (run["started"], run["command"])]
        cur["runs"] = sorted([*cur["runs"], run], key=lambda x: x["started"])
    cur["machine"] = machine_info()
    path.write_text(json.dumps(cur, indent=1))
    write_md(cur, stem)


def merge_files(path: Path, stems: list[str], stem: str, methods=None):
    """Merge the rows and runs of other results files (``benchmarks/results/<stem>.json``) into ``path``."""
    for other in stems:
        o = json.loads((RESULTS / f"{other}.json").read_text())
        for run in o.get("runs", []):
            rows = [r for r in o["rows"] if r.get("run") == run["started"] and (not methods or r["method"] in methods)]
            if rows:
                save(path, rows, run, stem)
    print(f"merged {stems} into {path}")


def _row_order(r):
    gens = ("nb_mixture", "cell_sum", "missing_type", "rare_type", "flash_model")
    g = gens.index(r["generator"]) if r["generator"] in gens else len(gens)
    m = list(METHODS).index(r["method"]) if r["method"] in METHODS else len(METHODS)
    return (0 if r["size"] == "dlpfc" else int(r["size"]), g, r["generator"], m, r["method"])


def _load():
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generators", nargs="*", default=None, help="DLPFC generators (default: all)")
    ap.add_argument("--methods", nargs="*", default=None, help=f"methods (default: all): {list(METHODS)}")
    ap.add_argument("--sizes", nargs="*", default=["dlpfc"], help="'dlpfc' and/or lattice sizes, e.g. 10000")
    ap.add_argument("--scale-generators", nargs="*", default=["nb_mixture"])
    ap.add_argument("--scale-methods", nargs="*", default=SCALE_METHODS)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per method run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="deconv_suite", help="results stem in benchmarks/results")
    ap.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs")
    ap.add_argument(
        "--cache",
        default=None,
        help="directory of built problems (<generator>_<size>_<seed>/{spatial,reference}.h5ad + truth.pkl): "
        "reused when present, written when not (10^6 spots take ~6 min to build)",
    )
    ap.add_argument("--merge", nargs="*", metavar="STEM", help="merge other results files into --out and exit")
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "KWARGS", "INDIR", "OUTDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, threads=args.threads)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deconv_generators as dg

    for m in (args.methods or []) + args.scale_methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {list(METHODS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    if args.merge:
        return merge_files(path, args.merge, args.out, args.methods)
    mine, fresh = [], args.fresh
    run = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": _load(),
        "command": "python benchmarks/deconv_suite.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
    }
    print(f"load at start {run['load_start']}", flush=True)
    for size in args.sizes:
        gens = (args.generators or list(dg.GENERATORS)) if size == "dlpfc" else args.scale_generators
        methods = (args.methods or DLPFC_METHODS) if size == "dlpfc" else args.scale_methods
        for gen in gens:
            problem = f"{gen} @ {'DLPFC' if size == 'dlpfc' else f'lattice {int(size):,}'}"
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                d, truth, gen_info, shape = _inputs(size, gen, args.seed, args.cache, Path(tmp))
                print(f"{problem}: {shape} built or read in {time.perf_counter() - t:.1f} s", flush=True)
                for m in methods:
                    load = _load()
                    r = run_method(m, Path(d), args.timeout, args.threads)
                    props = r.pop("_props", None)
                    if props is not None:
                        r.update(score(props, truth, rare=gen_info.get("rare")))
                    r.update(
                        problem=problem,
                        generator=gen,
                        size=size,
                        n_spots=shape[0],
                        n_genes=shape[1],
                        n_cells_ref=shape[2],
                        load=load,
                        run=run["started"],
                        generator_info=gen_info,
                    )
                    mine = [x for x in mine if (x["problem"], x["method"]) != (problem, m)] + [r]
                    brief = {k: r.get(k) for k in ("problem", "method", "rmse", "pearson", "jsd", "seconds", "error")}
                    print(json.dumps(brief), flush=True)
                    run["load_end"] = _load()
                    run["ended"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
                    save(path, mine, run, args.out, fresh)
                    fresh = False
    print(f"load at end {_load()}; wrote {path}", flush=True)


if __name__ == "__main__":
    main()
