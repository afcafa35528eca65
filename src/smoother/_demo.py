"""The ``make demo`` showcase: simulate, build the graph, smooth, diagnose, deconvolve, write results.

:func:`run_demo` does the work and returns a report (a plain dict); :func:`format_report` turns it into the text
that ``python -m smoother demo`` prints. The library itself never prints.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ._settings import logger

FIELD_FILE = "demo_field.h5ad"
MIXTURE_FILE = "demo_mixture.h5ad"
FIGURES = ("smoothing.png", "corr_decay.png", "similarity_cdf.png", "props.png")


def _rmse(a, b) -> float:
    a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
    return float(np.sqrt(np.mean((a - np.asarray(b)) ** 2)))


def _spot_panels(adata, gene: str, path: Path, dpi: int) -> None:
    import matplotlib.pyplot as plt

    xy = adata.obsm["spatial"]
    panels = [("truth", adata.layers["truth"]), ("observed", adata.X), ("smoothed", adata.layers["smoothed"])]
    j = adata.var_names.get_loc(gene)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=dpi)
    size = max(1.0, 12000.0 / adata.n_obs)
    for ax, (title, mat) in zip(axes, panels, strict=True):
        values = np.asarray(mat[:, j].toarray() if hasattr(mat, "toarray") else mat[:, j]).ravel()
        ax.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap="viridis", vmin=-2.5, vmax=2.5, linewidths=0)
        ax.set_title(f"{gene}: {title}")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_axis_off()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def run_demo(*, n_spots: int = 3000, out: str | Path = "demo_out", seed: int = 0, dpi: int = 80) -> dict:
    """Run the showcase on simulated data and write its results to ``out``.

    Steps: :func:`smoother.datasets.simulate_field` (hexagonal lattice, five layers, noise as large as the
    signal) -> :func:`smoother.pp.spatial_graph` -> :func:`smoother.tl.smooth` with ``lambda_spatial='auto'`` ->
    :func:`smoother.tl.similarity_decay` and :func:`smoother.tl.corr_decay` for two priors, plotted with
    :func:`smoother.pl.corr_decay` and :func:`smoother.pl.similarity_cdf` -> a simulated cell-type mixture (Poisson
    counts) deconvolved by :func:`smoother.tl.deconvolve` at its defaults (count model with the spatial prior),
    without the spatial prior (``lambda_spatial=0``) and with the classic NNLS (``model='nnls'``), plotted with
    :func:`smoother.pl.props`.

    Parameters
    ----------
    n_spots
        Number of spots of each simulated dataset (at least 200).
    out
        Output folder (created when missing).
    seed
        Seed of the simulations.
    dpi
        Resolution of the PNG figures.

    Returns
    -------
    A dict with ``n_spots``, ``seed``, ``out`` (the folder), ``files`` (paths written: ``demo_field.h5ad``,
    ``demo_mixture.h5ad`` and the PNG figures ``smoothing.png``, ``corr_decay.png``, ``similarity_cdf.png``,
    ``props.png``), ``smoothing`` (``rmse_raw``, ``rmse_smoothed``, ``lambda``), ``decay`` (fitted decay rate per
    curve), ``deconvolution`` (``model``, RMSE of the proportions ``rmse_no_spatial``, ``rmse_spatial`` (the
    defaults), ``rmse_nnls``, and the ``lambda`` used) and ``timings`` (seconds per step, and ``total``).
    """
    if isinstance(n_spots, bool) or not isinstance(n_spots, int | np.integer) or n_spots < 200:
        raise ValueError(f"`n_spots` must be an integer >= 200, got {n_spots!r}.")
    import matplotlib.pyplot as plt

    from . import datasets, pl, pp, tl

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def _tick(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        logger.info("demo: %s done in %.2fs", name, timings[name])

    # 1. simulate a Visium-like slide with a known truth, build the graph and smooth
    t0 = time.perf_counter()
    adata = datasets.simulate_field(n_spots, layout="hex", pattern="zones", n_genes=50, noise_level=1.0, seed=seed)
    pp.spatial_graph(adata, n_neighs=6)
    _tick("simulate + graph", t0)

    t0 = time.perf_counter()
    tl.smooth(adata, lambda_spatial="auto")
    _tick("smooth (lambda='auto')", t0)
    smoothing = {
        "rmse_raw": _rmse(adata.X, adata.layers["truth"]),
        "rmse_smoothed": _rmse(adata.layers["smoothed"], adata.layers["truth"]),
        "lambda": float(adata.uns["smoothed"]["lambda"]),
    }
    _spot_panels(adata, adata.var_names[0], outdir / "smoothing.png", dpi)

    # 2. decay diagnostics: the data's neighbour similarity against two priors' implied correlation
    t0 = time.perf_counter()
    tl.similarity_decay(adata, max_k=30)
    for prior, rho in (("icar", 0.99), ("isar", 0.9)):
        tl.corr_decay(adata, prior=prior, rho=rho, max_k=30, n_sample=min(n_spots, 2000), seed=seed)
    rates = tl.fit_decay(adata)
    _tick("decay diagnostics", t0)
    ax = pl.corr_decay(adata, figsize=(4.5, 3.2), title="similarity / correlation decay", show=False)
    ax.figure.savefig(outdir / "corr_decay.png", dpi=dpi, bbox_inches="tight")
    plt.close(ax.figure)
    ax = pl.similarity_cdf(adata, figsize=(4, 3.2), show=False)
    ax.figure.savefig(outdir / "similarity_cdf.png", dpi=dpi, bbox_inches="tight")
    plt.close(ax.figure)

    # 3. deconvolution of a simulated mixture with a single-cell reference, without and with the spatial loss
    t0 = time.perf_counter()
    mix, ref = datasets.simulate_mixture(n_spots, n_types=6, n_genes=120, depth=200.0, seed=seed + 1)
    pp.spatial_graph(mix, n_neighs=6)
    _tick("simulate mixture", t0)
    t0 = time.perf_counter()
    tl.deconvolve(mix, ref, groupby="cell_type", lambda_spatial=0.0, key_added="props_no_spatial")
    _tick("deconvolve (no spatial prior)", t0)
    t0 = time.perf_counter()
    tl.deconvolve(mix, ref, groupby="cell_type", key_added="props")  # the defaults: count model + spatial prior
    _tick("deconvolve (defaults)", t0)
    t0 = time.perf_counter()
    tl.deconvolve(mix, ref, groupby="cell_type", model="nnls", key_added="props_nnls")
    _tick("deconvolve (classic NNLS)", t0)
    truth = mix.obsm["props_truth"]
    types = list(mix.obsm["props"].columns)
    truth = truth[types].to_numpy() if hasattr(truth, "columns") else np.asarray(truth)
    deconvolution = {
        "model": str(mix.uns["props"]["params"]["model"]),
        "rmse_no_spatial": _rmse(mix.obsm["props_no_spatial"][types].to_numpy(), truth),
        "rmse_spatial": _rmse(mix.obsm["props"][types].to_numpy(), truth),
        "rmse_nnls": _rmse(mix.obsm["props_nnls"][types].to_numpy(), truth),
        "lambda": float(mix.uns["props"]["params"]["lambda_spatial"]),
    }
    fig = pl.props(mix, types=types[:3], ncols=3, dpi=dpi, show=False)
    fig.savefig(outdir / "props.png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)

    # 4. write everything
    t0 = time.perf_counter()
    adata.write_h5ad(outdir / FIELD_FILE)
    mix.write_h5ad(outdir / MIXTURE_FILE)
    _tick("write", t0)
    timings["total"] = time.perf_counter() - t_all
    files = [outdir / FIELD_FILE, outdir / MIXTURE_FILE] + [outdir / f for f in FIGURES]
    return {
        "n_spots": int(n_spots),
        "seed": int(seed),
        "out": str(outdir),
        "files": [str(f) for f in files],
        "smoothing": smoothing,
        "decay": {str(k): float(v) for k, v in rates["beta"].items()},
        "deconvolution": deconvolution,
        "timings": timings,
    }


def format_report(report: dict) -> str:
    """The demo's summary as text (what ``python -m smoother demo`` prints)."""
    s, d = report["smoothing"], report["deconvolution"]
    lines = [
        f"smoother demo: {report['n_spots']} spots (hexagonal lattice), seed {report['seed']}",
        f"  smoothing (lambda='auto' -> {s['lambda']:.3g}): RMSE vs truth {s['rmse_raw']:.3f} raw -> "
        f"{s['rmse_smoothed']:.3f} smoothed ({s['rmse_smoothed'] / s['rmse_raw']:.0%} of raw)",
        "  decay rate (fitted beta): " + ", ".join(f"{k} {v:.3f}" for k, v in report["decay"].items()),
        f"  deconvolution ({d['model']} count model): RMSE of proportions {d['rmse_no_spatial']:.4f} without -> "
        f"{d['rmse_spatial']:.4f} with the spatial prior (lambda {d['lambda']:.3g}); classic NNLS "
        f"{d['rmse_nnls']:.4f}",
        "  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items()),
        f"  wrote {len(report['files'])} files to {report['out']}/: "
        + ", ".join(Path(f).name for f in report["files"]),
    ]
    return "\n".join(lines)
