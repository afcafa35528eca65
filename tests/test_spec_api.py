"""Public names and parameter lists of ``smoother.losses`` against the seed spec (spec/smoother.losses.txt).

The spec is checked twice: against a table written out here (always runs), and, when ``../shared/spec`` is
present beside the repository, against the spec file itself, parsed (so the table cannot drift from it).

Rule for signatures: the positional-or-keyword parameters must equal the spec's (names, order, defaults);
anything we add must be keyword-only with a default, so every call written for the spec still works.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import smoother
from smoother import losses

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "smoother.losses.txt"
_ = inspect.Parameter.empty

FUNCTIONS = {
    "kl_loss_scipy": [("p", _), ("weights", None)],
    "kl_loss": [("p", _), ("weights", None)],
    "quadratic_loss": [("beta", _), ("inv_cov", _), ("group_scales", _), ("normalize", True)],
    "sparse_quadratic_loss": [("beta", _), ("inv_cov_2d_sp", _), ("group_scales", _), ("normalize", True)],
}
CLASSES = {
    "SpatialLoss": {
        "bases": ["torch.nn.Module"],
        "init": [("prior", _), ("spatial_weights", None), ("rho", 1), ("use_sparse", True), ("standardize_cov", False)],
        "methods": {
            "_sanity_check": [],
            "estimate_confidence": [("ref_exp", _), ("st_exp", _), ("method", "lr")],
            "forward": [("coefs", _), ("normalize", True)],
            "calc_corr_decay_stats": [
                ("coords", _),
                ("min_k", 0),
                ("max_k", 50),
                ("cov_ind", 0),
                ("return_var", False),
            ],
        },
        "attributes": [
            "prior",
            "spatial_weights",
            "rho",
            "use_sparse",
            "standardize_cov",
            "inv_cov",
            "inv_cov_2d_sp",
            "confidences",
        ],
    },
    "TopLoss": {
        "bases": ["torch.nn.Module"],
        "init": [("betti_priors", _), ("coords_xy", _)],
        "methods": {
            "reshape_coefs": [("beta", _), ("pad_value", None)],
            "forward": [("coefs", _)],
        },
        "attributes": ["betti_priors", "coords_xy", "_num_spot", "pdfn", "topfn"],
    },
    "ContrastiveSpatialLoss": {
        "bases": ["SpatialLoss"],
        "init": [
            ("prior", "icar"),
            ("spatial_weights", None),
            ("rho", 1),
            ("use_sparse", True),
            ("standardize_cov", True),
            ("num_perm", 10),
            ("neg2pos_ratio", 0.5),
            ("lower_bound", -1),
            ("check_positive_definite", False),
        ],
        "methods": {
            "check_positive_definite": [("n_tests", 10)],
            "forward": [("coefs", _), ("normalize", True)],
        },
        "attributes": ["num_perm", "neg2pos_ratio", "lower_bound", "rho"],
    },
}


def check_params(func, expected, where):
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    got = [(p.name, p.default) for p in positional]
    assert got == list(expected), f"{where}: parameters {got}, spec {expected}"
    for p in params:
        if p not in positional:
            assert p.kind == p.KEYWORD_ONLY and p.default is not p.empty, f"{where}: extra parameter {p.name}"


@pytest.fixture(scope="module")
def instances():
    xx, yy = np.meshgrid(np.arange(5), np.arange(4))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    swm = smoother.SpatialWeightMatrix()
    swm.calc_weights_knn(coords, k=4, verbose=False)
    return {
        "SpatialLoss": losses.SpatialLoss("icar", swm, rho=0.9),
        "ContrastiveSpatialLoss": losses.ContrastiveSpatialLoss(spatial_weights=swm, random_state=0),
        "TopLoss": losses.TopLoss({0: {0: 1}}, coords),
    }


def test_module_exports_every_spec_name():
    for name in [*FUNCTIONS, *CLASSES]:
        assert hasattr(losses, name), name
        assert name in losses.__all__
    for name in CLASSES:  # top-level re-exports
        assert getattr(smoother, name) is getattr(losses, name)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_signatures(name):
    check_params(getattr(losses, name), FUNCTIONS[name], name)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_signatures_bases_attributes(name, instances):
    spec = CLASSES[name]
    cls = getattr(losses, name)
    check_params(cls.__init__, spec["init"], f"{name}.__init__")
    for base in spec["bases"]:
        target = torch.nn.Module if base == "torch.nn.Module" else getattr(losses, base)
        assert issubclass(cls, target)
    for meth, params in spec["methods"].items():
        check_params(getattr(cls, meth), params, f"{name}.{meth}")
    obj = instances[name]
    for attr in spec["attributes"]:
        assert hasattr(obj, attr), f"{name}.{attr}"


# ---------------------------------------------------------------------------------------------------------------
# the spec file itself
# ---------------------------------------------------------------------------------------------------------------
def _parse_params(text: str) -> list[tuple[str, object]]:
    fn = ast.parse(f"def f({text}): pass").body[0]
    args = fn.args.args
    defaults = [_] * (len(args) - len(fn.args.defaults)) + [ast.literal_eval(d) for d in fn.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults, strict=True)]


def parse_spec(text: str) -> tuple[dict, dict]:
    """Functions and classes (init, methods, attributes, bases) from the 'Module Contents' part of the spec."""
    body = text.split("Module Contents", 1)[1].splitlines()
    functions, classes, current, prev = {}, {}, None, ""
    for raw in body:
        line = raw.strip()
        if not line:
            continue
        if m := re.match(r"^smoother\.losses\.(\w+)\((.*)\)$", line):
            functions[m[1]] = _parse_params(m[2])
            current = None
        elif m := re.match(r"^class smoother\.losses\.(\w+)\((.*)\)$", line):
            current = classes.setdefault(m[1], {"init": _parse_params(m[2]), "methods": {}, "attributes": set()})
        elif current is not None and (m := re.match(r"^Bases: (.+)$", line)):
            current["bases"] = [b.strip() for b in m[1].split(",")]
        elif current is not None and (m := re.match(r"^(_?[a-z]\w*)\((.*)\)(?: None)?$", line)):
            current["methods"][m[1]] = _parse_params(m[2])
        elif current is not None and prev != "Type:" and (m := re.match(r"^(_?[a-z]\w*)(?: = .+)?$", line)):
            current["attributes"].add(m[1])
        prev = line
    return functions, classes


def test_table_equals_spec_file():
    if not SPEC.is_file():
        pytest.skip("../shared/spec/smoother.losses.txt is not present")
    functions, classes = parse_spec(SPEC.read_text())
    assert functions == FUNCTIONS
    assert set(classes) == set(CLASSES)
    for name, spec in classes.items():
        assert spec["init"] == CLASSES[name]["init"], name
        assert spec["methods"] == CLASSES[name]["methods"], name
        assert spec["bases"] == CLASSES[name]["bases"], name
        # documented attribute names (TopLoss's doc calls one 'betti_prior'; the code and list say 'betti_priors')
        assert set(CLASSES[name]["attributes"]) <= spec["attributes"] | {"_num_spot"}, name
        assert spec["attributes"] - {"betti_prior"} <= set(CLASSES[name]["attributes"]), name
