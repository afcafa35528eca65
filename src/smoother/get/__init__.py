"""Getters: read results back from an AnnData in a convenient shape (like ``scanpy.get``).

Posterior standard deviations and credible intervals of ``sm.tl.smooth`` / ``sm.tl.impute`` / ``sm.tl.enhance``
(with ``uncertainty=True``) and of ``sm.tl.deconvolve``, computed for the chosen genes only: nothing of size
``n_obs x n_vars`` is built unless asked for.
"""

from ._posterior import interval, posterior_sd

__all__ = ["interval", "posterior_sd"]
