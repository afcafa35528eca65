"""scanpy's plotting conventions in ``sm.pl`` (issue 13): ``ax=``, ``show=``, return values, no ``save=``.

``show=True`` calls ``plt.show()`` and returns ``None``; ``show=None`` follows ``sm.settings.autoshow``;
``show=False`` returns the Axes (the Figure for multi-panel plots). Each test checks what is drawn against the
numbers the plot was given (line / collection data), not only that a call ran.
"""

from __future__ import annotations

import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import smoother as sm


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture
def shows(monkeypatch):
    """Count the calls of ``plt.show`` (the agg backend would only warn)."""
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(1))
    return calls


@pytest.fixture
def autoshow():
    """Restore ``sm.settings.autoshow`` after a test changes it."""
    old = sm.settings.autoshow
    yield
    sm.settings.autoshow = old


@pytest.fixture(scope="module")
def curves():
    adata = sm.datasets.simulate_field(n_spots=150, n_genes=8, pattern="zones", seed=3)
    sm.pp.spatial_graph(adata, n_neighs=6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # degenerate decay-rate fits on a tiny slide
        sm.tl.similarity_decay(adata, max_k=6, n_pcs=5, n_null=2)
        sm.tl.corr_decay(adata, prior="icar", rho=0.9, max_k=6)
        sm.tl.corr_decay(adata, prior="isar", rho=0.9, max_k=6)
    return adata


def _medians(ax, store):
    """The Q50 line of every stored curve drawn on ``ax``, by label."""
    return {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label() in store}


# ------------------------------------------------------------------------------------------ sm.pl.corr_decay
def test_corr_decay_show_false_returns_the_axes_with_the_medians(curves, shows):
    ax = sm.pl.corr_decay(curves, show=False)
    assert isinstance(ax, Axes)
    assert not shows
    store = curves.uns["corr_decay"]
    lines = _medians(ax, store)
    assert list(lines) == ["data", "icar_rho0.9", "isar_rho0.9"]  # data first
    for name, ln in lines.items():
        np.testing.assert_allclose(ln.get_xdata(), store[name]["quantiles"]["k"])
        np.testing.assert_allclose(ln.get_ydata(), store[name]["quantiles"]["Q50"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)


def test_corr_decay_draws_into_the_given_ax(curves, shows):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2)
    out = sm.pl.corr_decay(curves, "isar_rho0.9", ax=right, show=False)
    assert out is right
    assert not left.get_lines()  # nothing drawn on the other panel
    q = curves.uns["corr_decay"]["isar_rho0.9"]["quantiles"]
    np.testing.assert_allclose(_medians(right, curves.uns["corr_decay"])["isar_rho0.9"].get_ydata(), q["Q50"])
    assert len(fig.axes) == 2  # no new figure, no extra axes
    # ax given and show=True: drawn, shown, None returned
    assert sm.pl.corr_decay(curves, "data", ax=left, show=True) is None
    assert shows == [1]
    np.testing.assert_allclose(
        _medians(left, curves.uns["corr_decay"])["data"].get_ydata(),
        curves.uns["corr_decay"]["data"]["quantiles"]["Q50"],
    )


def test_corr_decay_panels_return_the_figure(curves, shows):
    fig = sm.pl.corr_decay(curves, panels=True, show=False)
    assert isinstance(fig, Figure)
    visible = [a for a in fig.axes if a.get_visible()]
    store = curves.uns["corr_decay"]
    assert [a.get_title() for a in visible] == ["data", "icar_rho0.9", "isar_rho0.9"]
    for a in visible:  # one curve per panel: its own median
        (ln,) = _medians(a, store).values()
        assert ln.get_label() == a.get_title()
        np.testing.assert_allclose(ln.get_ydata(), store[a.get_title()]["quantiles"]["Q50"])
    assert not shows


@pytest.mark.parametrize(("autoshow_value", "expect_shown"), [(True, True), (False, False)])
def test_show_none_follows_settings_autoshow(curves, shows, autoshow, autoshow_value, expect_shown):
    sm.settings.autoshow = autoshow_value
    out_ax = sm.pl.corr_decay(curves)
    out_fig = sm.pl.corr_decay(curves, panels=True)
    out_cdf = sm.pl.similarity_cdf(curves)
    if expect_shown:
        assert out_ax is None and out_fig is None and out_cdf is None
        assert len(shows) == 3
    else:
        assert isinstance(out_ax, Axes) and isinstance(out_fig, Figure) and isinstance(out_cdf, Axes)
        assert not shows


def test_show_true_returns_none_and_shows_the_drawn_figure(curves, monkeypatch):
    import matplotlib.pyplot as plt

    seen = []

    def fake_show(*args, **kwargs):
        # what plt.show() would display: the current figure, with the data curve drawn on it
        ax = plt.gcf().axes[0]
        seen.append(_medians(ax, curves.uns["corr_decay"])["data"].get_ydata().copy())

    monkeypatch.setattr(plt, "show", fake_show)
    assert sm.pl.corr_decay(curves, "data", show=True) is None
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], curves.uns["corr_decay"]["data"]["quantiles"]["Q50"])


