"""Shared input checks with uniform, actionable messages.

Every check raises *before* any work is done, so a failed call leaves the user's data unchanged.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._constants import PRIORS


def as_float_array(x: Any, name: str, *, expected: str, densify_sparse: bool = False) -> np.ndarray:
    """Convert a torch tensor, pandas object or array-like to a float64 ``ndarray``.

    Parameters
    ----------
    x
        The user's input.
    name
        Argument name used in the error message.
    expected
        What the argument should be, e.g. ``"a numeric array of shape (n_spots, 2)"``.
    densify_sparse
        Turn a scipy sparse matrix into a dense array (only for inputs that are small or dense by nature,
        such as a genes x cell types reference). Without it a sparse matrix is rejected with ``TypeError``.

    Raises
    ------
    TypeError
        When ``x`` cannot be read as a numeric array; the message names ``name`` and ``expected``.
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    if densify_sparse and sp.issparse(x):
        x = x.toarray()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"Expected `{name}` to be {expected}, found {type(x).__name__}."
        raise TypeError(msg) from e


def check_coords(coords: Any, *, name: str = "coords", min_spots: int = 1) -> np.ndarray:
    """Return coordinates as a float64 ``(n, d)`` array with ``d`` in {2, 3}; raise on NaN/inf or bad shape."""
    arr = as_float_array(coords, name, expected="a numeric array of shape (n_spots, 2) or (n_spots, 3)")
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        msg = f"Expected `{name}` of shape (n_spots, 2) or (n_spots, 3), found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        msg = f"`{name}` contains NaN or inf in {bad} spot(s); drop or fix those spots first."
        raise ValueError(msg)
    if arr.shape[0] < min_spots:
        msg = f"Expected at least {min_spots} spots in `{name}`, found {arr.shape[0]}."
        raise ValueError(msg)
    return arr


class UnknownPriorError(ValueError, NotImplementedError):
    """An unknown prior name: a ``ValueError`` (this package's contract) and a ``NotImplementedError`` (what
    scripts written for smoother-omics 1.1.0 catch)."""


def check_prior(prior: Any, *, allowed: tuple[str, ...] = PRIORS, name: str = "prior") -> str:
    """Return the prior name in lower case.

    Raises ``TypeError`` when ``prior`` is not a string and :class:`UnknownPriorError` (both ``ValueError`` and
    ``NotImplementedError``) when it is an unknown name.
    """
    if not isinstance(prior, str):
        msg = f"Expected `{name}` to be a string, one of {list(allowed)}, found {type(prior).__name__} `{prior!r}`."
        raise TypeError(msg)
    if prior.lower() not in allowed:
        msg = f"Unknown prior {prior!r} (argument `{name}`): expected one of {list(allowed)}, e.g. {name}='icar'."
        raise UnknownPriorError(msg)
    return prior.lower()


def check_rho(rho: Any, prior: str = "icar", *, name: str = "rho") -> float:
    """Check the spatial autocorrelation ``rho``.

    For 'car' and 'icar' (and 'sar'/'isar'/'sma') the classic range is ``[0, 1]``: values outside it make the
    implied covariance improper for typical graphs. The exact admissible range for a given graph is checked
    later, when the matrix is factorized.
    """
    return check_real(rho, name, low=0.0, high=1.0, example="0.99", what=f"for prior '{prior}'")


def check_nonneg_scalar(value: Any, name: str, *, example: str = "1.0") -> float:
    """A finite non-negative real number (e.g. a penalty strength)."""
    return check_real(value, name, low=0.0, example=example)


