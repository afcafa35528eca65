"""The input/output contract (issue 11) of the dependency diagnostics: ``sm.tl.corr_decay``, ``similarity_decay``,
``fit_decay``, ``scan_rho`` and ``sm.pl.corr_decay`` / ``similarity_cdf``.

Rejected input: the right error type (``TypeError`` for a type, ``ValueError`` for a value, ``KeyError`` for a
missing key), a message naming the argument the user typed, no factorization or solve started, every AnnData
unchanged (:func:`tests.contract.check_rejects`). Accepted awkward input (2 spots, duplicate coordinates,
directed and radius graphs, views, copies, backed AnnData for the plots, re-runs): a result equal to an
independent dense reference, and nothing stale left behind.
"""

from __future__ import annotations

import functools
import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors, radius_neighbors_graph
from tests.contract import assert_unchanged, check_rejects, snapshot

import smoother as sm
from smoother._core.graph import knn_graph

HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COLS = ["Q10", "Q25", "Q50", "Q75", "Q90"]
QS = [0.1, 0.25, 0.5, 0.75, 0.9]


# ------------------------------------------------------------------------------------------------ data
def _hex(n_side):
    r, c = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    return np.column_stack([(c + 0.5 * (r % 2)).ravel(), (r * np.sqrt(3) / 2).ravel()])


@functools.cache
def _base() -> ad.AnnData:
    rng = np.random.default_rng(0)
    coords = _hex(8)  # 64 spots
    field = np.column_stack([np.sin(coords[:, 0] / 2), np.cos(coords[:, 1] / 3)])
    a = ad.AnnData((field @ rng.normal(size=(2, 12)) + 0.2 * rng.normal(size=(64, 12))).astype(np.float32))
    a.obs_names = [f"s{i}" for i in range(64)]
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"], _ = knn_graph(coords, 6)
    # a representation whose neighbour similarity decays over a few rings: noise averaged over neighbours twice
    avg = sp.identity(64) + (a.obsp["spatial_connectivities"] > 0).astype(float)
    a.obsm["X_rep"] = avg @ (avg @ rng.normal(size=(64, 6)))
    return a


@pytest.fixture
def adata():
    return _base().copy()


@pytest.fixture
def with_curves(adata):
    sm.tl.similarity_decay(adata, use_rep="X_rep", max_k=15, n_null=2)
    sm.tl.corr_decay(adata, rho=0.9, max_k=15)
    store = adata.uns["corr_decay"]
    assert not store["data"]["decay_degenerate"] and not store["icar_rho0.9"]["decay_degenerate"]
    return adata


def _dense_reference(cov, coords, max_k):
    d = np.diag(cov)
    corr = cov / np.sqrt(np.outer(d, d))
    nbrs = NearestNeighbors(n_neighbors=max_k + 1).fit(coords).kneighbors(coords, return_distance=False)
    return np.quantile(corr[np.arange(len(coords))[:, None], nbrs], QS, axis=0).T


def _icar_cov(W, rho):
    W = W.toarray() if sp.issparse(W) else np.asarray(W)
    W = np.maximum(W, W.T)  # what every sm.tl function does for 'icar'
    return np.linalg.inv(np.diag(W.sum(1)) - rho * W)


# ------------------------------------------------------------------------ bad values for numeric arguments
# (value, error): a string, a bool, None, NaN, inf are never numbers; out-of-range values are ValueErrors
NOT_A_NUMBER = [("0.9", TypeError), (True, TypeError), (None, TypeError), ([0.9], TypeError)]
NON_FINITE = [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError)]
BAD_RHO = [*NOT_A_NUMBER, *NON_FINITE, (-0.1, ValueError), (1.5, ValueError)]
BAD_INT = [("3", TypeError), (True, TypeError), (2.5, TypeError), (math.nan, TypeError), (-1, ValueError)]
BAD_OPT_INT = [("3", TypeError), (True, TypeError), (2.5, TypeError), (math.inf, TypeError), (0, ValueError)]
BAD_SEED = [("0", TypeError), (False, TypeError), (1.5, TypeError), (math.nan, TypeError), (-1, ValueError)]
BAD_BOOL = [("yes", TypeError), (1, TypeError), (None, TypeError)]
BAD_KEY = [(1, TypeError), ("", ValueError), (None, TypeError)]


