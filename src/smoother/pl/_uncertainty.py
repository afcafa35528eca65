"""Maps of an estimate next to its posterior standard deviation, and intervals at chosen spots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import _constants as K
from .._anndata import check_adata, get_coords
from .._validation import check_key, check_real
from ._utils import check_ax_show, finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["intervals", "uncertainty"]


def _estimate(adata, gene_idx: int, key: str) -> np.ndarray:
    X = adata.layers[key] if key in adata.layers else adata.X
    col = X[:, gene_idx]
    col = col.toarray() if hasattr(col, "toarray") else col
    return np.asarray(col, dtype=np.float64).ravel()


def uncertainty(
    adata,
    gene: str,
    *,
    key: str = K.SMOOTHED,
    spatial_key: str = K.SPATIAL_KEY,
    cmap: str = "viridis",
    size: float | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
) -> Figure | None:
    """Map a gene's smoothed (or imputed) value next to its posterior standard deviation.

    Use after ``sm.tl.smooth(adata, uncertainty=True)`` (or on the AnnData returned by ``sm.tl.impute`` /
    ``sm.tl.enhance`` with ``uncertainty=True``): where the sd is large relative to the spatial pattern, the pattern
    is not supported by the data (few or noisy neighbours, spots far from any observation).

    Parameters
    ----------
    adata
        AnnData holding the fit ``key`` and its uncertainty (``obs[f'{key}_var_factor']``, ``var[f'{key}_sigma']``).
    gene
        A gene of ``adata.var_names``.
    key
        The ``key_added`` of the fit.
    spatial_key
        Coordinates in ``adata.obsm``.
    cmap, size, figsize
        Colour map, marker size, figure size.
    show
        Show the figure and return ``None`` (``None``: ``sm.settings.autoshow``); ``False`` returns the Figure.

    Returns
    -------
    :class:`~matplotlib.figure.Figure` with two panels (estimate, posterior sd), each with a colorbar, when
    ``show=False``; else ``None``. Save it with ``fig.savefig(...)``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    >>> fig = sm.pl.uncertainty(adata, "gene_0", show=False)
    >>> [ax.get_title() for ax in fig.axes[:2]]
    ['gene_0: smoothed', 'gene_0: posterior sd']
    >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    from ..get import posterior_sd

    check_adata(adata, writes=False)
    check_key(gene, "gene")
    check_key(key, "key")
    show = check_ax_show(None, show)
    if size is not None:
        check_real(size, "size", low=0.0, low_open=True, example="10")
    coords = get_coords(adata, spatial_key)
    sd = posterior_sd(adata, [gene], key=key).to_numpy()[:, 0]
    est = _estimate(adata, int(adata.var_names.get_loc(gene)), key)
    fig, axes = plt.subplots(1, 2, figsize=figsize or (9.5, 4.2), constrained_layout=True)
    s = size if size is not None else max(1.0, 12000.0 / max(adata.n_obs, 1))
    for ax, values, title in ((axes[0], est, f"{gene}: {key}"), (axes[1], sd, f"{gene}: posterior sd")):
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=s, cmap=cmap, linewidths=0)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, shrink=0.8)
    return finish(fig, show)


def intervals(
    adata,
    gene: str,
    spots: Sequence[str] | Sequence[int],
    *,
    key: str = K.SMOOTHED,
    level: float = 0.95,
    truth_layer: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Credible intervals of one gene at chosen spots, with the observed (and optionally the true) values.

    Use it after ``sm.tl.smooth(adata, uncertainty=True)`` (or ``sm.tl.impute`` / ``sm.tl.enhance`` with
    ``uncertainty=True``) to check a few spots by eye: how wide the interval is, and whether it covers the
    truth in a simulation. The intervals are those of :func:`smoother.get.interval`.

    Parameters
    ----------
    adata
        AnnData holding the fit ``key`` and its uncertainty.
    gene
        A gene of ``adata.var_names``.
    spots
        Spot names (``obs_names``) or integer positions, at most 200.
    key, level
        The fit and the interval's coverage (e.g. 0.95).
    truth_layer
        A layer with the true values (simulations), drawn as crosses.
    ax
        Axes to draw on (default: a new figure).
    show
        Show and return ``None`` (``None``: ``sm.settings.autoshow``); ``False`` returns the Axes.

    Returns
    -------
    :class:`~matplotlib.axes.Axes` when ``show=False``; else ``None``. Save it with ``ax.figure.savefig(...)``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    >>> ax = sm.pl.intervals(adata, "gene_0", spots=[0, 1, 2, 3, 4], truth_layer="truth", show=False)
    >>> len(ax.get_xticks()), ax.get_legend_handles_labels()[1]
    (5, ['95% interval', 'smoothed', 'truth'])
    >>> plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    from ..get import interval

    check_adata(adata, writes=False)
    check_key(gene, "gene")
    show = check_ax_show(ax, show)
    if gene not in adata.var_names:
        msg = f"Gene {gene!r} not found in `adata.var_names`."
        raise KeyError(msg)
    spots = list(spots)
    if not spots or len(spots) > 200:
        msg = f"Expected `spots` to list 1 to 200 spots, found {len(spots)}."
        raise ValueError(msg)
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in spots):
        pos = np.asarray(spots, dtype=np.int64)
        if (pos < 0).any() or (pos >= adata.n_obs).any():
            msg = f"Spot positions must lie in [0, {adata.n_obs - 1}]."
            raise ValueError(msg)
    else:
        pos = adata.obs_names.get_indexer(np.asarray(spots).astype(str))
        if (pos < 0).any():
            msg = f"Spots {list(np.asarray(spots)[pos < 0][:5])} not found in `adata.obs_names`."
            raise KeyError(msg)
    if truth_layer is not None and truth_layer not in adata.layers:
        msg = f"Layer {truth_layer!r} not found; available layers: {list(adata.layers.keys())}."
        raise KeyError(msg)
    lower, upper = interval(adata, [gene], key=key, level=level)
    est = _estimate(adata, int(adata.var_names.get_loc(gene)), key)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(pos) + 2), 3.5), constrained_layout=True)
    x = np.arange(len(pos))
    lo, hi = lower.to_numpy()[pos, 0], upper.to_numpy()[pos, 0]
    ax.vlines(x, lo, hi, color="0.5", lw=2, label=f"{level:.0%} interval")
    ax.plot(x, est[pos], "o", color="C0", label=key)
    if truth_layer is not None:
        tcol = adata.layers[truth_layer][:, int(adata.var_names.get_loc(gene))]
        tcol = np.asarray(tcol.toarray() if hasattr(tcol, "toarray") else tcol, dtype=np.float64).ravel()
        ax.plot(x, tcol[pos], "x", color="C3", label="truth")
    ax.set_xticks(x)
    ax.set_xticklabels([str(adata.obs_names[i]) for i in pos], rotation=90, fontsize=7)
    ax.set_ylabel(gene)
    ax.legend(frameon=False, fontsize=8)
    return finish(ax, show)
