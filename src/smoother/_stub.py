"""Placeholder for capabilities that are still being built (each raises a clear error when called)."""

from __future__ import annotations


def not_yet(name: str, issue: str):
    def _f(*args, **kwargs):
        msg = f"`{name}` is not available in this version of smoother yet ({issue})."
        raise NotImplementedError(msg)

    _f.__name__ = name.rsplit(".", 1)[-1]
    _f.__doc__ = f"Not available yet ({issue})."
    return _f
