"""What every ``sm.pl`` function shares: the ``ax=`` / ``show=`` convention of scanpy."""

from __future__ import annotations

from typing import Any

from .._settings import settings
from .._validation import check_bool


def check_ax_show(ax: Any, show: Any) -> bool:
    """Check ``ax`` (a matplotlib Axes or None) and ``show`` (bool or None); return whether to show.

    ``show=None`` follows ``sm.settings.autoshow`` (True by default, like scanpy's ``settings.autoshow``).
    """
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            msg = f"Expected `ax` to be a matplotlib Axes or None, found {type(ax).__name__}."
            raise TypeError(msg)
    if show is None:
        return bool(settings.autoshow)
    return check_bool(show, "show")


def finish(result: Any, show: bool):
    """scanpy's ending: ``show=True`` calls ``plt.show()`` and returns ``None``; else the Axes / Figure."""
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return result