@pytest.mark.parametrize("func", [sm.pl.corr_decay, sm.pl.similarity_cdf])
@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        ({"show": "yes"}, TypeError, "show"),
        ({"show": 1}, TypeError, "show"),
        ({"ax": "left"}, TypeError, "ax"),
        ({"save": "plot.png"}, TypeError, "save"),  # scanpy deprecated save=; use .figure.savefig()
    ],
)
def test_bad_show_ax_and_no_save(curves, shows, func, kw, error, name):
    import matplotlib.pyplot as plt

    n_before = len(plt.get_fignums())
    with pytest.raises(error, match=name):
        func(curves, **kw)
    assert len(plt.get_fignums()) == n_before  # checked before a figure is made
    assert not shows


def test_panels_with_ax_is_refused(curves):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="panels"):
        sm.pl.corr_decay(curves, panels=True, ax=ax, show=False)


@pytest.mark.parametrize(
    "func", [sm.pl.corr_decay, sm.pl.similarity_cdf, sm.pl.uncertainty, sm.pl.intervals, sm.pl.props]
)
def test_signature_has_show_and_no_save(func):
    sig = inspect.signature(func)
    assert "show" in sig.parameters
    assert sig.parameters["show"].default is None
    assert "save" not in sig.parameters


@pytest.mark.parametrize("func", [sm.pl.corr_decay, sm.pl.similarity_cdf, sm.pl.uncertainty])
def test_docstring_says_how_to_save(func):
    assert "savefig" in (func.__doc__ or "")


@pytest.mark.parametrize("func", [sm.pl.corr_decay, sm.pl.similarity_cdf])
def test_return_annotation_names_the_returned_type(func):
    ret = str(inspect.signature(func).return_annotation)
    assert "Axes" in ret and "None" in ret
    if func is sm.pl.corr_decay:
        assert "Figure" in ret


def test_saving_through_the_returned_axes(curves, tmp_path):
    ax = sm.pl.similarity_cdf(curves, show=False)
    path = tmp_path / "cdf.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------------------------- sm.pl.similarity_cdf
def test_similarity_cdf_show_false_and_ax(curves, shows):
    import matplotlib.pyplot as plt

    cdf = curves.uns["corr_decay"]["data"]["similarity_cdf"]
    _, given = plt.subplots()
    for ax in (sm.pl.similarity_cdf(curves, show=False), sm.pl.similarity_cdf(curves, ax=given, show=False)):
        assert isinstance(ax, Axes)
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        np.testing.assert_allclose(lines["observed"].get_xdata(), cdf["observed"])
        np.testing.assert_allclose(lines["shuffled"].get_xdata(), cdf["shuffled"])
        np.testing.assert_allclose(lines["observed"].get_ydata(), cdf["quantile"])
    assert ax is given
    assert not shows


# --------------------------------------------------------------------------- sm.pl.uncertainty / intervals
@pytest.fixture
def with_uncertainty():
    """A fit with the compact uncertainty written by hand: sd(i, g) = sigma_g * sqrt(d_i)."""
    rng = np.random.default_rng(5)
    n, g = 30, 3
    adata = ad.AnnData(
        rng.normal(size=(n, g)).astype(np.float32),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(g)]),
    )
    adata.obsm["spatial"] = rng.uniform(0, 10, size=(n, 2))
    adata.layers["smoothed"] = rng.normal(size=(n, g)).astype(np.float32)
    adata.obs["smoothed_var_factor"] = rng.uniform(0.1, 1.0, size=n)
    adata.var["smoothed_sigma"] = [0.5, 1.0, 2.0]
    return adata


