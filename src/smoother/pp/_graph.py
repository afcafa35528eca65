from .._stub import not_yet

spatial_graph = not_yet("sm.pp.spatial_graph", "AnnData surface issue")
scale_by_expr = not_yet("sm.pp.scale_by_expr", "AnnData surface issue")
scale_by_identity = not_yet("sm.pp.scale_by_identity", "AnnData surface issue")
scale_by_histology = not_yet("sm.pp.scale_by_histology", "AnnData surface issue")
