"""Spatial maps of deconvolved cell-type proportions (``sm.pl.props``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _constants as K
from .._validation import check_bool, check_int, check_key, check_real, check_unique_names

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
        frame = val
    else:
        if np.ndim(val) != 2:
            msg = f"Expected `adata.obsm[{key!r}]` to be a (n_obs, n_types) table, found shape {np.shape(val)}."
            raise ValueError(msg)
        cols = adata.uns.get(key, {}).get("types") if isinstance(adata.uns.get(key), dict) else None
        n = np.shape(val)[1]
        cols = [str(c) for c in cols] if cols is not None and len(cols) == n else [str(i) for i in range(n)]
        frame = pd.DataFrame(np.asarray(val), index=adata.obs_names, columns=cols)
    check_unique_names(frame.columns.astype(str), f"The cell types (columns) of `adata.obsm[{key!r}]`")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"Expected `adata.obsm[{key!r}]` to hold numbers (proportions)."
        raise TypeError(msg) from e
    return pd.DataFrame(values, index=adata.obs_names, columns=frame.columns.astype(str))


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
    show: bool | None = None,
    **kwargs,
):
    """One spatial panel per cell type, coloured by its estimated proportion.

    Use it after :func:`smoother.tl.deconvolve` to see where each cell type lies. On simulated data (or whenever
    true proportions are known) it also draws the truth under each estimate and a truth-vs-estimate scatter.

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
    show
        scanpy's convention: ``True`` calls ``plt.show()`` and returns ``None``, ``False`` returns the Figure,
        ``None`` follows ``sm.settings.autoshow``.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    With ``show=False`` the :class:`matplotlib.figure.Figure` (its axes are ``fig.axes``: estimates first, then
    truths, then the truth-vs-estimate scatter, then colour bars); ``None`` when shown.

    Raises
    ------
    KeyError
        ``obsm[key]``, ``obsm[truth_key]`` or ``obsm[spatial_key]`` missing, or a name in ``types`` unknown.
    TypeError, ValueError
        A bad argument (``types=[]``, non-unique names in ``types``, ``adata.obs_names`` or the table's columns,
        NaN coordinates, ...), checked before a figure is made.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.deconvolve(adata, ref, groupby="cell_type")  # -> adata.obsm["props"]
    >>> fig = sm.pl.props(adata, show=False)  # estimates, truths, and truth vs estimate
    >>> [ax.get_title() for ax in fig.axes[:4]]
    ['type_0 (estimate)', 'type_1 (estimate)', 'type_2 (estimate)', 'type_0 (truth)']
    >>> fig.axes[6].get_title().startswith("truth vs estimate (RMSE 0.0")
    True
    >>> plt.close(fig)
    """
    import matplotlib
    import matplotlib.pyplot as plt

    from .._anndata import check_adata, get_coords
    from ._utils import check_ax_show, finish

    # every argument is checked before a figure is made
    check_adata(adata, writes=False)
    show = check_ax_show(None, show)
    check_key(key, "key")
    check_key(truth_key, "truth_key")
    check_key(spatial_key, "spatial_key")
    ncols = check_int(ncols, "ncols", low=1, example="4")
    size = check_real(size, "size", low=0.0, low_open=True, allow_none=True, example="5")
    vmax = check_real(vmax, "vmax", allow_none=True, example="1.0")
    dpi = check_real(dpi, "dpi", low=0.0, low_open=True, allow_none=True, example="100")
    if compare_truth is not None:
        compare_truth = check_bool(compare_truth, "compare_truth")
    if figsize is not None:
        if isinstance(figsize, str) or np.ndim(figsize) != 1 or len(figsize) != 2:
            msg = f"Expected `figsize` to be (width, height) in inches, found {figsize!r} (e.g. figsize=(8, 6))."
            raise TypeError(msg)
        figsize = tuple(check_real(v, "figsize", low=0.0, low_open=True, example="(8, 6)") for v in figsize)
    if not isinstance(cmap, str | matplotlib.colors.Colormap):
        msg = f"Expected `cmap` to be a colormap name such as 'viridis', found {type(cmap).__name__}."
        raise TypeError(msg)
    if isinstance(cmap, str) and cmap not in matplotlib.colormaps:
        msg = f"Unknown `cmap` {cmap!r}; use a matplotlib colormap name, e.g. cmap='viridis'."
        raise ValueError(msg)
    if types is not None:
        if isinstance(types, str):
            types = [types]
        if np.ndim(types) != 1:
            msg = f"Expected `types` to be a list of cell-type names, found {types!r}."
            raise TypeError(msg)
        if len(types) == 0:
            msg = "Expected `types` to name at least one cell type, found an empty list (use types=None for all)."
            raise ValueError(msg)
        check_unique_names([str(t) for t in types], "The names in `types`")
    check_unique_names(adata.obs_names, "`adata.obs_names`")
    est = _as_frame(adata, key, "estimate")
    coords = get_coords(adata, spatial_key)[:, :2]
    cols = list(est.columns) if types is None else [str(t) for t in types]
    missing = [t for t in cols if t not in est.columns]
    if missing:
        msg = f"Cell types {missing} (argument `types`) not in `adata.obsm[{key!r}]` (columns: {list(est.columns)})."
        raise KeyError(msg)
    if est.shape[1] == 0:
        msg = f"`adata.obsm[{key!r}]` has no cell-type columns."
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
        tr = truth[cols].to_numpy()  # both tables are aligned with adata.obs_names
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
    return finish(fig, show)