@pytest.mark.parametrize(("value", "error"), BAD_RHO)
def test_corr_decay_rho(adata, value, error):
    check_rejects(sm.tl.corr_decay, adata, rho=value, error=error, names="rho")


@pytest.mark.parametrize("arg", ["min_k", "max_k"])
@pytest.mark.parametrize(("value", "error"), BAD_INT)
def test_corr_decay_k(adata, arg, value, error):
    check_rejects(sm.tl.corr_decay, adata, **{arg: value}, error=error, names=arg)


@pytest.mark.parametrize(("value", "error"), BAD_OPT_INT)
def test_corr_decay_n_sample(adata, value, error):
    check_rejects(sm.tl.corr_decay, adata, n_sample=value, max_k=5, error=error, names="n_sample")


@pytest.mark.parametrize(("value", "error"), BAD_SEED)
def test_corr_decay_seed(adata, value, error):
    check_rejects(sm.tl.corr_decay, adata, seed=value, max_k=5, error=error, names="seed")


@pytest.mark.parametrize("arg", ["standardize", "copy"])
@pytest.mark.parametrize(("value", "error"), BAD_BOOL)
def test_corr_decay_bools(adata, arg, value, error):
    check_rejects(sm.tl.corr_decay, adata, **{arg: value}, max_k=5, error=error, names=arg)


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"prior": "gauss"}, ValueError, "prior"),
        ({"prior": 3}, TypeError, "prior"),
        ({"key_added": 1}, TypeError, "key_added"),
        ({"key_added": ""}, ValueError, "key_added"),
        ({"spatial_key": 1}, TypeError, "spatial_key"),
        ({"spatial_key": "nope"}, KeyError, "nope"),
        ({"connectivity_key": 1}, TypeError, "connectivity_key"),
        ({"connectivity_key": "nope_connectivities"}, KeyError, ("nope", "sq.gr.spatial_neighbors")),
        ({"max_k": 64}, ValueError, "max_k"),
        ({"min_k": 5, "max_k": 3}, ValueError, "min_k"),
        ({"prior": "icar", "rho": 1.0}, ValueError, "rho < 1"),
        ({"prior": "isar", "rho": 1.0}, ValueError, "rho < 1"),
    ],
)
def test_corr_decay_other_arguments(adata, kw, error, names):
    check_rejects(sm.tl.corr_decay, adata, **kw, error=error, names=names)


def test_unknown_prior_is_also_not_implemented(adata):
    """smoother-omics 1.1.0 scripts catch NotImplementedError for an unknown prior."""
    check_rejects(sm.tl.corr_decay, adata, prior="gp", error=NotImplementedError, names="Unknown prior")
    check_rejects(sm.tl.scan_rho, adata, prior="gp", error=NotImplementedError, names="Unknown prior")


@given(
    rho=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0.0 <= x <= 1.0),
        st.text(max_size=4),
        st.booleans(),
        st.none(),
        st.integers().filter(lambda i: i not in (0, 1)),
    )
)
@HYP
def test_corr_decay_any_bad_rho_is_rejected_before_work(rho):
    a = _base().copy()
    is_number = isinstance(rho, int | float) and not isinstance(rho, bool)
    check_rejects(sm.tl.corr_decay, a, rho=rho, error=ValueError if is_number else TypeError, names="rho")


@given(max_k=st.one_of(st.integers(max_value=-1), st.integers(min_value=64, max_value=10**6), st.floats()))
@HYP
def test_corr_decay_any_bad_max_k_is_rejected_before_work(max_k):
    a = _base().copy()
    error = TypeError if isinstance(max_k, float) else ValueError
    check_rejects(sm.tl.corr_decay, a, max_k=max_k, error=error, names="max_k")


