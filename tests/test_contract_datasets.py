"""The input contract (issue 11) of ``sm.datasets``: ``lattice``, ``simulate_field``, ``simulate_mixture`` and
``dlpfc_151673``.

Every argument is checked before any work: the right error type (``TypeError`` for a type, ``ValueError`` for a
value), a message naming the argument, and no lattice, field, noise, file read or download started. Valid awkward
arguments (1 or 2 spots, one gene, one type, extreme but allowed values) give well-formed, finite, reproducible
data.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.contract import WorkStarted, check_rejects

import smoother as sm
from smoother.datasets import _dlpfc, _simulate

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def no_dataset_work():
    """No lattice, field, pattern, noise, file lookup or download may start, nor the step's log line."""

    def boom(*_a, **_k):
        raise WorkStarted("dataset work started before the arguments were checked")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("make_lattice", "gaussian_fields", "_pattern_truth", "_add_count_noise", "log_start"):
            mp.setattr(_simulate, name, boom)
        mp.setattr(_dlpfc, "dlpfc_files", boom)
        mp.setitem(sys.modules, "pooch", types.ModuleType("pooch"))  # any use of pooch fails (no attributes)
        yield


def rejects(func, *, error, names, **kwargs):
    with no_dataset_work():
        return check_rejects(func, error=error, names=names, **kwargs)


LATTICE, FIELD, MIXTURE, DLPFC = (
    sm.datasets.lattice,
    sm.datasets.simulate_field,
    sm.datasets.simulate_mixture,
    sm.datasets.dlpfc_151673,
)
FUNCS = {"lattice": LATTICE, "simulate_field": FIELD, "simulate_mixture": MIXTURE, "dlpfc_151673": DLPFC}
BASE = {"lattice": {"n_spots": 10}, "simulate_field": {}, "simulate_mixture": {}, "dlpfc_151673": {}}

# every numeric argument: (function, argument, kind, extra kwargs, values that must be ValueErrors)
NUMERIC = [
    ("lattice", "n_spots", "int", {}, [0, -5]),
    ("lattice", "spacing", "real", {}, [0.0, -1.0, 1e300]),
    ("simulate_field", "n_spots", "int", {}, [0, -1]),
    ("simulate_field", "n_genes", "int", {}, [0]),
    ("simulate_field", "n_zones", "int", {}, [0]),
    ("simulate_field", "noise_level", "real", {}, [-0.5, 1e300]),
    ("simulate_field", "noise_level", "real", {"noise": "nb"}, [0.0, -1.0]),
    ("simulate_field", "spacing", "real", {}, [0.0, 1e-300]),
    ("simulate_field", "length_scale", "real", {"pattern": "gp"}, [0.0, -2.0, 1e-9]),
    ("simulate_field", "seed", "int", {}, [-1]),
    ("simulate_mixture", "n_spots", "int", {}, [0]),
    ("simulate_mixture", "n_types", "int", {}, [0]),
    ("simulate_mixture", "n_genes", "int", {}, [0, 3]),  # 3 < n_types = 6: no marker for every type
    ("simulate_mixture", "n_cells_per_type", "int", {}, [0]),
    ("simulate_mixture", "noise_level", "real", {"noise": "nb"}, [0.0]),
    ("simulate_mixture", "noise_level", "real", {"noise": "gaussian"}, [-1.0]),
    ("simulate_mixture", "depth", "real", {}, [0.0, -10.0, 1e300]),
    ("simulate_mixture", "spacing", "real", {}, [0.0]),
    ("simulate_mixture", "length_scale", "real", {}, [0.0, 1e-9]),
    ("simulate_mixture", "seed", "int", {}, [-1]),
    ("dlpfc_151673", "depth", "real", {}, [0.0, -1.0, 1e300]),
    ("dlpfc_151673", "noise_level", "real", {}, [0.0, -0.1]),
    ("dlpfc_151673", "random_state", "int", {}, [-1, 2**40]),
]
IDS = [f"{f}-{a}-{'-'.join(f'{k}={v}' for k, v in e.items())}" for f, a, _, e, _ in NUMERIC]


