"""The README's usage example runs as written and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_names_exactly_the_two_setup_commands():
    setup = _blocks("bash")[0]
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)


@pytest.fixture(scope="module")
def namespace():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = _blocks("python")[0]
    assert len(code.strip().splitlines()) <= 12, "the README example should stay about ten lines"
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the README is ours
    yield ns
    plt.close("all")


def test_readme_example_smooths_towards_the_truth(namespace):
    adata = namespace["adata"]
    truth = adata.layers["truth"]
    raw = np.sqrt(np.mean((np.asarray(adata.X) - truth) ** 2))
    smoothed = np.sqrt(np.mean((adata.layers["smoothed"] - truth) ** 2))
    assert smoothed < 0.8 * raw


def test_readme_example_writes_where_its_comments_say(namespace):
    adata, mix = namespace["adata"], namespace["mix"]
    assert {"data", "icar_rho0.99"} <= set(adata.uns["corr_decay"])
    assert namespace["ax"].get_legend() is not None
    props = mix.obsm["props"]
    assert props.shape == (mix.n_obs, mix.obsm["props_truth"].shape[1])
    np.testing.assert_allclose(props.to_numpy().sum(1), 1.0, atol=1e-5)
    err = np.sqrt(np.mean((props.to_numpy() - mix.obsm["props_truth"][props.columns].to_numpy()) ** 2))
    assert err < 0.1
