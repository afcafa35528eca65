"""Sphinx configuration of the smoother documentation.

Build with ``make docs`` (``sphinx-build -M html docs docs/_build -W --keep-going``). Warnings are errors, so the
settings below are chosen to fail on real problems (broken markup, missing pages, failed imports) but not on
cosmetic noise from notebooks or on references Sphinx cannot resolve without network access.

Two pages are completed at build time, so that they follow the repository without edits:

* ``tutorials.md`` gets a toctree of every notebook in ``../tutorials``; with no notebook yet it says so instead
  of failing on an empty glob. The notebooks (and images beside them) are copied into ``docs/tutorials/``
  (git-ignored) when this file is loaded: Sphinx only reads sources inside ``docs/``, and a symlink would break
  links between notebooks (they resolve against the link's target, outside the source directory).
* ``benchmarks.md`` gets every table in ``../benchmarks/results/*.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TUTORIALS = ROOT / "tutorials"
TUTORIALS_COPY = HERE / "tutorials"
BENCH_RESULTS = ROOT / "benchmarks" / "results"

# the package is installed editable in .venv; fall back to the source tree (e.g. a bare checkout)
try:
    import smoother  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT / "src"))

# -- project ---------------------------------------------------------------------------------------------------
project = "smoother"
author = "smoother developers"
copyright = f"{date.today().year}, {author}"
try:
    release = _version("smoother-spatial")
except PackageNotFoundError:  # pragma: no cover
    release = "0.0.0"
version = release

# -- extensions ------------------------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # markdown pages and notebooks (brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "generated/**/.ipynb_checkpoints",
    "**/.ipynb_checkpoints",
    # only notebooks are tutorials; a README or notes beside them are not pages
    "tutorials/**.md",
    "tutorials/**.rst",
    "tutorials/**.txt",
    "Thumbs.db",
    ".DS_Store",
]
root_doc = "index"

# -- API reference (autosummary + autodoc + napoleon) -----------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's page lists what its __all__ exports
autosummary_imported_members = False
autodoc_typehints = "description"  # types shown once, next to each parameter
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
add_module_names = False

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_param = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" sections as fields, not as directives that duplicate autodoc members
napoleon_include_init_with_doc = False
# "Returns" is free text (rendered as written): in this project it lists the AnnData fields a function writes,
# often as a definition or bullet list, which the typed-field parser of napoleon would mangle.
napoleon_custom_sections = ["Returns"]

# Missing reference targets (types from numpy/anndata/torch, no intersphinx offline) are not errors.
nitpicky = False
suppress_warnings = [
    # A short name such as `corr_decay` exists in both sm.tl and sm.pl (scanpy-style matching names); an
    # unqualified reference to it picks one of them instead of failing the build.
    "ref.python",
    # Notebook outputs in a MIME type with no static rendering (e.g. interactive plots) are dropped, not errors.
    "mystnb.unknown_mime_type",
    # A notebook without kernel metadata (e.g. written with nbformat) shows its code without highlighting.
    "myst-nb.lexer",
    # Notebooks written for reading in Jupyter often skip heading levels; this only affects the page outline.
    "myst.header",
]

# -- MyST / myst-nb ----------------------------------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # tutorials are committed with their outputs and executed by `make test`
nb_merge_streams = True

# -- HTML ------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"smoother {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_show_sourcelink = False

# -- pages completed at build time -------------------------------------------------------------------------------
_TUTORIALS_MARKER = "<!-- tutorials-toctree -->"
_BENCHMARKS_MARKER = "<!-- benchmark-tables -->"
_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})(\s+.*)$")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


_TUTORIAL_FILES = {".ipynb", ".png", ".jpg", ".jpeg", ".gif", ".svg"}


def sync_tutorials(src: Path | None = None, dst: Path | None = None) -> list[Path]:
    """Mirror the notebooks and images of ``src`` (default ``../tutorials``) into ``dst`` (``docs/tutorials``).

    Unchanged files are left alone (so incremental builds stay incremental), files gone from ``src`` are removed,
    and every copy is written to a temporary name first, so a concurrent build never reads a half-written file.
    Returns the copied paths relative to ``dst``.
    """
    src = TUTORIALS if src is None else src
    dst = TUTORIALS_COPY if dst is None else dst
    if dst.is_symlink():  # an older checkout linked docs/tutorials to ../tutorials
        dst.unlink()
    wanted: dict[Path, Path] = {}
    if src.is_dir():
        for path in src.rglob("*"):
            rel = path.relative_to(src)
            hidden = any(part.startswith(".") for part in rel.parts)
            if path.is_file() and not hidden and path.suffix.lower() in _TUTORIAL_FILES:
                wanted[rel] = path
    if dst.is_dir():
        for path in dst.rglob("*"):
            if path.is_file() and path.relative_to(dst) not in wanted:
                path.unlink(missing_ok=True)
    for rel, path in wanted.items():
        target = dst / rel
        stat = path.stat()
        if target.is_file():
            tstat = target.stat()
            if tstat.st_size == stat.st_size and tstat.st_mtime_ns == stat.st_mtime_ns:
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copy2(path, tmp)
        os.replace(tmp, target)
    return sorted(wanted)


def tutorials_toctree() -> str:
    """A toctree of the committed notebooks (sorted by file name), or a note when there is none."""
    notebooks = sorted(TUTORIALS.glob("*.ipynb")) if TUTORIALS.is_dir() else []
    if not notebooks:
        return "No tutorial notebooks have been committed yet.\n"
    entries = "\n".join(f"tutorials/{nb.stem}" for nb in notebooks)
    return f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"


def _shift_headings(text: str, top: int) -> str:
    """Shift markdown headings (outside code fences) so that the highest one has level ``top``."""
    lines = text.splitlines()
    in_fence, levels = False, []
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADING.match(line)):
            levels.append(len(m.group(1)))
    if not levels:
        return text
    shift = top - min(levels)
    out, in_fence = [], False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADING.match(line)):
            line = "#" * min(6, len(m.group(1)) + shift) + m.group(2)
        out.append(line)
    return "\n".join(out)


def _fix_links(text: str) -> str:
    """Images point into benchmarks/results; other relative links become plain text (they are not doc pages)."""

    def repl(m: re.Match) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return m.group(0)
        if bang:
            return f"![{label}](../benchmarks/results/{target})"
        return label

    return _LINK.sub(repl, text)


def benchmark_tables() -> str:
    """Every ``benchmarks/results/*.md`` as a section of its own (title: its first heading or its file name)."""
    files = sorted(BENCH_RESULTS.glob("*.md")) if BENCH_RESULTS.is_dir() else []
    if not files:
        return "No benchmark results have been committed yet (run `make benchmarks`).\n"
    parts = []
    for path in files:
        text = path.read_text(encoding="utf-8").strip("\n")
        first = text.splitlines()[0] if text else ""
        m = _HEADING.match(first)
        if m and len(m.group(1)) == 1:
            title, text = m.group(2).strip(), "\n".join(text.splitlines()[1:])
        else:
            title = path.stem.replace("_", " ")
        body = _fix_links(_shift_headings(text, 3))
        parts.append(f"## {title}\n\n*From `benchmarks/results/{path.name}`.*\n\n{body}\n")
    return "\n".join(parts)


def _complete_page(app, docname: str, source: list[str]) -> None:
    if docname == "tutorials" and _TUTORIALS_MARKER in source[0]:
        source[0] = source[0].replace(_TUTORIALS_MARKER, tutorials_toctree())
    elif docname == "benchmarks" and _BENCHMARKS_MARKER in source[0]:
        source[0] = source[0].replace(_BENCHMARKS_MARKER, benchmark_tables())


def _always_reread(app, env, added, changed, removed) -> list[str]:
    # their content comes from files Sphinx does not track
    return [d for d in ("tutorials", "benchmarks") if d in env.found_docs]


sync_tutorials()


def setup(app):
    app.connect("source-read", _complete_page)
    app.connect("env-get-outdated", _always_reread)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
