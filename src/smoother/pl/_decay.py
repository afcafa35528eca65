"""Plots of the dependency diagnostics of :func:`smoother.tl.corr_decay` and :func:`smoother.tl.similarity_decay`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import _constants as K
from ._utils import check_ax_show, finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["corr_decay", "similarity_cdf"]

_KINDS = ("band", "box", "line")
_QCOLS = ("Q10", "Q25", "Q50", "Q75", "Q90")


def _store(adata, fn: str = "sm.tl.corr_decay"):
    """``adata.uns['corr_decay']`` (``TypeError`` for a non-AnnData, ``KeyError`` naming ``fn`` when missing)."""
    from .._anndata import check_adata

    check_adata(adata, writes=False)
    store = adata.uns.get(K.CORR_DECAY)
    if not isinstance(store, Mapping) or not store:
        msg = f"No results in `adata.uns['corr_decay']`. Please run `{fn}` first."
        raise KeyError(msg)
    return store


def _select(store, keys, fn: str = "sm.tl.corr_decay", name: str = "keys") -> list[str]:
    if keys is None:
        names = list(store.keys())
        # the data curve first, then the priors
        return sorted(names, key=lambda n: 0 if _kind(store[n]) == "data" else 1)
    items = [keys] if isinstance(keys, str) else keys
    if isinstance(items, bytes) or not isinstance(items, Sequence | np.ndarray):
        msg = f"Expected `{name}` to be an entry name, a list of them or None, found {type(keys).__name__}."
        raise TypeError(msg)
    items = list(items)
    if not items or not all(isinstance(k, str) for k in items):
        msg = f"Expected `{name}` to hold at least one entry name (strings), found `{keys!r}`."
        raise (ValueError if not items else TypeError)(msg)
    missing = [k for k in items if k not in store]
    if missing:
        msg = (
            f"Result(s) {missing} not found in `adata.uns['corr_decay']` (available: {list(store.keys())}). "
            f"Please run `{fn}` first."
        )
        raise KeyError(msg)
    for k in items:
        q = store[k].get("quantiles") if isinstance(store[k], Mapping) else None
        if not hasattr(q, "columns") or not {"k", *_QCOLS} <= set(q.columns):
            msg = f"`adata.uns['corr_decay'][{k!r}]` has no decay table (Q10 .. Q90, k). Please run `{fn}` again."
            raise KeyError(msg)
    return items


def _check_plot_args(*, figsize, title, legend, palette, n_colors: int) -> None:
    """Checks shared by the plots: ``figsize``, ``title``, ``legend``, ``palette`` (``ax``, ``show``: elsewhere)."""
    from .._validation import check_bool, check_real

    if figsize is not None:
        if isinstance(figsize, str) or not isinstance(figsize, Sequence | np.ndarray) or len(figsize) != 2:
            msg = f"Expected `figsize` to be (width, height) in inches or None, found `{figsize!r}`."
            raise TypeError(msg)
        for i, v in enumerate(figsize):
            check_real(v, f"figsize[{i}]", low=0.0, low_open=True, example="4.0")
    if title is not None and not isinstance(title, str):
        msg = f"Expected `title` to be a string or None, found {type(title).__name__}."
        raise TypeError(msg)
    check_bool(legend, "legend")
    if palette is not None:
        if isinstance(palette, str) or not isinstance(palette, Sequence | np.ndarray) or len(palette) < 1:
            msg = f"Expected `palette` to be a list of colours (e.g. ['tab:red', 'tab:grey']), found `{palette!r}`."
            raise TypeError(msg)
        from matplotlib.colors import is_color_like

        bad = [c for c in palette if not is_color_like(c)]
        if bad:
            msg = f"`palette` holds values that are not colours: {bad[:3]}; use e.g. ['tab:red', 'tab:grey']."
            raise ValueError(msg)
        if len(palette) < n_colors:
            msg = f"`palette` has {len(palette)} colour(s), {n_colors} needed."
            raise ValueError(msg)


def _kind(entry) -> str:
    params = entry.get("params", {}) if hasattr(entry, "get") else {}
    return str(params.get("kind", "prior"))


def _draw(ax, df, *, kind: str, color, label: str, offset: float = 0.0, width: float = 0.8, alpha: float = 1.0):
    k = df["k"].to_numpy(dtype=float) + offset
    q = {c: df[c].to_numpy(dtype=float) for c in _QCOLS}
    if kind == "band":
        ax.fill_between(k, q["Q10"], q["Q90"], color=color, alpha=0.15 * alpha, linewidth=0, label=None)
        ax.fill_between(k, q["Q25"], q["Q75"], color=color, alpha=0.3 * alpha, linewidth=0, label=None)
        ax.plot(k, q["Q50"], color=color, label=label)
    elif kind == "line":
        styles = {"Q10": ":", "Q25": "--", "Q50": "-", "Q75": "--", "Q90": ":"}
        for c in _QCOLS:
            ax.plot(k, q[c], color=color, linestyle=styles[c], label=label if c == "Q50" else None, gid=c)
    else:  # box
        from matplotlib.collections import LineCollection
        from matplotlib.patches import Rectangle

        half = width / 2
        whiskers = [[(x, lo), (x, hi)] for x, lo, hi in zip(k, q["Q10"], q["Q90"], strict=True)]
        caps = [[(x - half / 2, y), (x + half / 2, y)] for x, y in zip(k, q["Q10"], strict=True)]
        caps += [[(x - half / 2, y), (x + half / 2, y)] for x, y in zip(k, q["Q90"], strict=True)]
        ax.add_collection(LineCollection(whiskers + caps, colors=[color], linewidths=0.8, gid="whiskers"))
        for x, lo, hi in zip(k, q["Q25"], q["Q75"], strict=True):
            ax.add_patch(Rectangle((x - half, lo), width, hi - lo, facecolor="white", edgecolor=color, zorder=2))
        medians = [[(x - half, y), (x + half, y)] for x, y in zip(k, q["Q50"], strict=True)]
        ax.add_collection(LineCollection(medians, colors=[color], linewidths=1.5, zorder=3, gid="medians"))
        ax.plot([], [], color=color, label=label)  # legend handle
        ax.autoscale_view()


def corr_decay(
    adata,
    keys: str | Sequence[str] | None = None,
    *,
    kind: str = "band",
    panels: bool = False,
    palette: Sequence | None = None,
    ax=None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    legend: bool = True,
    show: bool | None = None,
) -> Axes | Figure | None:
    """Correlation / similarity decay against neighbourhood degree ``k``.

    Draws, for each stored curve, the median (Q50) against ``k`` with the Q25–Q75 and Q10–Q90 ranges: shaded
    bands (``kind='band'``), boxes with whiskers (``'box'``) or five lines (``'line'``). The data curve
    (:func:`smoother.tl.similarity_decay`) and prior curves (:func:`smoother.tl.corr_decay`) are overlaid on one
    Axes (the main use: pick the prior whose decay matches the data's), or drawn one per panel. A prior whose
    curve lies below the data's decays too fast (raise ``rho``); above it, too slowly.

    Parameters
    ----------
    adata
        AnnData with ``adata.uns['corr_decay']``.
    keys
        Entry name(s) to draw; ``None``: all (the data curve first).
    kind
        ``'band'``, ``'box'`` or ``'line'``.
    panels
        One panel per key (returns the Figure) instead of overlaying them on one Axes.
    palette
        Colours, one per key (default: matplotlib's colour cycle).
    ax
        Axes to draw into (overlay only); a new figure otherwise.
    figsize
        Size of a new figure.
    title
        Axes title.
    legend
        Add a legend naming the keys.
    show
        As in scanpy: ``True`` shows the figure (``plt.show()``) and returns ``None``; ``False`` returns it for
        further drawing; ``None`` (default) follows ``sm.settings.autoshow`` (``True`` unless changed).

    Returns
    -------
    With ``show=False``: the :class:`~matplotlib.axes.Axes` (overlay) or the :class:`~matplotlib.figure.Figure`
    (``panels=True``); otherwise ``None``. To save a plot, as scanpy recommends (it has deprecated ``save=``):
    ``ax = sm.pl.corr_decay(adata, show=False)`` then ``ax.figure.savefig("decay.pdf")`` (``fig.savefig`` for
    panels).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.similarity_decay(adata, max_k=30)  # the data's curve
    >>> sm.tl.corr_decay(adata, prior="icar", rho=0.99, max_k=30)  # a prior's curve
    >>> ax = sm.pl.corr_decay(adata, show=False)
    >>> [line.get_label() for line in ax.get_lines()[:2]], ax.get_xlabel()
    (['data', 'icar_rho0.99'], 'Neighbourhood degree k')
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)  # after ax.figure.savefig("decay.pdf"), say
    """
    from .._validation import check_bool, check_choice

    store = _store(adata)
    names = _select(store, keys)
    check_choice(kind, "kind", _KINDS)
    panels = check_bool(panels, "panels")
    show = check_ax_show(ax, show)
    _check_plot_args(figsize=figsize, title=title, legend=legend, palette=palette, n_colors=1)
    if panels and ax is not None:
        msg = "`ax` cannot be used with `panels=True`; pass `panels=False` to draw into `ax`."
        raise ValueError(msg)
    import matplotlib.pyplot as plt

    colors = list(palette) if palette is not None else plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(colors) < len(names):
        colors = [colors[i % len(colors)] for i in range(len(names))]

    def _label(ax_, has_data):
        ax_.set_xlabel("Neighbourhood degree k")
        ax_.set_ylabel("Correlation / cosine similarity" if has_data else "Correlation")
        ax_.axhline(0.0, color="grey", linestyle="--", linewidth=0.8, zorder=0)

    if panels:
        ncol = min(3, len(names))
        nrow = int(np.ceil(len(names) / ncol))
        fig, axes = plt.subplots(
            nrow, ncol, figsize=figsize or (4 * ncol, 3.2 * nrow), squeeze=False, sharex=True, sharey=True
        )
        for i, (name, a) in enumerate(zip(names, axes.ravel(), strict=False)):
            _draw(a, store[name]["quantiles"], kind=kind, color=colors[i], label=name)
            _label(a, _kind(store[name]) == "data")
            a.set_title(name)
        for a in axes.ravel()[len(names) :]:
            a.set_visible(False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return finish(fig, show)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (5, 3.5))
    n = len(names)
    width = 0.8 / n if kind == "box" else 0.8
    for i, name in enumerate(names):
        offset = (i - (n - 1) / 2) * width if kind == "box" else 0.0
        _draw(ax, store[name]["quantiles"], kind=kind, color=colors[i], label=name, offset=offset, width=width)
    _label(ax, any(_kind(store[nm]) == "data" for nm in names))
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(frameon=False)
    return finish(ax, show)


def similarity_cdf(
    adata,
    key: str = "data",
    *,
    ax=None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    palette: Sequence | None = None,
    legend: bool = True,
    show: bool | None = None,
) -> Axes | None:
    """Cumulative distribution of neighbour similarity in the data against the shuffled-pairs null.

    Two curves from ``adata.uns['corr_decay'][key]['similarity_cdf']`` (:func:`smoother.tl.similarity_decay`):
    x = cosine similarity, y = fraction of pairs with at most that similarity, for the observed neighbour pairs
    (label ``'observed'``) and the shuffled pairs (``'shuffled'``); a dashed line marks the median (y = 0.5). A
    curve to the right of the null means neighbours are more alike than random pairs.

    Parameters
    ----------
    adata
        AnnData with the results of :func:`smoother.tl.similarity_decay`.
    key
        Entry name (``key_added`` of :func:`smoother.tl.similarity_decay`).
    ax
        Axes to draw into; a new figure otherwise.
    figsize
        Size of a new figure.
    title
        Axes title.
    palette
        Two colours (observed, shuffled).
    legend
        Add a legend.
    show
        As in scanpy: ``True`` shows the figure and returns ``None``; ``False`` returns the Axes; ``None``
        (default) follows ``sm.settings.autoshow``.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` with ``show=False``, otherwise ``None``. Save it with
    ``sm.pl.similarity_cdf(adata, show=False).figure.savefig("cdf.pdf")`` (scanpy's ``save=`` is deprecated).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, pattern="gp", n_genes=20, noise_level=0.2, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.similarity_decay(adata, max_k=30)
    >>> ax = sm.pl.similarity_cdf(adata, show=False)
    >>> [line.get_label() for line in ax.get_lines()[:2]], ax.get_ylabel()
    (['observed', 'shuffled'], 'Cumulative fraction of pairs')
    >>> plt.close(ax.figure)
    """
    store = _store(adata, "sm.tl.similarity_decay")
    if not isinstance(key, str):
        msg = f"Expected `key` to be an entry name (a string), found {type(key).__name__} `{key!r}`."
        raise TypeError(msg)
    _select(store, key, "sm.tl.similarity_decay", name="key")
    show = check_ax_show(ax, show)
    _check_plot_args(figsize=figsize, title=title, legend=legend, palette=palette, n_colors=2)
    entry = store[key]
    if not hasattr(entry.get("similarity_cdf"), "columns"):
        msg = f"`adata.uns['corr_decay'][{key!r}]` has no similarity CDF. Please run `sm.tl.similarity_decay` first."
        raise KeyError(msg)
    import matplotlib.pyplot as plt

    df = entry["similarity_cdf"]
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (4.5, 3.5))
    colors = list(palette) if palette is not None else ["tab:red", "tab:grey"]
    q = df["quantile"].to_numpy(dtype=float)
    ax.plot(df["observed"].to_numpy(dtype=float), q, color=colors[0], label="observed")
    ax.plot(df["shuffled"].to_numpy(dtype=float), q, color=colors[1], label="shuffled")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xlabel("Cosine similarity between neighbouring spots")
    ax.set_ylabel("Cumulative fraction of pairs")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(frameon=False)
    return finish(ax, show)
