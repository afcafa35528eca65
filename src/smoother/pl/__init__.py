"""Plotting: decay diagnostics, deconvolved proportions and posterior uncertainty (matplotlib, imported lazily).

Every function takes ``show=`` with scanpy's meaning (``None`` follows ``sm.settings.autoshow``; ``False`` returns the
Axes, or the Figure of a multi-panel plot); save a figure with ``fig.savefig(...)`` / ``ax.figure.savefig(...)``.
"""

from ._decay import corr_decay, similarity_cdf
from ._props import props
from ._uncertainty import intervals, uncertainty

__all__ = ["corr_decay", "intervals", "props", "similarity_cdf", "uncertainty"]