def _bad_values(kind):
    out = [("1", TypeError), (True, TypeError), (False, TypeError), ([1], TypeError), (object(), TypeError)]
    if kind == "int":
        return out + [
            (float("nan"), TypeError),
            (float("inf"), TypeError),
            (2.5, TypeError),
            (np.float32(1), TypeError),
        ]
    return out + [(float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError)]


@pytest.mark.parametrize(("func", "arg", "kind", "extra", "value_errors"), NUMERIC, ids=IDS)
def test_every_numeric_argument_rejects_nan_inf_str_bool_range(func, arg, kind, extra, value_errors):
    kwargs = {**BASE[func], **extra}
    for value, error in _bad_values(kind) + [(v, ValueError) for v in value_errors]:
        if func == "simulate_field" and arg == "seed" and value is False:
            continue
        rejects(FUNCS[func], error=error, names=arg, **{**kwargs, arg: value})


@given(
    case=st.sampled_from(NUMERIC),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not math.isfinite(v)),
        st.text(max_size=4),
        st.booleans(),
        st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False),
        st.integers(max_value=-1),
    ),
)
@HYP
def test_hypothesis_bad_numbers_rejected_before_work(case, value):
    func, arg, kind, extra, _ = case
    if isinstance(value, (str, bool)) or (kind == "int" and isinstance(value, float)):
        error = TypeError
    else:
        error = ValueError
    rejects(FUNCS[func], error=error, names=arg, **{**BASE[func], **extra, arg: value})


@pytest.mark.parametrize(
    ("func", "kwargs", "error", "name"),
    [
        ("lattice", {"n_spots": 10, "layout": "triangle"}, ValueError, "layout"),
        ("lattice", {"n_spots": 10, "layout": None}, TypeError, "layout"),
        ("simulate_field", {"pattern": "stripes"}, ValueError, "pattern"),
        ("simulate_field", {"pattern": 1}, TypeError, "pattern"),
        ("simulate_field", {"noise": "zip"}, ValueError, "noise"),
        ("simulate_field", {"noise": ["poisson"]}, TypeError, "noise"),
        ("simulate_field", {"layout": "tri"}, ValueError, "layout"),
        ("simulate_mixture", {"noise": "zip"}, ValueError, "noise"),
        ("simulate_mixture", {"layout": 2}, TypeError, "layout"),
        ("dlpfc_151673", {"noise": "gaussian"}, ValueError, "noise"),
        ("dlpfc_151673", {"noise": None}, TypeError, "noise"),
        ("dlpfc_151673", {"download": "no"}, TypeError, "download"),
        ("dlpfc_151673", {"download": 0}, TypeError, "download"),
    ],
)
def test_choices_and_flags(func, kwargs, error, name):
    rejects(FUNCS[func], error=error, names=name, **kwargs)


def test_sizes_beyond_memory_are_rejected_before_work(monkeypatch):
    from smoother.datasets import _fields

    monkeypatch.setattr(_fields, "_physical_memory", lambda: 2**30)
    rejects(FIELD, error=ValueError, names=("n_spots", "n_genes", "GiB"), n_spots=10**8, n_genes=100)
    rejects(MIXTURE, error=ValueError, names="n_cells_per_type", n_spots=10, n_cells_per_type=10**7, n_genes=100)
    rejects(LATTICE, error=ValueError, names="n_spots", n_spots=10**9)


def test_case_insensitive_choices_still_work():
    a = FIELD(20, layout="HEX", pattern="Zones", noise="Gaussian", n_genes=2, seed=1)
    b = FIELD(20, layout="hex", pattern="zones", noise="gaussian", n_genes=2, seed=1)
    np.testing.assert_array_equal(a.X, b.X)


