"""Plotting: decay diagnostics and deconvolved proportions (matplotlib, imported lazily)."""

from ._decay import corr_decay, similarity_cdf
from ._props import props

__all__ = ["corr_decay", "props", "similarity_cdf"]
