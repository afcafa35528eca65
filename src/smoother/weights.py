"""Spatial weight matrices from coordinates, expression and histology (classic API)."""


class SpatialWeightMatrix:  # placeholder until the classic weights land
    def __init__(self):
        raise NotImplementedError("SpatialWeightMatrix is being built.")