# ----------------------------------------------------------------------------------- similarity_decay
@pytest.mark.parametrize("arg", ["cdf_k", "n_null"])
@pytest.mark.parametrize(("value", "error"), [*BAD_INT[:4], (0, ValueError)])
def test_similarity_decay_counts(adata, arg, value, error):
    check_rejects(sm.tl.similarity_decay, adata, use_rep="X_rep", **{arg: value}, error=error, names=arg)


@pytest.mark.parametrize(("value", "error"), BAD_OPT_INT)
def test_similarity_decay_n_pcs(adata, value, error):
    check_rejects(sm.tl.similarity_decay, adata, n_pcs=value, max_k=5, error=error, names="n_pcs")


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"topk": "yes"}, TypeError, "topk"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"seed": -1}, ValueError, "seed"),
        ({"copy": 1}, TypeError, "copy"),
        ({"key_added": 1}, TypeError, "key_added"),
        ({"use_rep": 1}, TypeError, "use_rep"),
        ({"use_rep": "X_umap"}, KeyError, ("X_umap", "X_pca")),
        ({"spatial_key": "nope"}, KeyError, "nope"),
        ({"max_k": math.nan}, TypeError, "max_k"),
        ({"max_k": 64}, ValueError, "max_k"),
        ({"cdf_k": 64}, ValueError, "cdf_k"),
    ],
)
def test_similarity_decay_other_arguments(adata, kw, error, names):
    kw = {"use_rep": "X_rep", "max_k": 5, **kw}
    check_rejects(sm.tl.similarity_decay, adata, **kw, error=error, names=names)