def check_square_graph(W: Any, n: int | None = None, *, name: str = "graph") -> sp.csr_matrix:
    """Return a square CSR float64 matrix; optionally check it has ``n`` rows."""
    if hasattr(W, "is_sparse") and hasattr(W, "coalesce"):  # torch tensor
        W = _torch_to_scipy(W)
    if not sp.issparse(W):
        W = np.asarray(W)
        if W.ndim != 2:
            msg = f"Expected `{name}` to be a 2D matrix, found {W.ndim} dimensions."
            raise ValueError(msg)
        W = sp.csr_matrix(W)
    W = sp.csr_matrix(W, dtype=np.float64)
    if W.shape[0] != W.shape[1]:
        msg = f"Expected a square `{name}`, found shape {W.shape}."
        raise ValueError(msg)
    if n is not None and W.shape[0] != n:
        msg = f"`{name}` has {W.shape[0]} rows but the data have {n} spots; rebuild the graph on these spots."
        raise ValueError(msg)
    if W.nnz and not np.isfinite(W.data).all():
        msg = f"`{name}` contains NaN or inf weights."
        raise ValueError(msg)
    return W


def _torch_to_scipy(t) -> sp.csr_matrix:
    """A torch tensor (dense or any sparse layout: COO, CSR, CSC, ...) as scipy CSR float64, never densified."""
    import torch

    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_sparse_coo().coalesce()
        idx = t.indices().numpy()
        return sp.csr_matrix((t.values().double().numpy(), (idx[0], idx[1])), shape=tuple(t.shape))
    return sp.csr_matrix(t.double().numpy())


def check_copy_inplace(copy: bool, inplace: bool) -> None:
    """scanpy's rule: ``copy=True`` and ``inplace=False`` cannot be combined."""
    if copy and not inplace:
        msg = "`copy=True` cannot be used with `inplace=False`."
        raise ValueError(msg)


def view_to_actual(adata) -> None:
    """Turn an AnnData view into an actual object, with a warning (scanpy's behaviour)."""
    if getattr(adata, "is_view", False):
        warnings.warn("Received a view of an AnnData. Making a copy.", UserWarning, stacklevel=3)
        adata._init_as_actual(adata.copy())


