"""`make demo` (`python -m smoother demo`): files written, errors against the truth finite and improved."""

from __future__ import annotations

import math
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from smoother.__main__ import main
from smoother._demo import FIELD_FILE, FIGURES, MIXTURE_FILE, format_report, run_demo


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
    assert f"{report['smoothing']['rmse_raw']:.3f} raw" in text
    assert f"{report['smoothing']['rmse_smoothed']:.3f} smoothed" in text
    assert f"{report['deconvolution']['rmse_spatial']:.4f}" in text
    assert "total" in text and FIELD_FILE in text and "props.png" in text


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
