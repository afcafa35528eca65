"""The Sphinx documentation builds with warnings as errors, and the pages completed at build time are right."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

pytest.importorskip("sphinx", reason="the `doc` extra is not installed")
pytest.importorskip("myst_nb", reason="the `doc` extra is not installed")
pytest.importorskip("sphinx_book_theme", reason="the `doc` extra is not installed")


@pytest.fixture(scope="module")
def conf():
    spec = importlib.util.spec_from_file_location("smoother_docs_conf", DOCS / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sphinx_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q"]
    cmd += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"sphinx-build failed:\n{res.stderr[-6000:]}"
    for page in ["index", "install", "api", "math", "benchmarks", "tutorials"]:
        assert (out / f"{page}.html").is_file(), page
    # an API page for every public module, and a page per function of the AnnData API
    gen = out / "generated"
    for mod in ["pp", "tl", "pl", "get", "datasets", "losses", "weights", "models"]:
        assert (gen / f"smoother.{mod}.html").is_file(), mod
    import smoother as sm

    for mod in (sm.pp, sm.tl, sm.pl, sm.get, sm.datasets):
        for name in mod.__all__:
            assert (gen / f"{mod.__name__}.{name}.html").is_file(), f"{mod.__name__}.{name}"
    # the math page states the exact problems
    math = (out / "math.html").read_text(encoding="utf-8")
    for needle in [r"Q_{mm} \hat X_m = -Q_{mo} Y_o", r"(I + \lambda Q)\, \hat X = Y", r"X^T (I - \lambda Q) X"]:
        assert needle in math, needle
    # every committed notebook is a page of the tutorials section
    tutorials = (out / "tutorials.html").read_text(encoding="utf-8")
    for nb in (DOCS.parent / "tutorials").glob("*.ipynb"):
        assert (out / "tutorials" / f"{nb.stem}.html").is_file(), nb.name
        assert f"tutorials/{nb.stem}.html" in tutorials


def test_tutorials_toctree(conf, tmp_path, monkeypatch):
    monkeypatch.setattr(conf, "TUTORIALS", tmp_path)
    assert "toctree" not in conf.tutorials_toctree()  # no empty glob, which Sphinx would warn about
    for name in ["02_b.ipynb", "01_a.ipynb", "README.md"]:
        (tmp_path / name).write_text("{}")
    text = conf.tutorials_toctree()
    assert text.startswith("```{toctree}")
    assert text.index("tutorials/01_a") < text.index("tutorials/02_b")
    assert "README" not in text


def test_benchmark_tables(conf, tmp_path, monkeypatch):
    monkeypatch.setattr(conf, "BENCH_RESULTS", tmp_path)
    assert "No benchmark results" in conf.benchmark_tables()
    (tmp_path / "b_speed.md").write_text(
        "# Speed\n\n| a |\n|---|\n| 1 |\n\n## Details\n\n![fig](fig.png) and [notes](notes.md)\n"
        "```\n# a comment, not a heading\n```\n"
    )
    (tmp_path / "a_memory.md").write_text("#### deep heading\n\ntext\n")
    text = conf.benchmark_tables()
    # one section per file, in file-name order, titled by its first H1 or its name
    assert text.index("## a memory") < text.index("## Speed")
    # headings inside a file start at level 3; code fences are left alone
    assert "\n### deep heading" in text and "\n### Details" in text
    assert "\n# a comment, not a heading" in text
    # images point into benchmarks/results, links to other files become text
    assert "![fig](../benchmarks/results/fig.png)" in text
    assert "[notes]" not in text and "and notes" in text


def test_sync_tutorials_mirrors_notebooks(conf, tmp_path):
    src, dst = tmp_path / "tutorials", tmp_path / "docs_tutorials"
    (src / "img").mkdir(parents=True)
    (src / "01_a.ipynb").write_text("{1}")
    (src / "img" / "fig.png").write_bytes(b"png")
    (src / "result.h5ad").write_bytes(b"data")  # outputs of a notebook run are not copied
    (src / ".ipynb_checkpoints").mkdir()
    (src / ".ipynb_checkpoints" / "01_a-checkpoint.ipynb").write_text("{}")
    copied = conf.sync_tutorials(src, dst)
    assert copied == [Path("01_a.ipynb"), Path("img/fig.png")]
    assert (dst / "01_a.ipynb").read_text() == "{1}" and (dst / "img" / "fig.png").read_bytes() == b"png"
    assert not (dst / "result.h5ad").exists() and not (dst / ".ipynb_checkpoints").exists()
    # a notebook removed from the tutorials disappears from the copy; a changed one is updated
    (src / "img" / "fig.png").unlink()
    (src / "01_a.ipynb").write_text("{22}")
    conf.sync_tutorials(src, dst)
    assert not (dst / "img" / "fig.png").exists()
    assert (dst / "01_a.ipynb").read_text() == "{22}"