@pytest.mark.parametrize("where", ["obsm", "X"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_similarity_decay_non_finite_data(adata, where, bad):
    if where == "obsm":
        adata.obsm["X_rep"][5, 0] = bad
        check_rejects(sm.tl.similarity_decay, adata, use_rep="X_rep", error=ValueError, names=("X_rep", "s5"))
    else:
        adata.X[5, 0] = bad
        for use_rep in ("X", "X_pca"):  # X_pca is computed from X here
            check_rejects(sm.tl.similarity_decay, adata, use_rep=use_rep, max_k=5, error=ValueError, names="adata.X")


def test_similarity_decay_non_numeric_representation(adata):
    adata.obsm["X_str"] = np.array([["a"]] * 64)
    check_rejects(sm.tl.similarity_decay, adata, use_rep="X_str", error=TypeError, names="X_str")


# ----------------------------------------------------------------------------------- fit_decay / scan_rho
def test_fit_decay_arguments(with_curves):
    a = with_curves
    check_rejects(sm.tl.fit_decay, a, quantile="Q51", error=ValueError, names="quantile")
    check_rejects(sm.tl.fit_decay, a, quantile=50, error=TypeError, names="quantile")
    check_rejects(sm.tl.fit_decay, a, 1, error=TypeError, names="keys")
    check_rejects(sm.tl.fit_decay, a, [1], error=TypeError, names="keys")
    check_rejects(sm.tl.fit_decay, a, [], error=ValueError, names="keys")
    check_rejects(sm.tl.fit_decay, a, "nope", error=KeyError, names=("nope", "sm.tl.corr_decay"))
    check_rejects(sm.tl.fit_decay, _base().copy(), error=KeyError, names="sm.tl.corr_decay")
    check_rejects(sm.tl.fit_decay, a.X, error=TypeError, names="adata")
    a.uns["corr_decay"]["junk"] = {"params": {}}
    check_rejects(sm.tl.fit_decay, a, "junk", error=KeyError, names=("junk", "sm.tl.corr_decay"))


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"rhos": [0.9, math.nan]}, ValueError, "rhos[1]"),
        ({"rhos": [0.9, "0.5"]}, TypeError, "rhos[1]"),
        ({"rhos": [True]}, TypeError, "rhos[0]"),
        ({"rhos": [1.5]}, ValueError, "rhos[0]"),
        ({"rhos": []}, ValueError, "rhos"),
        ({"rhos": "0.9"}, TypeError, "rhos"),
        ({"rhos": 0.9}, TypeError, "rhos"),
        ({"rhos": [1.0]}, ValueError, "rhos"),
        ({"data_key": "nope"}, KeyError, ("nope", "sm.tl.similarity_decay")),
        ({"data_key": 1}, TypeError, "data_key"),
        ({"standardize": "no"}, TypeError, "standardize"),
        ({"n_sample": 0}, ValueError, "n_sample"),
        ({"seed": math.inf}, TypeError, "seed"),
        ({"connectivity_key": "nope"}, KeyError, "nope"),
        ({"spatial_key": "nope"}, KeyError, "nope"),
    ],
)
def test_scan_rho_arguments(with_curves, kw, error, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Skipping rho = 1"
        check_rejects(sm.tl.scan_rho, with_curves, **kw, error=error, names=names)


# ----------------------------------------------------------------------------------------- plots
@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"kind": "violin"}, ValueError, "kind"),
        ({"kind": 1}, TypeError, "kind"),
        ({"keys": "nope"}, KeyError, ("nope", "sm.tl.corr_decay")),
        ({"keys": 3}, TypeError, "keys"),
        ({"keys": []}, ValueError, "keys"),
        ({"panels": "yes"}, TypeError, "panels"),
        ({"legend": None}, TypeError, "legend"),
        ({"ax": "ax"}, TypeError, "ax"),
        ({"figsize": (4, -1)}, ValueError, "figsize[1]"),
        ({"figsize": "big"}, TypeError, "figsize"),
        ({"figsize": (4, math.nan)}, ValueError, "figsize[1]"),
        ({"title": 5}, TypeError, "title"),
        ({"palette": ["not-a-colour"]}, ValueError, "palette"),
        ({"palette": "red"}, TypeError, "palette"),
    ],
)
def test_pl_corr_decay_arguments(with_curves, kw, error, names):
    import matplotlib.pyplot as plt

    n_figs = len(plt.get_fignums())
    check_rejects(sm.pl.corr_decay, with_curves, **kw, error=error, names=names)
    assert len(plt.get_fignums()) == n_figs  # no figure left open by a rejected call


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"key": "nope"}, KeyError, ("nope", "sm.tl.similarity_decay")),
        ({"key": "icar_rho0.9"}, KeyError, ("similarity CDF", "sm.tl.similarity_decay")),
        ({"key": 1}, TypeError, "key"),
        ({"palette": ["red"]}, ValueError, "palette"),
        ({"legend": "no"}, TypeError, "legend"),
    ],
)
def test_pl_similarity_cdf_arguments(with_curves, kw, error, names):
    check_rejects(sm.pl.similarity_cdf, with_curves, **kw, error=error, names=names)


def test_pl_missing_results_name_the_tool(adata):
    check_rejects(sm.pl.corr_decay, adata, error=KeyError, names="sm.tl.corr_decay")
    check_rejects(sm.pl.similarity_cdf, adata, error=KeyError, names="sm.tl.similarity_decay")
    check_rejects(sm.pl.corr_decay, adata.X, error=TypeError, names="adata")


# ------------------------------------------------------------------------------ awkward AnnData states
@pytest.mark.parametrize("n", [0, 1])
def test_too_few_spots(n):
    a = _base()[:n].copy()
    check_rejects(sm.tl.corr_decay, a, max_k=0, error=ValueError, names=("spot",))
    check_rejects(sm.tl.similarity_decay, a, use_rep="X_rep", max_k=0, cdf_k=1, error=ValueError, names="spot")


def test_two_spots_exact():
    a = ad.AnnData(np.array([[1.0, 0.0], [1.0, 1.0]]))
    a.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0]])
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.warns(UserWarning, match="degenerate"):  # 2 points: no decay rate
        sm.tl.corr_decay(a, rho=0.5, max_k=1)
    q = a.uns["corr_decay"]["icar_rho0.5"]["quantiles"]
    # Q = [[1, -0.5], [-0.5, 1]]: correlation 0.5 between the two spots
    np.testing.assert_allclose(q.loc[q["k"] == 1, COLS].to_numpy(), 0.5)
    assert np.isnan(a.uns["corr_decay"]["icar_rho0.5"]["decay_rate"])
    with pytest.warns(UserWarning, match="degenerate"):
        sm.tl.similarity_decay(a, use_rep="X", max_k=1, cdf_k=1, n_null=2)
    np.testing.assert_allclose(a.uns["corr_decay"]["data"]["quantiles"].loc[1, COLS], np.sqrt(0.5))


