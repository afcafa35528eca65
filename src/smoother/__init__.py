"""smoother: spatial dependency as a loss for spatial omics.

A spatial graph becomes the precision matrix of a Gaussian random field prior (SMA, SAR, ISAR, CAR, ICAR); its
quadratic form regularizes any spatial variable. AnnData-first API in :mod:`smoother.pp`, :mod:`smoother.tl`,
:mod:`smoother.pl`, data in :mod:`smoother.datasets`, and the classic object API (:class:`SpatialWeightMatrix`,
:class:`SpatialLoss`, ...) of smoother-omics 1.1.0 on the same core.

``import smoother`` is instant: the submodules, and with them torch, numba, scipy and matplotlib, load on first use
(``sm.tl``, ``sm.SpatialLoss``, ...).

A typical run: a spatial graph from the coordinates (:func:`smoother.pp.spatial_graph`, or squidpy's), then a
tool of :mod:`smoother.tl` on it (log-normalized expression for smoothing, imputation and spatial PCA; counts
for deconvolution and the spatial VAE), then a plot of :mod:`smoother.pl`.

Examples
--------
>>> import smoother as sm
>>> adata = sm.datasets.simulate_field(400, n_genes=10, seed=0)  # simulated spots with a known truth
>>> sm.pp.spatial_graph(adata)  # -> adata.obsp["spatial_connectivities"]
>>> sm.tl.smooth(adata, lambda_spatial=1.0)  # -> adata.layers["smoothed"]
>>> adata.layers["smoothed"].shape
(400, 10)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._settings import settings

DISTRIBUTION = "smoother-spatial"  # the name on PyPI; the import name is `smoother`

# name -> (module, attribute or None for the module itself), loaded on first access
_LAZY = {
    "datasets": ("smoother.datasets", None),
    "get": ("smoother.get", None),
    "pl": ("smoother.pl", None),
    "pp": ("smoother.pp", None),
    "tl": ("smoother.tl", None),
    "losses": ("smoother.losses", None),
    "weights": ("smoother.weights", None),
    "models": ("smoother.models", None),
    "utils": ("smoother.utils", None),
    "SpatialLoss": ("smoother.losses", "SpatialLoss"),
    "ContrastiveSpatialLoss": ("smoother.losses", "ContrastiveSpatialLoss"),
    "TopLoss": ("smoother.losses", "TopLoss"),
    "SpatialWeightMatrix": ("smoother.weights", "SpatialWeightMatrix"),
    "write_zarr": ("smoother._io", "write_zarr"),
}

if TYPE_CHECKING:  # for type checkers and IDEs; not executed
    from . import datasets, get, losses, models, pl, pp, tl, utils, weights
    from ._io import write_zarr
    from .losses import ContrastiveSpatialLoss, SpatialLoss, TopLoss
    from .weights import SpatialWeightMatrix


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()["__version__"] = value = _version()
        return value
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'smoother' has no attribute {name!r}") from None
    obj = importlib.import_module(module)
    if attr is not None:
        obj = getattr(obj, attr)
    globals()[name] = obj  # later accesses skip __getattr__
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ContrastiveSpatialLoss",
    "SpatialLoss",
    "SpatialWeightMatrix",
    "TopLoss",
    "datasets",
    "get",
    "losses",
    "models",
    "pl",
    "pp",
    "settings",
    "tl",
    "utils",
    "weights",
    "write_zarr",
]
