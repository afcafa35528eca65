"""`make demo` (`python -m smoother demo`): files written, errors against the truth finite and improved, figures
that a reader can use (every map has a colorbar and a title and shows what its title says, no empty panel, fonts
of at least 9 pt) and a summary with one labelled number per claim."""

from __future__ import annotations

import inspect
import math
import re
import struct
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from smoother.__main__ import main
from smoother._demo import FIELD_FILE, FIGURES, MIXTURE_FILE, format_report, make_figures, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    return out, run_demo(n_spots=400, out=out, seed=3, dpi=40)


def test_demo_writes_h5ad_and_figures(demo):
    out, report = demo
    names = {FIELD_FILE, MIXTURE_FILE, *FIGURES}
    assert {p.name for p in out.iterdir()} == names
    assert sorted(report["files"]) == sorted(str(out / n) for n in names)
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    field = ad.read_h5ad(out / FIELD_FILE)
    assert field.n_obs == 400
    assert {"truth", "smoothed"} <= set(field.layers)
    assert "spatial_connectivities" in field.obsp
    assert "data" in field.uns["corr_decay"]
    mix = ad.read_h5ad(out / MIXTURE_FILE)
    assert {"props", "props_no_spatial", "props_nnls", "props_truth", "props_abundance"} <= set(mix.obsm)
    assert mix.uns["props"]["params"]["model"] == report["deconvolution"]["model"] == "nb"
    np.testing.assert_allclose(mix.obsm["props"].to_numpy().sum(1), 1.0, atol=1e-5)


def test_demo_errors_are_finite_and_the_spatial_prior_helps(demo):
    _, report = demo
    s, d = report["smoothing"], report["deconvolution"]
    values = [s["rmse_raw"], s["rmse_smoothed"], s["lambda"], d["rmse_no_spatial"], d["rmse_spatial"], d["rmse_nnls"]]
    assert all(math.isfinite(v) for v in values)
    assert s["rmse_smoothed"] < 0.7 * s["rmse_raw"]
    # the default (count model + spatial prior) is no worse than without the prior, and beats the classic NNLS
    assert d["rmse_spatial"] <= 1.02 * d["rmse_no_spatial"]
    assert d["rmse_spatial"] < 0.95 * d["rmse_nnls"]
    # the errors in the report are those of the written tables
    mix = ad.read_h5ad(report["files"][1])
    types = list(mix.obsm["props"].columns)
    err = mix.obsm["props"][types].to_numpy() - mix.obsm["props_truth"][types].to_numpy()
    assert float(np.sqrt(np.mean(err**2))) == pytest.approx(d["rmse_spatial"], rel=1e-6)
    assert s["lambda"] > 0
    # the smoothed error in the report is the one of the written layer
    field = ad.read_h5ad(report["files"][0])
    rmse = float(np.sqrt(np.mean((field.layers["smoothed"] - field.layers["truth"]) ** 2)))
    assert rmse == pytest.approx(s["rmse_smoothed"], rel=1e-5)
    assert set(report["decay"]) == {"data", "icar_rho0.99", "isar_rho0.9"}
    assert report["timings"]["total"] >= max(v for k, v in report["timings"].items() if k != "total")


def test_format_report_names_errors_timings_and_files(demo):
    _, report = demo
    text = format_report(report)
    s, d = report["smoothing"], report["deconvolution"]
    assert f"{s['rmse_raw']:.3f} -> {s['rmse_smoothed']:.3f}" in text
    for value in (d["rmse_spatial"], d["rmse_no_spatial"], d["rmse_nnls"]):
        assert f": {value:.4f}" in text
    assert "total" in text and FIELD_FILE in text and "props.png" in text


_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def test_summary_states_one_labelled_number_per_claim(demo):
    _, report = demo
    lines = format_report(report).splitlines()
    claims = [ln for ln in lines if ln.startswith("  ")]
    assert len(claims) >= 8
    for line in claims:
        label, _, value = line.strip().rpartition(": ")
        assert label, line  # every claim says what its number is
        if label.startswith("closest prior"):
            assert any(value.startswith(k.partition("_rho")[0]) for k in report["decay"] if k != "data"), line
            continue
        # one measured number, or one before -> after pair; no derived percentages next to it
        assert re.fullmatch(rf"{_NUMBER}( -> {_NUMBER})?|none \(.*\)", value), line
    # each measured value is printed once, on the line that names it
    s, d = report["smoothing"], report["deconvolution"]
    expect = {
        "RMSE to the noise-free truth": f"{s['rmse_raw']:.3f} -> {s['rmse_smoothed']:.3f}",
        "lambda chosen from the data": f"{s['lambda']:.3g}",
        "defaults (": f"{d['rmse_spatial']:.4f}",
        "the same without the spatial prior": f"{d['rmse_no_spatial']:.4f}",
        "classic NNLS": f"{d['rmse_nnls']:.4f}",
        "spatial strength chosen": f"{d['lambda']:.3g}",
    }
    for label, value in expect.items():
        (line,) = [ln for ln in claims if ln.strip().startswith(label)]
        assert line.endswith(f": {value}"), line
    assert "%" not in "\n".join(claims)


# ---------------------------------------------------------------------------------------------------------------
# figures: content, not just files
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figures(demo):
    import matplotlib.pyplot as plt

    _, report = demo
    field, mix = ad.read_h5ad(report["files"][0]), ad.read_h5ad(report["files"][1])
    figs = make_figures(field, mix, dpi=40)
    yield field, mix, figs
    for fig in figs.values():
        plt.close(fig)


def _colorbar_axes(fig) -> set:
    return {id(m.colorbar.ax) for ax in fig.axes for m in ax.collections if getattr(m, "colorbar", None)}


