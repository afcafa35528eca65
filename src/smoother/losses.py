"""Transform spatial covariance into spatial loss (classic API)."""

from ._topology import TopLoss


class SpatialLoss:  # placeholder until the classic losses land
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SpatialLoss is being built.")


class ContrastiveSpatialLoss(SpatialLoss):
    pass


__all__ = ["ContrastiveSpatialLoss", "SpatialLoss", "TopLoss"]
