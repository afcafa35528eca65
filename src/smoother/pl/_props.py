"""Spatial maps of deconvolved cell-type proportions (``sm.pl.props``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _constants as K

__all__ = ["props"]


def _as_frame(adata, key: str, what: str):
    import pandas as pd

    if key not in adata.obsm:
        fix = (
            "Please run `sm.tl.deconvolve` first."
            if what == "estimate"
            else "Simulated data carry it (`sm.datasets.simulate_mixture`)."
        )
        msg = f"Proportions `adata.obsm[{key!r}]` not found. {fix}"
        raise KeyError(msg)
    val = adata.obsm[key]
    if isinstance(val, pd.DataFrame):
        return val
    cols = adata.uns.get(key, {}).get("types") if isinstance(adata.uns.get(key), dict) else None
    cols = (
        list(cols) if cols is not None and len(cols) == np.shape(val)[1] else [str(i) for i in range(np.shape(val)[1])]
    )
    return pd.DataFrame(np.asarray(val), index=adata.obs_names, columns=cols)


def props(
    adata,
    *,
    key: str = K.PROPS,
    types: Sequence[str] | None = None,
    compare_truth: bool | None = None,
    truth_key: str = K.PROPS_TRUTH,
    spatial_key: str = K.SPATIAL_KEY,
    ncols: int = 4,
    cmap: str = "viridis",
    size: float | None = None,
    vmax: float | None = 1.0,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    **kwargs,
):
    """One spatial panel per cell type, coloured by its estimated proportion.

    Parameters
    ----------
    adata
        AnnData with ``obsm[key]`` (from :func:`smoother.tl.deconvolve`) and coordinates in ``obsm[spatial_key]``.
    key
        Proportions in ``adata.obsm``.
    types
        Subset (and order) of cell types to show; default all.
    compare_truth
        Add, under each estimate, the true proportions from ``obsm[truth_key]`` and one last panel with true
        vs estimated proportions of all types (with the RMSE in its title). Default: when ``obsm[truth_key]``
        exists.
    truth_key
        True proportions in ``adata.obsm`` (simulations).
    spatial_key
        Coordinates in ``adata.obsm``.
    ncols
        Panels per row.
    cmap, size, vmax
        Colour map, marker size (default from the number of spots) and upper colour limit (``None``: per panel).
    figsize, dpi
        Figure size and resolution.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    :class:`matplotlib.figure.Figure`; its axes are ``fig.axes`` (estimates first, then truths, then the
    truth-vs-estimate scatter, then colour bars).
    """
    import matplotlib.pyplot as plt

    est = _as_frame(adata, key, "estimate")
    if spatial_key not in adata.obsm:
        msg = f"Coordinates `adata.obsm[{spatial_key!r}]` not found; pass `spatial_key=`."
        raise KeyError(msg)
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    cols = list(est.columns) if types is None else [str(t) for t in types]
    missing = [t for t in cols if t not in est.columns]
    if missing:
        msg = f"Cell types {missing} not in `adata.obsm[{key!r}]` (columns: {list(est.columns)})."
        raise KeyError(msg)
    if not isinstance(ncols, int) or ncols < 1:
        msg = f"Expected `ncols` to be a positive integer, found {ncols!r}."
        raise ValueError(msg)
    if compare_truth is None:
        compare_truth = truth_key in adata.obsm
    truth = _as_frame(adata, truth_key, "truth") if compare_truth else None
    if truth is not None:
        miss_t = [t for t in cols if t not in truth.columns]
        if miss_t:
            msg = f"Cell types {miss_t} not in `adata.obsm[{truth_key!r}]` (columns: {list(truth.columns)})."
            raise KeyError(msg)

    n = len(cols)
    nc = min(ncols, n)
    nr_est = int(np.ceil(n / nc))
    nrows = nr_est * (2 if truth is not None else 1) + (1 if truth is not None else 0)
    figsize = figsize or (3.2 * nc, 3.0 * nrows)
    fig, axs = plt.subplots(nrows, nc, figsize=figsize, dpi=dpi, squeeze=False)
    s = size if size is not None else max(1.0, 2e4 / max(len(coords), 1))
    kw = {"s": s, "cmap": cmap, "vmin": 0.0, "vmax": vmax, "linewidths": 0, **kwargs}

    def panel(ax, values, title):
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=values, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.invert_yaxis()
        return sc

    used = []
    for i, t in enumerate(cols):
        ax = axs[i // nc, i % nc]
        sc = panel(ax, est[t].to_numpy(), f"{t}" if truth is None else f"{t} (estimate)")
        used.append((ax, sc))
    if truth is not None:
        for i, t in enumerate(cols):
            ax = axs[nr_est + i // nc, i % nc]
            sc = panel(ax, truth[t].to_numpy(), f"{t} (truth)")
            used.append((ax, sc))
        ax = axs[nrows - 1, 0]
        e = est[cols].to_numpy()
        tr = truth.loc[est.index, cols].to_numpy()
        for j, t in enumerate(cols):
            ax.scatter(tr[:, j], e[:, j], s=3, alpha=0.5, label=str(t), linewidths=0)
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        rmse = float(np.sqrt(np.mean((e - tr) ** 2)))
        ax.set_title(f"truth vs estimate (RMSE {rmse:.3f})", fontsize=9)
        ax.set_xlabel("true proportion")
        ax.set_ylabel("estimated proportion")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if n <= 10:
            ax.legend(fontsize=6, markerscale=2, frameon=False)
        used.append((ax, None))
    used_axes = {id(a) for a, _ in used}
    for ax in axs.ravel():
        if id(ax) not in used_axes:
            ax.remove()
    for ax, sc in used:
        if sc is not None:
            fig.colorbar(sc, ax=ax, shrink=0.7)
    fig.tight_layout()
    return fig
