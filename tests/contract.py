"""Shared tools of the contract tests (``tests/test_contract_*.py``).

Every public function must keep one contract on bad input: the right error type (``TypeError`` for a type,
``ValueError`` for a value, ``KeyError`` for a missing key), a message naming the user's argument, no work started
(no factorization, no solve, no training), and every AnnData exactly as it was.

- :func:`snapshot` / :func:`assert_unchanged` — a deep snapshot of an AnnData (matrices, data frames, ``uns``,
  names, view-ness) and its comparison.
- :func:`no_work` — a context manager under which any sparse factorization, iterative solve or torch optimizer
  step raises :class:`WorkStarted`.
- :func:`check_rejects` — all of the above for one call.
"""

from __future__ import annotations

import contextlib
import copy as _copy
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


class WorkStarted(AssertionError):
    """Raised by :func:`no_work` when a factorization, a solve or an optimizer step starts."""


def _freeze(value):
    if sp.issparse(value):
        return ("sparse", value.format, value.shape, value.toarray().copy())
    if isinstance(value, pd.DataFrame):
        return ("df", value.copy(deep=True))
    if isinstance(value, pd.Series | pd.Index):
        return ("series", value.copy(deep=True))
    if isinstance(value, np.ndarray):
        return ("array", value.copy())
    if hasattr(value, "compute") and hasattr(value, "chunks"):  # dask array: compare its values
        return ("array", np.asarray(value.compute()).copy())
    if isinstance(value, Mapping):
        return ("map", {k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return ("seq", [_freeze(v) for v in value])
    return ("obj", _copy.deepcopy(value))


def _equal(a, b, where: str) -> None:
    kind_a, kind_b = a[0], b[0]
    assert kind_a == kind_b, f"{where}: kind changed {kind_a} -> {kind_b}"
    if kind_a == "sparse":
        assert a[1:3] == b[1:3], f"{where}: sparse format/shape changed"
        np.testing.assert_array_equal(a[3], b[3], err_msg=where)
    elif kind_a == "df":
        pd.testing.assert_frame_equal(a[1], b[1], obj=where)
    elif kind_a == "series":
        if isinstance(a[1], pd.Index):
            pd.testing.assert_index_equal(a[1], b[1], obj=where)
        else:
            pd.testing.assert_series_equal(a[1], b[1], obj=where)
    elif kind_a == "array":
        assert a[1].dtype == b[1].dtype and a[1].shape == b[1].shape, f"{where}: dtype/shape changed"
        np.testing.assert_array_equal(a[1], b[1], err_msg=where)
    elif kind_a == "map":
        assert set(a[1]) == set(b[1]), f"{where}: keys changed {sorted(a[1])} -> {sorted(b[1])}"
        for k in a[1]:
            _equal(a[1][k], b[1][k], f"{where}[{k!r}]")
    elif kind_a == "seq":
        assert len(a[1]) == len(b[1]), f"{where}: length changed"
        for i, (x, y) in enumerate(zip(a[1], b[1], strict=True)):
            _equal(x, y, f"{where}[{i}]")
    else:
        x, y = a[1], b[1]
        both_nan = (
            isinstance(x, float | np.floating) and isinstance(y, float | np.floating) and np.isnan(x) and np.isnan(y)
        )
        assert both_nan or bool(np.all(x == y)), f"{where}: {x!r} -> {y!r}"


def snapshot(adata) -> dict:
    """A deep, independent snapshot of everything an AnnData holds (reading only: a view stays a view)."""
    snap = {
        "is_view": adata.is_view,
        "isbacked": adata.isbacked,
        "shape": adata.shape,
        "obs_names": _freeze(adata.obs_names),
        "var_names": _freeze(adata.var_names),
        "obs": _freeze(adata.obs),
        "var": _freeze(adata.var),
        "uns": _freeze(dict(adata.uns)),
    }
    if not adata.isbacked:
        snap["X"] = _freeze(adata.X)
    for slot in ("layers", "obsm", "varm", "obsp", "varp"):
        snap[slot] = _freeze({k: getattr(adata, slot)[k] for k in getattr(adata, slot).keys()})
    return snap


def assert_unchanged(adata, snap: dict) -> None:
    """Assert ``adata`` equals the :func:`snapshot` ``snap`` (same keys, values, dtypes, view-ness)."""
    now = snapshot(adata)
    for key in ("is_view", "isbacked", "shape"):
        assert now[key] == snap[key], f"adata.{key} changed: {snap[key]} -> {now[key]}"
    for key in snap:
        if key not in ("is_view", "isbacked", "shape"):
            _equal(snap[key], now[key], f"adata.{key}")


@contextlib.contextmanager
def no_work():
    """Fail (:class:`WorkStarted`) when a factorization, iterative solve or optimizer step starts inside."""
    import scipy.sparse.linalg as spla
    import torch

    from smoother._core import iterative, linalg, selinv

    def boom(*_args, **_kwargs):
        raise WorkStarted("work started before the arguments were checked")

    with pytest.MonkeyPatch.context() as mp:
        for cls in (linalg.SPDFactor, selinv.LDLFactor, selinv.SupernodalFactor, iterative.CGSolver):
            mp.setattr(cls, "__init__", boom)  # ChebyshevSolver inherits CGSolver's
        for name in ("splu", "spsolve", "cg", "minres", "eigsh", "lobpcg"):
            mp.setattr(spla, name, boom)
        for opt in (torch.optim.Adam, torch.optim.SGD, torch.optim.AdamW, torch.optim.LBFGS):
            mp.setattr(opt, "step", boom)
        yield


def check_rejects(
    func: Callable,
    *args,
    error: type[BaseException] | tuple[type[BaseException], ...],
    names: str | tuple[str, ...] = (),
    adatas: tuple = (),
    **kwargs,
) -> BaseException:
    """Call ``func(*args, **kwargs)`` and assert the whole contract for a rejected input.

    - it raises ``error`` (never :class:`WorkStarted`: the check came before any work);
    - the message contains every string of ``names`` (the argument the user typed);
    - every AnnData in ``adatas`` (default: those among ``args``/``kwargs``) is exactly as before.

    Returns the exception for further checks.
    """
    from anndata import AnnData

    names = (names,) if isinstance(names, str) else tuple(names)
    if not adatas:
        adatas = tuple(a for a in (*args, *kwargs.values()) if isinstance(a, AnnData))
    snaps = [snapshot(a) for a in adatas]
    with no_work(), pytest.raises(error) as info:
        func(*args, **kwargs)
    assert not isinstance(info.value, WorkStarted), "work started before the arguments were checked"
    msg = str(info.value)
    for name in names:
        assert name in msg, f"message does not name {name!r}: {msg}"
    for a, s in zip(adatas, snaps, strict=True):
        assert_unchanged(a, s)
    return info.value
