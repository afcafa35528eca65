"""Preprocessing: spatial graphs on AnnData and their scaling by expression, labels or histology."""

from ._graph import scale_by_expr, scale_by_histology, scale_by_identity, spatial_graph

__all__ = ["scale_by_expr", "scale_by_histology", "scale_by_identity", "spatial_graph"]