def _panels(fig) -> list:
    cbs = _colorbar_axes(fig)
    return [ax for ax in fig.axes if id(ax) not in cbs]


def test_make_figures_draws_the_saved_files(figures):
    assert set(figures[2]) == set(FIGURES)


def test_every_map_has_a_colorbar_and_every_panel_a_title_and_data(figures):
    _, _, figs = figures
    n_maps = 0
    for name, fig in figs.items():
        for ax in _panels(fig):
            assert ax.get_visible(), name
            assert ax.get_title().strip(), f"{name}: a panel without a title"
            drawn = [c for c in ax.collections if len(c.get_offsets())] + [ln for ln in ax.lines if len(ln.get_xdata())]
            assert drawn, f"{name}: empty panel {ax.get_title()!r}"
            for coll in ax.collections:
                if coll.get_array() is not None and len(coll.get_offsets()) > 100:  # a colour-coded map
                    n_maps += 1
                    cb = coll.colorbar
                    assert cb is not None, f"{name}: {ax.get_title()!r} has no colorbar"
                    assert cb.ax.get_ylabel().strip(), f"{name}: colorbar of {ax.get_title()!r} has no label"
    assert n_maps == 3 + 4 * 3  # smoothing: truth/observed/smoothed; props: 4 rows x 3 types


def test_no_empty_grid_cells(figures):
    _, _, figs = figures
    for name, fig in figs.items():
        grids: dict[int, list] = {}
        for ax in _panels(fig):
            spec = ax.get_subplotspec()
            grids.setdefault(id(spec.get_gridspec()), []).append(spec)
        for specs in grids.values():
            gs = specs[0].get_gridspec()
            cells = {(r, c) for sp in specs for r in sp.rowspan for c in sp.colspan}
            assert cells == {(r, c) for r in range(gs.nrows) for c in range(gs.ncols)}, f"{name}: empty grid cell"


def test_fonts_are_at_least_9pt_and_default_dpi_is_readable(figures):
    from matplotlib.text import Text

    _, _, figs = figures
    for name, fig in figs.items():
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert texts
        small = sorted({(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 9})
        assert not small, f"{name}: text below 9 pt: {small[:5]}"
    # 9 pt at the default resolution is at least 15 pixels high
    assert inspect.signature(run_demo).parameters["dpi"].default * 9 / 72 >= 15


def _png_dpi(path) -> float:
    """The resolution stored in a PNG's pHYs chunk (pixels per metre -> per inch)."""
    data = open(path, "rb").read()
    i = data.index(b"pHYs")
    ppm_x, _, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    assert unit == 1
    return ppm_x * 0.0254


def test_pngs_are_written_at_the_requested_dpi(demo):
    out, _ = demo
    for name in FIGURES:
        assert _png_dpi(out / name) == pytest.approx(40, abs=0.5), name


def test_maps_show_what_their_titles_say(figures):
    field, mix, figs = figures
    truth = mix.obsm["props_truth"]
    source = {
        "truth": lambda t: truth[t].to_numpy(float),
        "estimate": lambda t: mix.obsm["props"][t].to_numpy(float),
        "error, no spatial prior": lambda t: mix.obsm["props_no_spatial"][t].to_numpy(float) - truth[t].to_numpy(float),
        "error, spatial prior": lambda t: mix.obsm["props"][t].to_numpy(float) - truth[t].to_numpy(float),
    }
    seen = set()
    for ax in _panels(figs["props.png"]):
        cell_type, _, what = ax.get_title().partition(": ")
        (coll,) = [c for c in ax.collections if c.get_array() is not None]
        np.testing.assert_allclose(np.asarray(coll.get_array(), float), source[what](cell_type), atol=1e-6)
        np.testing.assert_allclose(coll.get_offsets(), mix.obsm["spatial"])
        lo, hi = coll.get_clim()
        if what.startswith("error"):
            assert lo == -hi and hi > 0  # a symmetric range: the sign of the error reads at a glance
        else:
            assert (lo, hi) == (0.0, 1.0)
        seen.add(what)
    assert seen == set(source)
    # the better estimate shows a smaller error on the same colour scale (the printed claim, seen in the figure)
    errs = {}
    for ax in _panels(figs["props.png"]):
        what = ax.get_title().partition(": ")[2]
        if what.startswith("error"):
            (coll,) = [c for c in ax.collections if c.get_array() is not None]
            errs.setdefault(what, []).append(np.asarray(coll.get_array(), float))
    assert np.sqrt(np.mean(np.square(errs["error, spatial prior"]))) < np.sqrt(
        np.mean(np.square(errs["error, no spatial prior"]))
    )
    gene = field.var_names[0]
    layers = {"truth": field.layers["truth"], "observed": field.X, "smoothed": field.layers["smoothed"]}
    clims = set()
    for ax in _panels(figs["smoothing.png"]):
        title = ax.get_title()
        assert title.startswith(f"{gene}: ")
        what = title.split(": ")[1].split()[0]
        (coll,) = [c for c in ax.collections if c.get_array() is not None]
        col = np.asarray(layers[what][:, field.var_names.get_loc(gene)], float).ravel()
        np.testing.assert_allclose(np.asarray(coll.get_array(), float), col, rtol=1e-6)
        clims.add(coll.get_clim())
    assert len(clims) == 1  # one colour scale for truth, observed and smoothed


def test_cli_rejects_a_bad_size_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["demo", "--n-spots", "5", "--out", str(out)]) == 2
    assert "n_spots" in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_explains_the_options():
    res = subprocess.run(
        [sys.executable, "-m", "smoother", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0
    for option in ("--n-spots", "--out", "--seed"):
        assert option in res.stdout
