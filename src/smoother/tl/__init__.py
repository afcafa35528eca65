"""Tools: smoothing, imputation, dependency diagnostics, deconvolution and spatial dimension reduction."""

from ._decay import corr_decay, fit_decay, scan_rho, similarity_decay
from ._deconv import deconvolve
from ._impute import enhance, impute
from ._reduction import spatial_pca, spatial_vae
from ._smooth import smooth

__all__ = [
    "corr_decay",
    "deconvolve",
    "enhance",
    "fit_decay",
    "impute",
    "scan_rho",
    "similarity_decay",
    "smooth",
    "spatial_pca",
    "spatial_vae",
]