def test_duplicate_coordinates_match_the_dense_reference(adata):
    coords = adata.obsm["spatial"].copy()
    coords[1] = coords[0]  # two spots at one point, and a third one
    coords[2] = coords[0]
    adata.obsm["spatial"] = coords
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.corr_decay(adata, rho=0.9, max_k=6)
    got = adata.uns["corr_decay"]["icar_rho0.9"]["quantiles"][COLS].to_numpy()
    ref = _dense_reference(_icar_cov(adata.obsp["spatial_connectivities"], 0.9), coords, 6)
    np.testing.assert_allclose(got, ref, atol=1e-8)


def _directed_graph(coords, k):
    nbrs = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    n = len(coords)
    return sp.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), nbrs.ravel())), shape=(n, n))


@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), rho=st.floats(0.05, 0.99))
@settings(max_examples=12, deadline=None)
def test_directed_knn_graphs_give_the_fitting_prior(seed, k, rho):
    """Any squidpy-style directed kNN graph: the curve of max(W, W.T), never a contradictory error."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 6, size=(30, 2))
    a = ad.AnnData(np.zeros((30, 1)))
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = _directed_graph(coords, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.corr_decay(a, rho=rho, max_k=5, key_added="c")
    got = a.uns["corr_decay"]["c"]["quantiles"][COLS].to_numpy()
    np.testing.assert_allclose(
        got, _dense_reference(_icar_cov(a.obsp["spatial_connectivities"], rho), coords, 5), atol=1e-7
    )


@given(seed=st.integers(0, 10**6), radius=st.floats(0.3, 1.5), rho=st.floats(0.0, 0.99))
@HYP
def test_radius_graphs_with_isolated_spots(seed, radius, rho):
    """squidpy radius graphs leave isolated spots with empty rows: named (before any work) or a correct curve."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 6, size=(25, 2))
    W = radius_neighbors_graph(coords, radius).tocsr()
    a = ad.AnnData(np.zeros((25, 1)))
    a.obs_names = [f"spot{i}" for i in range(25)]
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = W
    isolated = np.flatnonzero(np.asarray(W.sum(axis=1)).ravel() == 0)
    if isolated.size:
        e = check_rejects(sm.tl.corr_decay, a, rho=rho, max_k=4, error=ValueError, names="at any rho")
        assert f"spot{isolated[0]}" in str(e) and f"{isolated.size} spot(s)" in str(e)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.corr_decay(a, rho=rho, max_k=4, key_added="c")
    got = a.uns["corr_decay"]["c"]["quantiles"][COLS].to_numpy()
    np.testing.assert_allclose(got, _dense_reference(_icar_cov(W, rho), coords, 4), atol=1e-7)


@given(seed=st.integers(0, 10**6), rho=st.floats(0.2, 1.0))
@HYP
def test_car_not_pd_message_is_true(seed, rho):
    """Whenever 'car' is not positive definite, the rho the message suggests is, and the range it states is exact."""
    import re

    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 6, size=(25, 2))
    W = _directed_graph(coords, 4)
    Ws = W.maximum(W.T).toarray()
    a = ad.AnnData(np.zeros((25, 1)))
    a.obsm["spatial"] = coords
    a.obsp["spatial_connectivities"] = W
    lmax = np.linalg.eigvalsh(Ws).max()
    if rho < 1 / lmax * 0.999:
        return
    with pytest.raises(ValueError, match="not positive definite") as info:
        sm.tl.corr_decay(a, prior="car", rho=rho, max_k=4)
    msg = str(info.value)
    upper = float(re.search(r"0 <= rho < ([0-9]+\.?[0-9]*)", msg).group(1))
    example = float(re.search(r"e\.g\. rho=([0-9]+\.?[0-9]*)", msg).group(1))
    assert upper == pytest.approx(1 / lmax, rel=1e-3) and upper <= 1 / lmax
    assert np.linalg.eigvalsh(np.eye(25) - example * Ws).min() > 0


