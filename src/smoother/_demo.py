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


# font sizes in points for every figure of the demo (at least 9 pt; the PNGs are saved at ``dpi``, 120 by default)
_RC = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
}


def _column(mat, j: int) -> np.ndarray:
    col = mat[:, j]
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=float).ravel()


def _spot_size(n_obs: int, panel_inches: float) -> float:
    """Marker area (pt^2) that about fills a square panel of ``panel_inches`` with ``n_obs`` spots."""
    return max(1.0, (0.95 * panel_inches * 72.0 / np.sqrt(n_obs)) ** 2)


def _map_panel(ax, xy, values, title: str, *, vmin: float, vmax: float, size: float, label: str, cmap="viridis"):
    """One spatial map: coloured spots, equal aspect, no ticks, a title and a labelled colorbar."""
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    cb = ax.figure.colorbar(sc, ax=ax, shrink=0.8)
    cb.set_label(label)
    return sc


def _smoothing_figure(adata, gene: str, dpi: int):
    """Truth, observed and smoothed expression of ``gene`` on the slide, one colour scale."""
    import matplotlib.pyplot as plt

    xy = adata.obsm["spatial"]
    j = adata.var_names.get_loc(gene)
    panels = [
        ("truth (noise-free)", adata.layers["truth"]),
        ("observed (truth + noise)", adata.X),
        ("smoothed (sm.tl.smooth)", adata.layers["smoothed"]),
    ]
    truth = _column(adata.layers["truth"], j)
    lo, hi = np.percentile(truth, [0, 100])
    pad = 0.5 * (hi - lo)  # the same scale for the three panels; noise beyond it is clipped to the end colours
    size = _spot_size(adata.n_obs, 2.9)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=dpi, layout="constrained")
        for ax, (title, mat) in zip(axes, panels, strict=True):
            _map_panel(
                ax,
                xy,
                _column(mat, j),
                f"{gene}: {title}",
                vmin=lo - pad,
                vmax=hi + pad,
                size=size,
                label="expression (standardized)",
            )
    return fig


def _decay_figures(adata, dpi: int):
    """The data's neighbour-similarity decay against the two priors' correlation decay, and the similarity CDF."""
    import matplotlib.pyplot as plt

    from . import pl

    with plt.rc_context(_RC):
        fig1, ax = plt.subplots(figsize=(6, 4.6), dpi=dpi, layout="constrained")
        title = "Decay with neighbour degree: data vs priors\n(lines: median over spots; bands: 25-75% and 10-90%)"
        pl.corr_decay(adata, ax=ax, title=title, show=False)
        handles, labels = ax.get_legend_handles_labels()
        names = ["data (cosine similarity)" if k == "data" else f"correlation, {_prior_label(k)}" for k in labels]
        ax.get_legend().remove()
        fig1.legend(handles, names, frameon=False, loc="outside lower center", ncols=2)  # off the curves
        fig2, ax = plt.subplots(figsize=(5.5, 4), dpi=dpi, layout="constrained")
        pl.similarity_cdf(adata, ax=ax, title="Neighbour similarity: observed vs shuffled spots", show=False)
    return fig1, fig2


def _props_figure(mix, types: list[str], dpi: int):
    """Proportions of ``types`` (columns): the truth, the defaults' estimate, and the error (estimate - truth)
    without and with the spatial prior (rows)."""
    import matplotlib.pyplot as plt

    xy = mix.obsm["spatial"]
    truth = mix.obsm["props_truth"]
    err = {
        key: {t: np.asarray(mix.obsm[key][t], dtype=float) - np.asarray(truth[t], dtype=float) for t in types}
        for key in ("props_no_spatial", "props")
    }
    lim = max(float(np.percentile(np.abs(e), 99.5)) for d in err.values() for e in d.values())
    lim = float(np.ceil(lim * 20) / 20) or 0.05  # a round symmetric range shared by both error rows
    size = _spot_size(mix.n_obs, 2.6)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            4, len(types), figsize=(3.9 * len(types), 3.3 * 4), dpi=dpi, layout="constrained", squeeze=False
        )
        for c, t in enumerate(types):
            prop = {"vmin": 0.0, "vmax": 1.0, "size": size, "label": "proportion"}
            diff = {"vmin": -lim, "vmax": lim, "size": size, "label": "estimate - truth", "cmap": "RdBu_r"}
            _map_panel(axes[0, c], xy, np.asarray(truth[t], dtype=float), f"{t}: truth", **prop)
            _map_panel(axes[1, c], xy, np.asarray(mix.obsm["props"][t], dtype=float), f"{t}: estimate", **prop)
            _map_panel(axes[2, c], xy, err["props_no_spatial"][t], f"{t}: error, no spatial prior", **diff)
            _map_panel(axes[3, c], xy, err["props"][t], f"{t}: error, spatial prior", **diff)
        fig.suptitle(
            "Deconvolution (sm.tl.deconvolve): estimate with the defaults, and errors without / with the prior"
        )
    return fig


