"""Topological loss (classic ``smoother.losses.TopLoss``)."""

from __future__ import annotations

import torch


class TopLoss(torch.nn.Module):
    """Topological loss on a spatial variable (``num_group x num_spot``); see ``spec/toploss.md``.

    Not available yet: constructing it raises ``NotImplementedError``.
    """

    def __init__(self, betti_priors: dict, coords_xy) -> None:
        msg = "TopLoss needs the persistence backend, which is not available in this version yet."
        raise NotImplementedError(msg)
