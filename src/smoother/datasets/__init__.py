"""Simulated spatial data with ground truth."""

from ._simulate import lattice, simulate_field, simulate_mixture

__all__ = ["lattice", "simulate_field", "simulate_mixture"]
