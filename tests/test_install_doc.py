"""The install page states the extras and lower bounds that pyproject.toml declares, and no placeholder."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return meta["project"]["optional-dependencies"]


def _table() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs" / "install.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| (.+?) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_extra_is_documented():
    assert set(_extras()) <= set(_table()), set(_extras()) - set(_table())


def test_documented_lower_bounds_match_pyproject():
    table = _table()
    for extra, reqs in _extras().items():
        for req in reqs:
            m = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9.]+)$", req)
            if m is None:
                continue
            name, bound = m.groups()
            stated = re.search(rf"{re.escape(name)} >= ([0-9.]+)", table[extra])
            if stated is not None:
                assert stated.group(1) == bound, f"{extra}: docs say {name} >= {stated.group(1)}, pyproject {bound}"


def test_no_placeholders():
    text = (ROOT / "docs" / "install.md").read_text()
    for marker in ("TODO", "TBD", "XXX", "FIXME", "<your", "<placeholder"):
        assert marker not in text, marker
