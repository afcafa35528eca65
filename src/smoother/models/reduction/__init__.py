"""Spatially aware dimension reduction models."""