def make_figures(field, mix, *, dpi: int = 120) -> dict:
    """The demo's figures as ``{file name: Figure}`` from its two AnnData (as :func:`run_demo` writes them).

    ``field`` needs ``layers['truth']``, ``layers['smoothed']`` and the decay curves in ``uns['corr_decay']``;
    ``mix`` needs ``obsm['props']``, ``obsm['props_no_spatial']`` and ``obsm['props_truth']``. The caller closes
    the figures.
    """
    decay, cdf = _decay_figures(field, dpi)
    types = [str(t) for t in mix.obsm["props"].columns[:3]]
    return {
        "smoothing.png": _smoothing_figure(field, field.var_names[0], dpi),
        "corr_decay.png": decay,
        "similarity_cdf.png": cdf,
        "props.png": _props_figure(mix, types, dpi),
    }


def run_demo(*, n_spots: int = 3000, out: str | Path = "demo_out", seed: int = 0, dpi: int = 120) -> dict:
    """Run the showcase on simulated data and write its results to ``out``.

    Steps: :func:`smoother.datasets.simulate_field` (hexagonal lattice, five layers, 50 genes, Gaussian noise as
    large as the signal) -> :func:`smoother.pp.spatial_graph` -> :func:`smoother.tl.smooth` with
    ``lambda_spatial='auto'`` -> :func:`smoother.tl.similarity_decay` and :func:`smoother.tl.corr_decay` for two
    priors, summarized by :func:`smoother.tl.fit_decay` and plotted with :func:`smoother.pl.corr_decay` and
    :func:`smoother.pl.similarity_cdf` -> a simulated cell-type mixture (6 types, 120 genes, Poisson counts)
    deconvolved by :func:`smoother.tl.deconvolve` at its defaults (count model with the spatial prior), without the
    spatial prior (``lambda_spatial=0``) and with the classic NNLS (``model='nnls'``). Figures: see
    :func:`make_figures`.

    Parameters
    ----------
    n_spots
        Number of spots of each simulated dataset (at least 200).
    out
        Output folder (created when missing).
    seed
        Seed of the simulations.
    dpi
        Resolution of the PNG figures (fonts are at least 9 pt).

    Returns
    -------
    A dict with ``n_spots``, ``seed``, ``out`` (the folder), ``data`` (what was simulated), ``files`` (paths
    written: ``demo_field.h5ad``, ``demo_mixture.h5ad`` and the PNG figures ``smoothing.png``, ``corr_decay.png``,
    ``similarity_cdf.png``, ``props.png``), ``smoothing`` (``rmse_raw``, ``rmse_smoothed``: RMSE to the noise-free
    truth over all spots and genes; ``lambda``: the strength chosen), ``decay`` (fitted decay rate ``beta`` per
    curve: ``'data'`` and one per prior), ``deconvolution`` (``model``; RMSE of the proportions to the truth:
    ``rmse_spatial`` (the defaults), ``rmse_no_spatial``, ``rmse_nnls``; ``lambda``: the strength chosen) and
    ``timings`` (wall seconds per step, and ``total``).
    """
    if isinstance(n_spots, bool) or not isinstance(n_spots, int | np.integer) or n_spots < 200:
        raise ValueError(f"`n_spots` must be an integer >= 200, got {n_spots!r}.")
    if isinstance(dpi, bool) or not isinstance(dpi, int | np.integer) or dpi < 20:
        raise ValueError(f"`dpi` must be an integer >= 20, got {dpi!r}.")
    import matplotlib.pyplot as plt

    from . import datasets, pp, tl

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

    # 2. decay diagnostics: the data's neighbour similarity against two priors' implied correlation
    t0 = time.perf_counter()
    tl.similarity_decay(adata, max_k=30)
    for prior, rho in (("icar", 0.99), ("isar", 0.9)):
        tl.corr_decay(adata, prior=prior, rho=rho, max_k=30, n_sample=min(n_spots, 2000), seed=seed)
    rates = tl.fit_decay(adata)
    _tick("decay diagnostics", t0)

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

    # 4. figures and data
    t0 = time.perf_counter()
    for name, fig in make_figures(adata, mix, dpi=dpi).items():
        fig.savefig(outdir / name, dpi=dpi)
        plt.close(fig)
    _tick("figures", t0)
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
        "data": {"field_genes": int(adata.n_vars), "mixture_genes": int(mix.n_vars), "n_types": len(types)},
        "files": [str(f) for f in files],
        "smoothing": smoothing,
        "decay": {str(k): float(v) for k, v in rates["beta"].items()},
        "deconvolution": deconvolution,
        "timings": timings,
    }


