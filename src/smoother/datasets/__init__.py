"""Simulated spatial data with ground truth.

Visium-like hexagonal lattices and square grids of any size (:func:`lattice`), smooth spatial fields plus
Gaussian, Poisson or negative binomial noise (:func:`simulate_field`), and cell-type mixtures with spatially
smooth proportions plus a single-cell reference (:func:`simulate_mixture`). Everything is seeded and built
without loops over spots, from 100 to 10^6 spots.
"""

from ._simulate import lattice, simulate_field, simulate_mixture

__all__ = ["lattice", "simulate_field", "simulate_mixture"]
