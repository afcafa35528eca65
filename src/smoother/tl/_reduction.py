from .._stub import not_yet

spatial_pca = not_yet("sm.tl.spatial_pca", "dimension reduction issue")
spatial_vae = not_yet("sm.tl.spatial_vae", "dimension reduction issue")