def _prior_label(name: str) -> str:
    prior, _, rho = name.partition("_rho")
    return f"{prior} prior (rho={rho})" if rho else name


def format_report(report: dict) -> str:
    """The demo's summary as text (what ``python -m smoother demo`` prints): one measured number per line, each
    saying what it is."""
    s, d, dat = report["smoothing"], report["deconvolution"], report["data"]
    decay = report["decay"]
    beta_data = decay.get("data", float("nan"))

    def rate(v: float) -> str:
        return f"{v:.3f}" if np.isfinite(v) else "none (degenerate fit, see uns['corr_decay'])"

    priors = {k: v for k, v in decay.items() if k != "data"}
    usable = {k: abs(v - beta_data) for k, v in priors.items() if np.isfinite(v)}
    lines = [
        f"smoother demo, seed {report['seed']}: {report['n_spots']} simulated spots on a hexagonal lattice, "
        f"{dat['field_genes']} genes in five layered zones, Gaussian noise as large as the signal",
        "Smoothing (sm.tl.smooth with lambda_spatial='auto')",
        f"  lambda chosen from the data: {s['lambda']:.3g}",
        f"  RMSE to the noise-free truth, all spots and genes, raw -> smoothed: {s['rmse_raw']:.3f} -> "
        f"{s['rmse_smoothed']:.3f}",
        "Decay diagnostics (sm.tl.fit_decay: rate beta of a*exp(-beta*k) + c over neighbour degree k)",
        f"  decay rate of the data's neighbour cosine similarity: {rate(beta_data)}",
    ]
    lines += [f"  decay rate of the correlation under the {_prior_label(k)}: {rate(v)}" for k, v in priors.items()]
    if np.isfinite(beta_data) and usable:
        lines.append(f"  closest prior to the data's decay: {_prior_label(min(usable, key=usable.get))}")
    lines += [
        f"Deconvolution (sm.tl.deconvolve, {report['n_spots']} simulated spots, {dat['n_types']} cell types, "
        f"{dat['mixture_genes']} genes, Poisson counts): RMSE of the proportions to the truth",
        f"  defaults ({d['model']} count model + spatial prior): {d['rmse_spatial']:.4f}",
        f"  the same without the spatial prior (lambda_spatial=0): {d['rmse_no_spatial']:.4f}",
        f"  classic NNLS (model='nnls'): {d['rmse_nnls']:.4f}",
        f"  spatial strength chosen by the defaults (lambda_spatial='auto'): {d['lambda']:.3g}",
        "Wall seconds per step (shared machines make these vary): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()),
        f"Wrote {len(report['files'])} files to {report['out']}/: " + ", ".join(Path(f).name for f in report["files"]),
    ]
    return "\n".join(lines)
