"""Tools: smoothing, imputation, dependency diagnostics, deconvolution and spatial dimension reduction."""

from ._decay import corr_decay, fit_decay, similarity_decay
from ._deconv import deconvolve
from ._reduction import spatial_pca, spatial_vae
from ._smooth import enhance, impute, smooth

__all__ = [
    "corr_decay",
    "deconvolve",
    "enhance",
    "fit_decay",
    "impute",
    "similarity_decay",
    "smooth",
    "spatial_pca",
    "spatial_vae",
]
