"""sm.datasets.dlpfc_151673: real DLPFC 151673 geometry and layers, generated counts; offline and download paths.

The data are read from ``../shared/data`` through ``SMOOTHER_DATA_DIR`` (skipped when absent); pooch is replaced
by a fake module in every test, so no test touches the network.
"""

from __future__ import annotations

import csv
import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import smoother as sm
from smoother.datasets import _dlpfc

FILES = (_dlpfc.COORDS_FILE, _dlpfc.LAYERS_FILE, _dlpfc.MARKERS_FILE)


def _rows(path: Path) -> list[list[str]]:
    """An R write.table file as rows of strings (header first), parsed with the csv module only."""
    with open(path, newline="") as fh:
        return list(csv.reader(fh, delimiter=" ", quotechar='"'))


class _FakePooch(types.ModuleType):
    """Stands in for pooch: records how it was called; ``fetch`` returns ``files[name]`` or raises ``error``."""

    def __init__(self, files=None, error=None):
        super().__init__("pooch")
        self.files, self.error, self.calls = files or {}, error, []

    def os_cache(self, project):
        return Path("/nonexistent-cache") / project

    def create(self, **kwargs):
        self.calls.append(kwargs)
        fake = self

        class _Fetcher:
            def fetch(self, name):
                if fake.error is not None:
                    raise fake.error
                return str(fake.files[name])

        return _Fetcher()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No SMOOTHER_DATA_DIR, an empty cache, and a pooch that fails like a machine without network."""
    monkeypatch.delenv(_dlpfc.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(_dlpfc.CACHE_DIR_ENV, str(tmp_path / "cache"))
    fake = _FakePooch(error=ConnectionError("Failed to resolve 'raw.githubusercontent.com'"))
    monkeypatch.setitem(sys.modules, "pooch", fake)
    return fake


@pytest.fixture
def dlpfc_env(shared_data_dir, monkeypatch):
    monkeypatch.setenv(_dlpfc.DATA_DIR_ENV, str(shared_data_dir))
    monkeypatch.setitem(sys.modules, "pooch", _FakePooch(error=AssertionError("no download with SMOOTHER_DATA_DIR")))
    return shared_data_dir


# ---------------------------------------------------------------------------------------------------------------
# the data: real geometry and labels, counts generated from the real layer profiles
# ---------------------------------------------------------------------------------------------------------------
def test_real_coordinates_and_layers_match_the_files(dlpfc_env):
    a = sm.datasets.dlpfc_151673(random_state=1)
    coords = {r[0]: (float(r[1]), float(r[2])) for r in _rows(dlpfc_env / _dlpfc.COORDS_FILE)[1:]}
    labels = {r[0].rsplit(".", 1)[0] if "." in r[0] else r[0]: r[1] for r in _rows(dlpfc_env / _dlpfc.LAYERS_FILE)[1:]}
    annotated = [b for b in coords if b in labels]  # coordinate-file order, annotated spots only
    assert len(coords) == 3639 and len(annotated) == 3611
    assert a.shape == (3611, 350)
    assert list(a.obs_names) == annotated
    np.testing.assert_array_equal(a.obsm["spatial"], np.array([coords[b] for b in annotated]))
    assert a.obs["layer"].astype(str).tolist() == [labels[b] for b in annotated]
    assert list(a.obs["layer"].dtype.categories) == ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]
    # the real layer-level table, genes x layers
    table = _rows(dlpfc_env / _dlpfc.MARKERS_FILE)
    ref = np.array([[float(v) for v in r[1:]] for r in table[1:]])
    assert list(a.var_names) == [r[0] for r in table[1:]]
    np.testing.assert_array_equal(a.varm["layer_log2_expression"].to_numpy(), ref)


def test_counts_are_generated_from_the_layer_profiles(dlpfc_env):
    a = sm.datasets.dlpfc_151673(depth=4000.0, random_state=3)
    X, mu = a.X, a.layers["truth"].astype(np.float64)
    assert X.dtype == np.float32 and (X >= 0).all() and (X == np.round(X)).all()
    # expectation: library size x (2^v - 1) / 1e6 of the spot's layer, recomputed here
    v = a.varm["layer_log2_expression"]
    expected = a.obs["library_size"].to_numpy()[:, None] * (2.0 ** v[a.obs["layer"].astype(str)].to_numpy().T - 1) / 1e6
    np.testing.assert_allclose(mu, expected, rtol=1e-6)
    assert np.median(a.obs["library_size"]) == pytest.approx(4000.0, rel=0.05)
    # Poisson counts: per layer and gene, the summed counts agree with the summed expectation (5 sd)
    for layer in ("L1", "WM"):
        m = (a.obs["layer"] == layer).to_numpy()
        s_x, s_mu = X[m].sum(0), mu[m].sum(0)
        assert (np.abs(s_x - s_mu) <= 5 * np.sqrt(s_mu) + 1).all()
    # layer structure survives: the white-matter marker profile differs from layer 1's
    wm, l1 = (a.obs["layer"] == "WM").to_numpy(), (a.obs["layer"] == "L1").to_numpy()
    assert np.corrcoef(mu[wm].mean(0), mu[l1].mean(0))[0, 1] < 0.99


def test_reproducible_by_random_state_and_nb_is_overdispersed(dlpfc_env):
    a = sm.datasets.dlpfc_151673(random_state=7)
    b = sm.datasets.dlpfc_151673(random_state=7)
    c = sm.datasets.dlpfc_151673(random_state=8)
    np.testing.assert_array_equal(a.X, b.X)
    assert (a.X != c.X).any()
    d = sm.datasets.dlpfc_151673(random_state=None)
    e = sm.datasets.dlpfc_151673(random_state=d.uns["simulation"]["random_state"])
    np.testing.assert_array_equal(d.X, e.X)  # a drawn seed is recorded and reproduces the data
    nb = sm.datasets.dlpfc_151673(noise="nb", noise_level=0.5, random_state=7)
    # residual variance relative to the mean: ~1 for Poisson, ~1 + phi * mu for NB
    ratio = lambda x, m: float(((x - m) ** 2).sum() / m.sum())  # noqa: E731
    assert ratio(a.X, a.layers["truth"]) == pytest.approx(1.0, abs=0.05)
    assert ratio(nb.X, nb.layers["truth"]) > 1.3


def test_h5ad_roundtrip(dlpfc_env, tmp_path):
    import anndata as ad

    a = sm.datasets.dlpfc_151673(random_state=0)
    a.write_h5ad(tmp_path / "d.h5ad")
    b = ad.read_h5ad(tmp_path / "d.h5ad")
    np.testing.assert_array_equal(a.X, b.X)
    assert b.uns["dataset"]["sha256"][_dlpfc.COORDS_FILE] == _dlpfc.SHA256[_dlpfc.COORDS_FILE]


def test_checksums_are_those_of_the_files(shared_data_dir):
    for name in FILES:
        assert hashlib.sha256((shared_data_dir / name).read_bytes()).hexdigest() == _dlpfc.SHA256[name]


# ---------------------------------------------------------------------------------------------------------------
# the download path, with pooch replaced (never the network)
# ---------------------------------------------------------------------------------------------------------------
def test_download_path_uses_pooch_with_checksums(shared_data_dir, offline, monkeypatch):
    offline.error = None
    offline.files = {name: shared_data_dir / name for name in FILES}
    a = sm.datasets.dlpfc_151673(random_state=0)
    assert a.shape == (3611, 350)
    (call,) = offline.calls
    assert call["base_url"] == "https://raw.githubusercontent.com/JiayuSuPKU/Smoother/main/docs/source/tutorials/data/"
    sha = {n: hashlib.sha256((shared_data_dir / n).read_bytes()).hexdigest() for n in FILES}
    assert call["registry"] == {n: f"sha256:{h}" for n, h in sha.items()}
    assert Path(call["path"]) == Path(str(_dlpfc._cache_dir()))


def test_no_folder_and_no_network_is_a_clear_error(offline):
    with pytest.raises(OSError, match=r"Could not download .*ConnectionError.*SMOOTHER_DATA_DIR"):
        sm.datasets.dlpfc_151673()
    with pytest.raises(OSError, match=r"not in the cache .*download=False.*SMOOTHER_DATA_DIR"):
        sm.datasets.dlpfc_151673(download=False)
    assert len(offline.calls) == 1  # download=False never asked pooch to fetch


def test_cached_files_are_used_without_download(shared_data_dir, offline, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in FILES:
        (cache / name).write_bytes((shared_data_dir / name).read_bytes())
    a = sm.datasets.dlpfc_151673(download=False)
    assert a.n_obs == 3611 and offline.calls == []


def test_without_pooch_the_error_names_the_package_and_the_folder(monkeypatch):
    monkeypatch.delenv(_dlpfc.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "pooch", None)  # `import pooch` raises ImportError
    with pytest.raises(ImportError, match=r"pooch.*SMOOTHER_DATA_DIR"):
        sm.datasets.dlpfc_151673()


def test_bad_local_folder(offline, monkeypatch, tmp_path):
    monkeypatch.setenv(_dlpfc.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"SMOOTHER_DATA_DIR=.*is not a folder.*export SMOOTHER_DATA_DIR"):
        sm.datasets.dlpfc_151673()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / _dlpfc.COORDS_FILE).write_text("x")
    monkeypatch.setenv(_dlpfc.DATA_DIR_ENV, str(folder))
    with pytest.raises(FileNotFoundError, match=_dlpfc.LAYERS_FILE):
        sm.datasets.dlpfc_151673()
    for name in FILES:
        (folder / name).write_text('"a" "b"\n')
    with pytest.raises(ValueError, match="checksum"):
        sm.datasets.dlpfc_151673()
    assert offline.calls == []  # a local folder is never completed by a download


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"depth": "3000"}, TypeError, "depth"),
        ({"depth": float("nan")}, ValueError, "depth"),
        ({"depth": 0.0}, ValueError, "depth"),
        ({"depth": True}, TypeError, "depth"),
        ({"noise": "zip"}, ValueError, "noise"),
        ({"noise_level": float("inf")}, ValueError, "noise_level"),
        ({"noise_level": -1.0}, ValueError, "noise_level"),
        ({"random_state": 1.5}, TypeError, "random_state"),
        ({"random_state": -1}, ValueError, "random_state"),
        ({"download": "yes"}, TypeError, "download"),
    ],
)
def test_arguments_are_checked_before_reading_or_downloading(offline, kwargs, error, name):
    with pytest.raises(error, match=name):
        sm.datasets.dlpfc_151673(**kwargs)
    assert offline.calls == []


def test_pooch_is_imported_only_when_downloading():
    import subprocess

    code = "import sys, smoother as sm; sm.datasets.lattice(3); sm.datasets.dlpfc_151673; print('pooch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
