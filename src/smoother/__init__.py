"""smoother: spatial dependency as a loss for spatial omics.

A spatial graph becomes the precision matrix of a Gaussian random field prior (SMA, SAR, ISAR, CAR, ICAR); its
quadratic form regularizes any spatial variable. AnnData-first API in :mod:`smoother.pp`, :mod:`smoother.tl`,
:mod:`smoother.pl`, simulated data in :mod:`smoother.datasets`, and the classic object API
(:class:`SpatialWeightMatrix`, :class:`SpatialLoss`, ...) of smoother-omics 1.1.0 on the same core.
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, pp, tl
from ._settings import settings
from .losses import ContrastiveSpatialLoss, SpatialLoss, TopLoss
from .weights import SpatialWeightMatrix

try:
    __version__ = version("smoother")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = [
    "ContrastiveSpatialLoss",
    "SpatialLoss",
    "SpatialWeightMatrix",
    "TopLoss",
    "datasets",
    "pl",
    "pp",
    "settings",
    "tl",
]