# ------------------------------------------------------------------------------------------------ valid input
@given(
    n_spots=st.integers(1, 150),
    n_genes=st.integers(1, 8),
    layout=st.sampled_from(["hex", "square"]),
    pattern=st.sampled_from(_simulate.PATTERNS),
    noise=st.sampled_from(_simulate.NOISES),
    noise_level=st.floats(0.01, 3.0),
    n_zones=st.integers(1, 6),
    spacing=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=40, deadline=None)
def test_hypothesis_simulate_field_is_well_formed_and_reproducible(
    n_spots, n_genes, layout, pattern, noise, noise_level, n_zones, spacing, seed
):
    kw = {"layout": layout, "pattern": pattern, "n_genes": n_genes, "noise": noise, "noise_level": noise_level}
    kw |= {"n_zones": n_zones, "spacing": spacing, "seed": seed}
    a = FIELD(n_spots, **kw)
    assert a.shape == (n_spots, n_genes) and a.obs_names.is_unique and a.var_names.is_unique
    assert a.X.dtype == np.float32 and np.isfinite(a.X).all() and np.isfinite(a.layers["truth"]).all()
    assert a.obsm["spatial"].shape == (n_spots, 2) and len(np.unique(a.obsm["spatial"], axis=0)) == n_spots
    if noise != "gaussian":
        assert (a.X >= 0).all() and (a.X == np.round(a.X)).all() and (a.layers["truth"] >= 0).all()
    if pattern == "zones":
        assert a.obs["zone"].notna().all()
    np.testing.assert_array_equal(FIELD(n_spots, **kw).X, a.X)


@given(
    n_spots=st.integers(1, 80),
    n_types=st.integers(1, 4),
    extra_genes=st.integers(0, 6),
    n_cells=st.integers(1, 5),
    noise=st.sampled_from(_simulate.NOISES),
    depth=st.floats(1e-3, 1e6),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=30, deadline=None)
def test_hypothesis_simulate_mixture_is_well_formed(n_spots, n_types, extra_genes, n_cells, noise, depth, seed):
    n_genes = n_types + extra_genes
    spatial, ref = MIXTURE(
        n_spots, n_types=n_types, n_genes=n_genes, n_cells_per_type=n_cells, noise=noise, depth=depth, seed=seed
    )
    assert spatial.shape == (n_spots, n_genes) and ref.shape == (n_types * n_cells, n_genes)
    props = spatial.obsm["props_truth"].to_numpy()
    np.testing.assert_allclose(props.sum(1), 1.0, rtol=1e-10)
    assert (props >= 0).all() and np.isfinite(spatial.X).all() and np.isfinite(ref.X).all()
    np.testing.assert_allclose(spatial.varm["signature_truth"].sum(0), 1.0, rtol=1e-10)
    assert (ref.X >= 0).all() and (ref.X == np.round(ref.X)).all()


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("pattern", list(_simulate.PATTERNS))
def test_one_and_two_spots(n, pattern):
    a = FIELD(n, pattern=pattern, n_genes=3, seed=0)
    assert a.shape == (n, 3) and np.isfinite(a.X).all()
    sp_, ref = MIXTURE(n, n_types=2, n_genes=2, n_cells_per_type=1, seed=0)
    assert sp_.shape == (n, 2) and ref.shape == (2, 2)


def test_dlpfc_argument_checks_precede_the_file_lookup(monkeypatch):
    """With SMOOTHER_DATA_DIR pointing nowhere, a bad argument is still reported as the argument's error."""
    monkeypatch.setenv(_dlpfc.DATA_DIR_ENV, "/nonexistent/smoother-data")
    with pytest.raises(TypeError, match="depth"):
        DLPFC(depth="3000")
    with pytest.raises(FileNotFoundError, match="SMOOTHER_DATA_DIR"):
        DLPFC()