def test_uncertainty_show_false_returns_the_figure_with_estimate_and_sd(with_uncertainty, shows):
    a = with_uncertainty
    fig = sm.pl.uncertainty(a, "g1", show=False)
    assert isinstance(fig, Figure)
    maps = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert len(maps) == 2
    np.testing.assert_allclose(maps[0].get_offsets(), a.obsm["spatial"])
    np.testing.assert_allclose(maps[0].get_array(), a.layers["smoothed"][:, 1], rtol=1e-6)
    np.testing.assert_allclose(maps[1].get_array(), 1.0 * np.sqrt(a.obs["smoothed_var_factor"]), rtol=1e-6)
    assert not shows
    assert sm.pl.uncertainty(a, "g1", show=True) is None
    assert shows == [1]


def test_intervals_show_false_and_ax(with_uncertainty, shows):
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    a = with_uncertainty
    _, given = plt.subplots()
    ax = sm.pl.intervals(a, "g2", [0, 4, 7], ax=given, show=False)
    assert ax is given
    (vl,) = [c for c in ax.collections if c.get_label().endswith("interval")]
    z = norm.ppf(0.975)
    est = a.layers["smoothed"][[0, 4, 7], 2]
    half = z * 2.0 * np.sqrt(a.obs["smoothed_var_factor"].to_numpy()[[0, 4, 7]])
    segs = np.array([s[:, 1] for s in vl.get_segments()])
    np.testing.assert_allclose(segs[:, 0], est - half, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(segs[:, 1], est + half, rtol=1e-5, atol=1e-6)
    (pts,) = [ln for ln in ax.get_lines() if ln.get_label() == "smoothed"]
    np.testing.assert_allclose(pts.get_ydata(), est, rtol=1e-6)
    assert not shows
    assert sm.pl.intervals(a, "g2", [0], show=True) is None
    assert shows == [1]


# ------------------------------------------------------------------------------------------------ sm.pl.props
@pytest.fixture
def with_props():
    rng = np.random.default_rng(2)
    n = 25
    adata = ad.AnnData(np.zeros((n, 2), dtype=np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))
    adata.obsm["spatial"] = rng.uniform(0, 5, size=(n, 2))
    p = rng.dirichlet(np.ones(3), size=n)
    adata.obsm["props"] = pd.DataFrame(p, index=adata.obs_names, columns=["A", "B", "C"])
    return adata


def test_props_returns_the_figure_with_the_proportions(with_props, shows):
    """A Figure (multi-panel), one map per cell type, coloured by the proportions."""
    a = with_props
    fig = sm.pl.props(a, compare_truth=False, show=False)
    assert isinstance(fig, Figure)
    maps = [(ax.get_title(), c) for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert [t for t, _ in maps] == ["A", "B", "C"]
    for (t, c), j in zip(maps, range(3), strict=True):
        np.testing.assert_allclose(c.get_offsets(), a.obsm["spatial"])
        np.testing.assert_allclose(c.get_array(), a.obsm["props"][t].to_numpy())
        assert j == ["A", "B", "C"].index(t)
    assert not shows


def test_props_follows_show(with_props, shows):
    if "show" not in inspect.signature(sm.pl.props).parameters:
        pytest.xfail("sm.pl.props does not take show= yet (issue 13)")
    assert sm.pl.props(with_props, compare_truth=False, show=True) is None
    assert shows == [1]


def test_uncertainty_after_a_real_fit_draws_posterior_sd(shows):
    """With ``sm.tl.smooth(uncertainty=True)``: the sd map equals ``sm.get.posterior_sd``, the estimate the layer."""
    import warnings

    adata = sm.datasets.simulate_field(n_spots=60, n_genes=3, seed=1)
    sm.pp.spatial_graph(adata, n_neighs=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    fig = sm.pl.uncertainty(adata, "gene_2", show=False)
    maps = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(maps[0].get_array(), adata.layers["smoothed"][:, 2], rtol=1e-5)
    np.testing.assert_allclose(maps[1].get_array(), sm.get.posterior_sd(adata, "gene_2")["gene_2"], rtol=1e-5)
    assert not shows
