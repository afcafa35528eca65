"""Every AnnData key name smoother reads or writes, built in one place."""

from __future__ import annotations

PRIORS = ("sma", "sar", "isar", "car", "icar")

SPATIAL_KEY = "spatial"  # obsm key of coordinates (squidpy / scanpy convention)


def conn_key(key_added: str = "spatial") -> str:
    """obsp key of a spatial graph's connectivities (squidpy: ``{key}_connectivities``)."""
    return key_added if key_added.endswith("_connectivities") else f"{key_added}_connectivities"


def dist_key(key_added: str = "spatial") -> str:
    """obsp key of a spatial graph's distances (squidpy: ``{key}_distances``)."""
    base = key_added[: -len("_connectivities")] if key_added.endswith("_connectivities") else key_added
    return f"{base}_distances"


def neighbors_key(key_added: str = "spatial") -> str:
    """uns key describing a spatial graph (squidpy: ``{key}_neighbors``)."""
    base = key_added[: -len("_connectivities")] if key_added.endswith("_connectivities") else key_added
    return f"{base}_neighbors"


DEFAULT_CONN = conn_key("spatial")  # 'spatial_connectivities'
SCALED_CONN = conn_key("smoother")  # 'smoother_connectivities', written by sm.pp.scale_by_*

SMOOTHED = "smoothed"  # layers key of sm.tl.smooth
CORR_DECAY = "corr_decay"  # uns key of sm.tl.corr_decay / similarity_decay
PROPS = "props"  # obsm key of sm.tl.deconvolve
PROPS_TRUTH = "props_truth"  # obsm key of simulated true proportions
TRUTH = "truth"  # layers key of simulated noise-free expression
SPATIAL_PCA = "spatial_pca"  # sm.tl.spatial_pca -> obsm['X_spatial_pca'], varm['spatial_PCs']

# sm.datasets (simulated data)
SIMULATION = "simulation"  # uns key with the parameters of a simulation
ZONE = "zone"  # obs key of the true zone / layer (simulate_field(pattern='zones'))
SIGNATURE_TRUTH = "signature_truth"  # varm key of the true signatures (n_genes, n_types)
CELL_TYPE = "cell_type"  # obs key of the single-cell reference's cell types
CELL_TYPES = "cell_types"  # uns key listing the simulated cell types in column order

# sm.tl.spatial_pca / sm.tl.spatial_vae
SPATIAL_VAE = "spatial_vae"  # sm.tl.spatial_vae -> obsm['X_spatial_vae'], uns['spatial_vae']


def reduction_obsm_key(key_added: str) -> str:
    """obsm key of an embedding (scanpy style ``X_{key}``): ``X_spatial_pca``, ``X_spatial_vae``."""
    return f"X_{key_added}"


def reduction_varm_key(key_added: str) -> str:
    """varm key of spatial PCA loadings: ``spatial_PCs`` for the default key, else ``{key}_PCs``."""
    return "spatial_PCs" if key_added == SPATIAL_PCA else f"{key_added}_PCs"