# ----------------------------------------------------------------------------------------------------------------
# the argument checks every public function uses: TypeError for a type, ValueError for a value, the user's name
# ----------------------------------------------------------------------------------------------------------------
def _is_real(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number)


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    strings: tuple[str, ...] = (),
    example: str | None = None,
    what: str = "",
) -> float | str | None:
    """A finite real number in ``[low, high]`` (ends open with ``low_open``/``high_open``).

    ``strings`` lists the string values also accepted (e.g. ``('auto',)``); ``allow_none`` accepts ``None``.
    A string, bool, array or other type raises ``TypeError``; NaN, inf or a value out of range ``ValueError``.
    Every message names ``name``, shows what was found, and a value that works (``example``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value in strings:
        return value
    alts = "".join(f" or {s!r}" for s in strings) + (" or None" if allow_none else "")
    hint = f" (e.g. {name}={example})" if example is not None else ""
    if not _is_real(value):
        msg = f"Expected `{name}` to be a real number{alts}, found {type(value).__name__} `{value!r}`{hint}."
        raise TypeError(msg)
    v = float(value)
    if not np.isfinite(v):
        msg = f"Expected `{name}` to be a finite number{alts}, found `{value!r}`{hint}."
        raise ValueError(msg)
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        if high is None:
            where = f"{'>' if low_open else '>='} {low:g}"
        elif low is None:
            where = f"{'<' if high_open else '<='} {high:g}"
        else:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        extra = f" {what}" if what else ""
        msg = f"Expected `{name}` {where}{alts}{extra}, found `{value!r}`{hint}."
        raise ValueError(msg)
    return v


def check_int(
    value: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_none: bool = False,
    example: str | None = None,
) -> int | None:
    """An integer in ``[low, high]`` (``TypeError`` for a float, string or bool; ``ValueError`` out of range)."""
    if value is None and allow_none:
        return None
    hint = f" (e.g. {name}={example})" if example is not None else ""
    none = " or None" if allow_none else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        msg = f"Expected `{name}` to be an integer{none}, found {type(value).__name__} `{value!r}`{hint}."
        raise TypeError(msg)
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        msg = f"Expected `{name}` in [{lo}, {hi}]{none}, found `{v}`{hint}."
        raise ValueError(msg)
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """One of the string ``choices`` (``TypeError`` for a non-string, ``ValueError`` for an unknown name)."""
    choices = tuple(choices)
    if not isinstance(value, str):
        msg = f"Expected `{name}` to be one of {list(choices)}, found {type(value).__name__} `{value!r}`."
        raise TypeError(msg)
    if value not in choices:
        msg = f"Expected `{name}` to be one of {list(choices)}, found {value!r} (e.g. {name}={choices[0]!r})."
        raise ValueError(msg)
    return value


def check_bool(value: Any, name: str) -> bool:
    """A plain bool (``numpy.bool_`` accepted); ``TypeError`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"Expected `{name}` to be True or False, found {type(value).__name__} `{value!r}`."
        raise TypeError(msg)
    return bool(value)


def check_key(value: Any, name: str) -> str:
    """A non-empty string key (``key_added`` etc.): ``TypeError`` for a non-string, ``ValueError`` when empty."""
    if not isinstance(value, str):
        msg = f"Expected `{name}` to be a non-empty string, found {type(value).__name__} `{value!r}`."
        raise TypeError(msg)
    if not value:
        msg = f"Expected `{name}` to be a non-empty string, found ''."
        raise ValueError(msg)
    return value


def check_random_state(value: Any, name: str = "random_state") -> int | None:
    """A seed: ``None`` or an integer in ``[0, 2**32 - 1]`` (numpy's range)."""
    return check_int(value, name, low=0, high=2**32 - 1, allow_none=True, example="0")


def check_lambda(value: Any, name: str = "lambda_spatial", *, allow_auto: bool = False) -> float | str:
    """A penalty strength: a finite number ``>= 0`` (or ``'auto'`` with ``allow_auto``)."""
    return check_real(value, name, low=0.0, strings=("auto",) if allow_auto else (), example="1.0")


def check_device(device: Any, name: str = "device") -> str:
    """A torch device name that exists on this machine (``'cpu'``; ``'cuda'``/``'cuda:0'``/``'mps'`` when present).

    Checked before any work: ``'cuda'`` without a CUDA build or GPU raises ``ValueError`` naming ``'cpu'``.
    ``'cpu'`` is accepted without importing torch (paths that never train need not pay its import).
    """
    if isinstance(device, str) and device == "cpu":
        return device
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        msg = f"Expected `{name}` to be a device name such as 'cpu', found {type(device).__name__} `{device!r}`."
        raise TypeError(msg)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        msg = f"Unknown `{name}` {device!r}; use e.g. {name}='cpu'."
        raise ValueError(msg) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"`{name}={device!r}` but CUDA is not available on this machine; use {name}='cpu'."
        raise ValueError(msg)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        msg = f"`{name}={device!r}` but only {torch.cuda.device_count()} CUDA device(s) exist; use {name}='cuda:0'."
        raise ValueError(msg)
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        msg = f"`{name}={device!r}` but MPS is not available on this machine; use {name}='cpu'."
        raise ValueError(msg)
    if dev.type not in ("cpu", "cuda", "mps"):
        msg = f"Unsupported `{name}` {device!r}; use {name}='cpu' or 'cuda'."
        raise ValueError(msg)
    return str(dev)


def check_unique_names(index: Any, what: str) -> None:
    """``ValueError`` when an obs/var index has duplicated names (``what``: e.g. "`reference.var_names`")."""
    import pandas as pd

    idx = pd.Index(index)
    if not idx.is_unique:
        dup = list(idx[idx.duplicated()].unique()[:5].astype(str))
        msg = f"{what} are not unique (e.g. {dup}); call `.var_names_make_unique()` / `.obs_names_make_unique()` first."
        raise ValueError(msg)


def accepts_random_state(func):
    """Let a function whose seed argument is called ``seed`` also take scanpy's name ``random_state``.

    ``random_state`` is the name every ``sm.tl`` function records in ``uns[key]['params']``; passing both is a
    ``TypeError``.
    """
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "random_state" in kwargs:
            if "seed" in kwargs:
                msg = f"{func.__name__}() got both `seed` and `random_state`; pass one (they are the same)."
                raise TypeError(msg)
            kwargs["seed"] = kwargs.pop("random_state")
        return func(*args, **kwargs)

    return wrapper
