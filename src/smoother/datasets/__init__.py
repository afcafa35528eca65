"""Simulated spatial data with ground truth.

Visium-like hexagonal lattices and square grids of any size (:func:`lattice`), smooth spatial fields plus
Gaussian, Poisson or negative binomial noise (:func:`simulate_field`), and cell-type mixtures with spatially
smooth proportions plus a single-cell reference (:func:`simulate_mixture`). Everything is seeded and built
without loops over spots, from 100 to 10^6 spots.

Real tissue: :func:`dlpfc_151673` gives the human DLPFC Visium section 151673 (real spot positions, cortical
layers and layer-level expression; spot-level counts generated from them), read from ``SMOOTHER_DATA_DIR`` or
downloaded once. Visium HD-like square bins at 2/8/16 um (:func:`visium_hd`) come as a dask-backed AnnData
generated chunk by chunk, up to the full capture area.
"""

from ._dlpfc import dlpfc_151673
from ._simulate import lattice, simulate_field, simulate_mixture
from ._visium_hd import visium_hd

__all__ = ["dlpfc_151673", "lattice", "simulate_field", "simulate_mixture", "visium_hd"]