# ------------------------------------------------------------------------------- views, copies, backed
def test_copy_leaves_a_view_untouched(adata):
    view = adata[:40]
    snap = snapshot(view)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = sm.tl.corr_decay(view, rho=0.9, max_k=5, copy=True)
        out2 = sm.tl.similarity_decay(view, use_rep="X_rep", max_k=5, n_null=2, copy=True)
    assert_unchanged(view, snap)
    assert view.is_view and "corr_decay" not in adata.uns
    assert "icar_rho0.9" in out.uns["corr_decay"] and "data" in out2.uns["corr_decay"]


def test_view_without_copy_is_made_actual_like_scanpy(adata):
    view = adata[:40]
    with pytest.warns(UserWarning, match="view"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degenerate.*")
        sm.tl.corr_decay(view, rho=0.9, max_k=5)
    assert not view.is_view and "icar_rho0.9" in view.uns["corr_decay"]
    assert "corr_decay" not in adata.uns  # the parent is not written


def test_backed_adata(tmp_path, with_curves):
    path = tmp_path / "a.h5ad"
    with_curves.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        for func, kw in (
            (sm.tl.corr_decay, {"max_k": 5}),
            (sm.tl.similarity_decay, {"use_rep": "X_rep", "max_k": 5}),
            (sm.tl.fit_decay, {}),
            (sm.tl.scan_rho, {"rhos": [0.9]}),
        ):
            check_rejects(func, backed, **kw, error=ValueError, names="to_memory()")
        check_rejects(sm.tl.corr_decay, backed, copy=True, error=ValueError, names="to_memory()")
        # the plots only read: a backed AnnData works, and its tables survived the h5ad round trip
        ax = sm.pl.corr_decay(backed, "icar_rho0.9", show=False)
        q = with_curves.uns["corr_decay"]["icar_rho0.9"]["quantiles"]
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), q["Q50"])
    finally:
        backed.file.close()
        import matplotlib.pyplot as plt

        plt.close("all")


# ------------------------------------------------------------------------------- re-runs replace results
def test_rerun_replaces_the_entry_and_keeps_the_others(with_curves):
    a = with_curves
    a.uns["corr_decay"]["icar_rho0.9"]["stale"] = "from an older version"
    other = a.uns["corr_decay"]["data"]["quantiles"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.corr_decay(a, rho=0.9, max_k=4, n_sample=20, seed=3, key_added="icar_rho0.9")
    entry = a.uns["corr_decay"]["icar_rho0.9"]
    assert "stale" not in entry
    assert entry["params"]["max_k"] == 4 and entry["params"]["random_state"] == 3 and entry["params"]["n_sample"] == 20
    assert len(entry["quantiles"]) == 5 and not entry["params"]["exact"] and entry["params"]["n_used"] == 20
    pd.testing.assert_frame_equal(a.uns["corr_decay"]["data"]["quantiles"], other)
    assert isinstance(entry["quantiles"], pd.DataFrame) and isinstance(entry["variance"], pd.DataFrame)


def test_fit_decay_keeps_tables_and_params(with_curves):
    a = with_curves
    before = a.uns["corr_decay"]["icar_rho0.9"]["quantiles"].copy()
    params = dict(a.uns["corr_decay"]["icar_rho0.9"]["params"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rates = sm.tl.fit_decay(a, "icar_rho0.9", quantile="Q25")
    entry = a.uns["corr_decay"]["icar_rho0.9"]
    pd.testing.assert_frame_equal(entry["quantiles"], before)
    assert dict(entry["params"]) == params
    assert entry["decay_fit"][1] == rates.loc["icar_rho0.9", "beta"] or rates.loc["icar_rho0.9", "degenerate"]
