"""Spatially aware dimension reduction models (classic API).

``SpatialPCA`` and ``SpatialAutoEncoder`` need only torch. ``SpatialVAE``, ``SpatialANVI`` and
``SpatialMULTIVI`` build on scvi-tools (``pip install 'smoother[scvi]'``) and are imported on first access, so
importing this module never imports scvi-tools.
"""

from __future__ import annotations

from ._spae import SpatialAutoEncoder
from ._sppca import SpatialPCA

_SCVI_MODELS = {"SpatialVAE": "._spvae", "SpatialANVI": "._spvae", "SpatialMULTIVI": "._spvae"}

__all__ = ["SpatialANVI", "SpatialAutoEncoder", "SpatialMULTIVI", "SpatialPCA", "SpatialVAE"]


def __getattr__(name: str):
    if name in _SCVI_MODELS:
        from importlib import import_module

        try:
            module = import_module(_SCVI_MODELS[name], __name__)
        except ImportError as e:
            if "scvi" in str(e):
                msg = f"`{name}` needs scvi-tools: `pip install 'smoother[scvi]'`."
                raise ImportError(msg) from e
            raise
        value = getattr(module, name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(set(globals()) | set(_SCVI_MODELS))
