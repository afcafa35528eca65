"""smoother-omics 1.1.0's module path of the spatial MULTIVI: ``from smoother.models.reduction._spmultivi import
SPMULTIVAE, SpatialMULTIVI`` keeps working (both are defined with the other scvi-tools models, loaded on first use)."""

from __future__ import annotations

_NAMES = ("SPMULTIVAE", "SpatialMULTIVI")


def __getattr__(name: str):
    if name in _NAMES:
        from . import _spvae

        return getattr(_spvae, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(_NAMES)
