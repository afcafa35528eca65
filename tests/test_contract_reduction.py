"""The input/output contract (issue 11) of ``sm.tl.spatial_pca``, ``sm.tl.spatial_vae`` and the classic
``smoother.models.reduction`` models.

Rejected input: the right error type, a message naming the user's argument (``lambda_spatial_loss`` in the classic
API), no work started (no prior built, no gram matrix, no eigen-solve, no training), every AnnData unchanged.
Accepted awkward input (2 spots, constant genes, int/bool/float32, CSR/CSC, views, duplicate names, re-runs): the
same result as an independent brute force (dense eigen-decomposition of X^T (I - lambda Q) X with the precision
written from its formula in ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import _dense_precision
from tests.contract import WorkStarted, assert_unchanged, check_rejects, snapshot

import smoother as sm
from smoother._core import spca as core_spca
from smoother.tl import _reduction as tl_red

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
N_SIDE, N_GENES = 7, 10


# ------------------------------------------------------------------------------------------------ data
@functools.cache
def _base() -> ad.AnnData:
    rng = np.random.default_rng(3)
    xx, yy = np.meshgrid(np.arange(float(N_SIDE)), np.arange(float(N_SIDE)))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    fields = np.column_stack([np.sin(coords[:, 0] / 2.0), coords[:, 1] / N_SIDE])
    X = fields @ rng.standard_normal((2, N_GENES)) + 0.5 * rng.standard_normal((coords.shape[0], N_GENES)) + 1.0
    a = ad.AnnData(X)
    a.obs_names = [f"s{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{i}" for i in range(N_GENES)]
    a.obsm["spatial"] = coords
    sm.pp.spatial_graph(a, n_neighs=4)
    return a


@pytest.fixture
def adata() -> ad.AnnData:
    return _base().copy()


def brute_force(X, W, k, lam, *, prior="icar", rho=0.99, standardize=True, zero_center=True):
    """Top-k eigenpairs of X_c^T (I - lam Q) X_c from dense matrices only (Q from its formula)."""
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    Q = _dense_precision(W, prior, rho, standardize)
    Xc = X - X.mean(axis=0) if zero_center else X
    w, V = np.linalg.eigh(Xc.T @ (np.eye(X.shape[0]) - lam * Q) @ Xc)
    return w[::-1][:k], V[:, ::-1][:, :k]


def assert_matches_brute_force(out: ad.AnnData, X, W, k, lam, key="spatial_pca", rtol=1e-8, **kw):
    w, V = brute_force(X, W, k, lam, **kw)
    u = out.uns[key]
    scale = np.abs(w).max()
    np.testing.assert_allclose(np.asarray(u["objective"]) * out.n_obs, w, rtol=rtol, atol=rtol * scale)
    L = np.asarray(out.varm["spatial_PCs" if key == "spatial_pca" else f"{key}_PCs"], dtype=np.float64)
    np.testing.assert_allclose(np.abs(L.T @ V), np.eye(k), atol=max(1e-6, 10 * rtol))


@contextlib.contextmanager
def no_reduction_work():
    """Besides tests.contract.no_work: no prior built, no gram matrix, no eigen-solve, no scvi training."""

    def boom(*_a, **_k):
        raise WorkStarted("spatial PCA / VAE work started before the arguments were checked")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tl_red, "get_prior_operator", boom)
        for name in ("spatial_pca", "spatial_gram", "spatial_operator"):
            mp.setattr(core_spca, name, boom)
        mp.setattr(core_spca.sla, "eigh", boom)
        from smoother.models.reduction import SpatialPCA

        mp.setattr(SpatialPCA, "_reduce_exact", boom)
        mp.setattr(SpatialPCA, "_reduce_sgd", boom)
        try:
            import scvi

            for cls in (scvi.model.SCVI, scvi.model.SCANVI, scvi.model.MULTIVI):
                mp.setattr(cls, "train", boom)
        except ImportError:
            pass
        yield


def rejects(func, *args, error, names=(), **kwargs):
    with no_reduction_work():
        return check_rejects(func, *args, error=error, names=names, **kwargs)


# bad values of a real argument and the error each must raise
BAD_REALS = [
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    ("1.0", TypeError),
    ("big", TypeError),
    (True, TypeError),
    (None, TypeError),
    ([1.0], TypeError),
]
BAD_INTS = [
    (math.nan, TypeError),
    (math.inf, TypeError),
    (2.5, TypeError),
    (3.0, TypeError),
    ("3", TypeError),
    (True, TypeError),
    (None, TypeError),
    (0, ValueError),
    (-2, ValueError),
]
BAD_INTS_OR_NONE = [(v, e) for v, e in BAD_INTS if v is not None]  # for arguments where None is valid
BAD_SEEDS = [(v, e) for v, e in BAD_INTS_OR_NONE if v != 0]  # a seed may be 0
BAD_BOOLS = [("yes", TypeError), (1, TypeError), (None, TypeError), (np.float64(1.0), TypeError)]


# ============================================================================================ sm.tl.spatial_pca
@pytest.mark.parametrize(("value", "error"), BAD_REALS + [(-0.1, ValueError)])
def test_pca_lambda_rejected(adata, value, error):
    rejects(sm.tl.spatial_pca, adata, n_comps=3, lambda_spatial=value, error=error, names="lambda_spatial")


@pytest.mark.parametrize(("value", "error"), BAD_REALS + [(1.5, ValueError), (-0.1, ValueError)])
def test_pca_rho_rejected(adata, value, error):
    rejects(sm.tl.spatial_pca, adata, n_comps=3, rho=value, error=error, names="rho")


@pytest.mark.parametrize(("value", "error"), [*BAD_INTS, (N_GENES, ValueError), (10_000, ValueError)])
def test_pca_n_comps_rejected(adata, value, error):
    rejects(sm.tl.spatial_pca, adata, n_comps=value, error=error, names="n_comps")


@pytest.mark.parametrize("name", ["standardize", "zero_center", "copy"])
@pytest.mark.parametrize(("value", "error"), BAD_BOOLS)
def test_pca_bools_rejected(adata, name, value, error):
    rejects(sm.tl.spatial_pca, adata, n_comps=3, error=error, names=name, **{name: value})


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        ({"solver": "eig"}, ValueError, "solver"),
        ({"solver": 3}, TypeError, "solver"),
        ({"prior": "gauss"}, ValueError, "prior"),
        ({"prior": 1}, TypeError, "prior"),
        ({"key_added": ""}, ValueError, "key_added"),
        ({"key_added": 3}, TypeError, "key_added"),
        ({"connectivity_key": "nope_connectivities"}, KeyError, "nope_connectivities"),
        ({"connectivity_key": 3}, TypeError, "connectivity_key"),
        ({"layer": "counts"}, KeyError, "counts"),
        ({"layer": 3}, TypeError, "layer"),
        ({"mask_var": "nope"}, KeyError, "mask_var"),
        ({"mask_var": "highly_variable"}, KeyError, "highly_variable"),
        ({"mask_var": np.ones(3, dtype=bool)}, ValueError, "mask_var"),
        ({"mask_var": np.ones(N_GENES)}, TypeError, "mask_var"),
        ({"mask_var": np.zeros(N_GENES, dtype=bool)}, ValueError, "mask_var"),
        ({"mask_var": None, "use_highly_variable": True}, ValueError, "use_highly_variable"),
        ({"use_highly_variable": "yes"}, TypeError, "use_highly_variable"),
    ],
)
def test_pca_other_arguments_rejected(adata, kw, error, name):
    rejects(sm.tl.spatial_pca, adata, n_comps=3, error=error, names=name, **kw)


def test_pca_mask_var_column_rejected(adata):
    adata.var["score"] = np.arange(N_GENES, dtype=float)
    rejects(sm.tl.spatial_pca, adata, n_comps=3, mask_var="score", error=TypeError, names=("score", "boolean"))
    adata.var["flag"] = np.array([True, None] * (N_GENES // 2), dtype=object)
    rejects(sm.tl.spatial_pca, adata, n_comps=3, mask_var="flag", error=ValueError, names="missing")


@pytest.mark.parametrize("obj", [None, "adata", np.zeros((5, 5)), {"X": 1}])
def test_pca_not_anndata(obj):
    rejects(sm.tl.spatial_pca, obj, n_comps=3, error=TypeError, names="adata")


@pytest.mark.parametrize("n_obs", [0, 1])
def test_pca_too_few_spots(n_obs):
    a = _base()[:n_obs].copy()
    rejects(sm.tl.spatial_pca, a, n_comps=1, error=ValueError, names=("n_comps", "2 spots"))


def test_pca_zero_genes(adata):
    a = adata[:, []].copy()
    rejects(sm.tl.spatial_pca, a, n_comps=1, error=ValueError, names=("n_comps", "0 gene"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_pca_nonfinite_data(adata, bad, sparse):
    adata.X[3, 2] = bad
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    rejects(sm.tl.spatial_pca, adata, n_comps=3, error=ValueError, names=("adata.X", "NaN or inf"))


def test_pca_bad_graphs(adata):
    W = adata.obsp["spatial_connectivities"].copy()
    adata.obsp["spatial_connectivities"] = -W
    rejects(sm.tl.spatial_pca, adata, n_comps=3, error=ValueError, names=("negative", "spatial_connectivities"))
    W.data[0] = np.nan
    adata.obsp["spatial_connectivities"] = W
    rejects(sm.tl.spatial_pca, adata, n_comps=3, error=ValueError, names="NaN")


def test_pca_backed(adata, tmp_path):
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        for copy in (False, True):
            rejects(sm.tl.spatial_pca, backed, n_comps=3, copy=copy, error=ValueError, names=("backed", "to_memory"))
    finally:
        backed.file.close()


def test_pca_rejected_on_a_view_keeps_the_view(adata):
    view = adata[:30]
    rejects(sm.tl.spatial_pca, view, n_comps=3, lambda_spatial=math.nan, error=ValueError, names="lambda_spatial")
    assert view.is_view


@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (v >= 0)), st.text()))
@HYP
def test_pca_lambda_property(value):
    a = _base().copy()
    error = TypeError if isinstance(value, str) else ValueError
    rejects(sm.tl.spatial_pca, a, n_comps=2, lambda_spatial=value, error=error, names="lambda_spatial")


# ------------------------------------------------------------------------ accepted input: exact results
@given(lam=st.floats(0.0, 3.0), k=st.integers(1, 5), seed=st.integers(0, 2**16))
@HYP
def test_pca_property_exact_for_every_lambda(lam, k, seed):
    """Never refused: the result is the exact top-k eigen-decomposition; a warning iff some objective < 0."""
    a = _base().copy()
    a.X = a.X + np.random.default_rng(seed).normal(scale=0.3, size=a.X.shape)
    W = a.obsp["spatial_connectivities"]
    w, _ = brute_force(a.X, W, k, lam)
    negative = w < -1e-10 * np.abs(w).max()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sm.tl.spatial_pca(a, n_comps=k, lambda_spatial=lam)
    said = [r for r in rec if "negative objective" in str(r.message)]
    assert bool(said) == bool(negative.any())
    if negative.any():
        names = ", ".join(str(i + 1) for i in np.flatnonzero(negative))
        assert f"Spatial PCs {names} (of {k})" in str(said[0].message)
    assert a.uns["spatial_pca"]["n_negative"] == int(negative.sum())
    np.testing.assert_allclose(a.uns["spatial_pca"]["objective"] * a.n_obs, w, rtol=1e-7, atol=1e-7 * abs(w).max())


def test_pca_two_spots():
    a = _base()[:2].copy()
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    W = a.obsp["spatial_connectivities"]
    # lam * (Q11 + Q22 - 2 Q12) = 2 at lam = 0.1 (standardized ICAR, rho = 0.9): the one non-null direction of the
    # centred data has a positive objective below, a negative one above (then a null direction, objective 0, wins)
    out = sm.tl.spatial_pca(a, n_comps=1, lambda_spatial=0.03, rho=0.9, copy=True)
    assert_matches_brute_force(out, a.X, W, 1, 0.03, rho=0.9)
    assert out.uns["spatial_pca"]["objective"][0] > 0
    out = sm.tl.spatial_pca(a, n_comps=1, lambda_spatial=0.3, rho=0.9, copy=True)
    d = np.asarray(a.X[0] - a.X[1])
    assert abs(out.uns["spatial_pca"]["objective"][0]) < 1e-12 * (d @ d)
    assert abs(out.varm["spatial_PCs"][:, 0] @ d) < 1e-10 * np.linalg.norm(d)


def test_pca_constant_genes(adata):
    adata.X[:, [1, 4]] = 3.0
    adata.X[:, 7] = 0.0
    sm.tl.spatial_pca(adata, n_comps=3, lambda_spatial=0.05)
    assert_matches_brute_force(adata, adata.X, adata.obsp["spatial_connectivities"], 3, 0.05)
    np.testing.assert_allclose(adata.varm["spatial_PCs"][[1, 4, 7]], 0.0, atol=1e-10)


@pytest.mark.parametrize("kind", ["int", "bool", "float32", "csr", "csc", "csr_int", "csc_float32"])
def test_pca_dtypes_and_formats(adata, kind):
    rng = np.random.default_rng(1)
    X = rng.poisson(np.exp(adata.X / 2.0)).astype(np.int64) if "int" in kind else adata.X.copy()
    if kind == "bool":
        X = adata.X > 1.0
    if "float32" in kind:
        X = X.astype(np.float32)
    ref = np.asarray(X, dtype=np.float64)
    adata.X = sp.csr_matrix(X) if kind.startswith("csr") else sp.csc_matrix(X) if kind.startswith("csc") else X
    sm.tl.spatial_pca(adata, n_comps=3, lambda_spatial=0.05)
    rtol = 1e-5 if "float32" in kind else 1e-8
    assert_matches_brute_force(adata, ref, adata.obsp["spatial_connectivities"], 3, 0.05, rtol=rtol)
    assert adata.obsm["X_spatial_pca"].dtype == (np.float32 if "float32" in kind else np.float64)


def test_pca_view_copy_and_inplace(adata):
    view = adata[5:45]
    ref_X, ref_W = np.asarray(view.X), view.obsp["spatial_connectivities"]
    snap = snapshot(view)
    out = sm.tl.spatial_pca(view, n_comps=3, lambda_spatial=0.05, copy=True)
    assert_unchanged(view, snap)  # copy=True: a view stays a view, untouched
    assert view.is_view and not out.is_view
    assert_matches_brute_force(out, ref_X, ref_W, 3, 0.05)
    with pytest.warns(UserWarning, match="view"):
        assert sm.tl.spatial_pca(view, n_comps=3, lambda_spatial=0.05) is None  # scanpy: made actual
    assert not view.is_view
    np.testing.assert_allclose(view.obsm["X_spatial_pca"], out.obsm["X_spatial_pca"])


def test_pca_duplicate_names(adata):
    ref = sm.tl.spatial_pca(adata, n_comps=3, copy=True)
    dup = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dup.obs_names = ["s"] * dup.n_obs
        dup.var_names = ["g0", "g0"] + [f"g{i}" for i in range(2, N_GENES)]
    sm.tl.spatial_pca(dup, n_comps=3)
    np.testing.assert_allclose(dup.obsm["X_spatial_pca"], ref.obsm["X_spatial_pca"])
    np.testing.assert_allclose(dup.varm["spatial_PCs"], ref.varm["spatial_PCs"])


def test_pca_rerun_replaces_result(adata):
    sm.tl.spatial_pca(adata, n_comps=4, lambda_spatial=0.05, solver="arpack")
    adata.uns["spatial_pca"]["stale"] = 1
    sm.tl.spatial_pca(adata, n_comps=2, lambda_spatial=0.0)
    u = adata.uns["spatial_pca"]
    assert "stale" not in u and u["params"]["solver"] == "auto" and u["params"]["lambda_spatial"] == 0.0
    assert adata.obsm["X_spatial_pca"].shape == (adata.n_obs, 2) and adata.varm["spatial_PCs"].shape[1] == 2
    assert set(u["params"]) >= {"lambda_spatial", "prior", "rho", "standardize", "connectivity_key", "layer"}
    assert u["params"]["layer"] is None


# ============================================================================================ sm.tl.spatial_vae
@pytest.fixture
def counts(adata):
    adata.X = np.random.default_rng(0).poisson(np.exp(adata.X / 2.0)).astype(np.float32)
    return adata


def _vae(a, **kw):
    kw.setdefault("max_epochs", 1)
    kw.setdefault("n_hidden", 8)
    return sm.tl.spatial_vae(a, **kw)


def test_vae_device_cuda_without_cuda(counts):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rejects(_vae, counts, device="cuda", error=ValueError, names=("device", "cpu"))
    rejects(_vae, counts, device="cuda:1", error=ValueError, names="device")
    rejects(_vae, counts, device="gpu0", error=ValueError, names="device")
    rejects(_vae, counts, device=0, error=TypeError, names="device")


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"lambda_spatial": v}, e, "lambda_spatial") for v, e in BAD_REALS],
        *[({"n_latent": v}, e, "n_latent") for v, e in BAD_INTS],
        *[({"max_epochs": v}, e, "max_epochs") for v, e in BAD_INTS],
        *[({"lr": v}, e, "lr") for v, e in [*BAD_REALS, (0.0, ValueError), (-1.0, ValueError)]],
        *[({"rho": v}, e, "rho") for v, e in BAD_REALS],
        *[({"batch_size": v}, e, "batch_size") for v, e in [*BAD_INTS_OR_NONE, (1, ValueError)]],
        *[({"random_state": v}, e, "random_state") for v, e in [*BAD_SEEDS, (2**40, ValueError)]],
        ({"sp_loss_as_kl": "yes"}, TypeError, "sp_loss_as_kl"),
        ({"sp_loss_as_kl": True, "lambda_spatial": 0.0}, ValueError, "lambda_spatial"),
        ({"standardize": 1}, TypeError, "standardize"),
        ({"copy": "no"}, TypeError, "copy"),
        ({"prior": "gauss"}, ValueError, "prior"),
        ({"key_added": ""}, ValueError, "key_added"),
        ({"coords_key": "nope", "batch_size": 16}, KeyError, "nope"),
        ({"connectivity_key": "nope_connectivities"}, KeyError, "nope_connectivities"),
        ({"layer": "counts"}, KeyError, "counts"),
    ],
)
def test_vae_arguments_rejected(counts, kw, error, name):
    pytest.importorskip("scvi")
    rejects(_vae, counts, error=error, names=name, **kw)


def test_vae_data_rejected(counts, tmp_path):
    pytest.importorskip("scvi")
    neg = counts.copy()
    neg.X[0, 0] = -1.0
    rejects(_vae, neg, error=ValueError, names="negative")
    rejects(_vae, counts[:1].copy(), error=ValueError, names="2 spots")
    rejects(_vae, counts[:, []].copy(), error=ValueError, names="1 gene")
    nan = counts.copy()
    nan.X[2, 2] = np.nan
    rejects(_vae, nan, error=ValueError, names="NaN")
    rejects(_vae, "adata", error=TypeError, names="adata")
    path = tmp_path / "c.h5ad"
    counts.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        rejects(_vae, backed, error=ValueError, names="backed")
    finally:
        backed.file.close()


def test_vae_sparse_int_view_copy(counts):
    """CSR integer counts on a view with copy=True: trains (1 epoch), the view stays a view, untouched."""
    pytest.importorskip("scvi")
    counts.X = sp.csr_matrix(counts.X.astype(np.int64))
    view = counts[:40]
    snap = snapshot(view)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _vae(view, n_latent=2, copy=True, batch_size=16)
    assert_unchanged(view, snap)
    Z = out.obsm["X_spatial_vae"]
    assert Z.shape == (40, 2) and np.isfinite(Z).all()
    p = out.uns["spatial_vae"]["params"]
    assert p["device"] == "cpu" and p["batch_size"] == 16 and p["random_state"] == 0 and p["layer"] is None


# ============================================================================================ classic models
@pytest.fixture
def classic(adata):
    from smoother.losses import SpatialLoss
    from smoother.weights import SpatialWeightMatrix

    swm = SpatialWeightMatrix()
    swm.calc_weights_knn(adata.obsm["spatial"], k=4, verbose=False)
    return ad.AnnData(np.abs(adata.X)), SpatialLoss("icar", swm, rho=0.99)


def _pca(a, loss, **kw):
    from smoother.models.reduction import SpatialPCA

    kw.setdefault("n_latent", 2)
    return SpatialPCA(a, spatial_loss=loss, **kw)


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"lambda_spatial_loss": v}, e, "lambda_spatial_loss") for v, e in [*BAD_REALS, (-1.0, ValueError)]],
        *[({"n_latent": v}, e, "n_latent") for v, e in [*BAD_INTS, (N_GENES, ValueError)]],
        ({"layer": "nope"}, KeyError, "nope"),
    ],
)
def test_classic_pca_init_rejected(classic, kw, error, name):
    a, loss = classic
    rejects(_pca, a, loss, error=error, names=name, **kw)


def test_classic_pca_spatial_loss_rejected(classic):
    a, loss = classic
    small = a[:30].copy()
    rejects(_pca, small, loss, error=ValueError, names=("spatial_loss", "49 spots", "30 spots"))
    rejects(_pca, a, "icar", error=TypeError, names="spatial_loss")
    rejects(_pca, a, sp.identity(30, format="csr"), error=ValueError, names=("spatial_loss", "30 spots"))
    rejects(_pca, a, np.zeros((49, 3)), error=ValueError, names=("spatial_loss", "square"))
    rejects(_pca, np.zeros((49, N_GENES)), loss, error=TypeError, names="adata")
    # the loaded data changed after construction: reported by reduce(), before any solve
    model = _pca(a, loss, n_latent=2)
    model._data = model._data[:30]
    rejects(model.reduce, error=ValueError, names=("spatial_loss", "49 spots", "30 spots"))


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"lr": v}, e, "lr") for v, e in [*BAD_REALS, (0.0, ValueError)]],
        *[({"tol": v}, e, "tol") for v, e in [*BAD_REALS, (-1e-3, ValueError)]],
        *[({"max_epochs": v}, e, "max_epochs") for v, e in BAD_INTS],
        *[({"patience": v}, e, "patience") for v, e in BAD_INTS if v != 0],
        ({"method": "newton"}, ValueError, "method"),
        ({"method": 1}, TypeError, "method"),
        ({"verbose": "yes"}, TypeError, "verbose"),
        ({"quite": 1}, TypeError, "quite"),
        ({"init_with_svd": None}, TypeError, "init_with_svd"),
    ],
)
def test_classic_pca_reduce_rejected(classic, kw, error, name):
    a, loss = classic
    model = _pca(a, loss, n_latent=2)
    rejects(model.reduce, error=error, names=name, **kw)


def test_classic_pca_never_refuses_and_sparse_csc(classic, adata):
    """A lambda beyond every bound: the exact top-k of the classic (uncentred) objective, as brute force."""
    a, loss = classic
    Q = loss.get_precision(0).toarray()
    X = np.asarray(a.X)
    lam = 50.0
    w, V = np.linalg.eigh(X.T @ (np.eye(X.shape[0]) - lam * Q) @ X)
    assert (w[::-1][:3] < 0).any()
    model = _pca(ad.AnnData(sp.csc_matrix(X)), loss, n_latent=3, lambda_spatial_loss=lam)
    model.reduce(quiet=True)
    U = model.U.detach().numpy()
    np.testing.assert_allclose(np.abs(U.T @ V[:, ::-1][:, :3]), np.eye(3), atol=1e-6)


def _ae(a, loss, **kw):
    from smoother.models.reduction import SpatialAutoEncoder

    return SpatialAutoEncoder(a, spatial_loss=loss, **kw)


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"lambda_spatial_loss": v}, e, "lambda_spatial_loss") for v, e in BAD_REALS],
        *[({"lambda_orth_loss": v}, e, "lambda_orth_loss") for v, e in BAD_REALS],
        *[({"n_latent": v}, e, "n_latent") for v, e in BAD_INTS],
        *[({"n_hidden": v}, e, "n_hidden") for v, e in BAD_INTS],
        *[({"n_layers": v}, e, "n_layers") for v, e in BAD_INTS],
        *[({"dropout_rate": v}, e, "dropout_rate") for v, e in [*BAD_REALS, (1.0, ValueError), (-0.1, ValueError)]],
        ({"recon_loss_mode": "l1"}, ValueError, "recon_loss_mode"),
        ({"random_state": -1}, ValueError, "random_state"),
        ({"use_batch_norm": "yes"}, TypeError, "use_batch_norm"),
        ({"activation_fn": "relu"}, TypeError, "activation_fn"),
    ],
)
def test_classic_autoencoder_init_rejected(classic, kw, error, name):
    a, loss = classic
    rejects(_ae, a, loss, error=error, names=name, **kw)


def test_classic_autoencoder_poisson_needs_counts(classic):
    a, loss = classic
    neg = a.copy()
    neg.X[0, 0] = -1.0
    rejects(_ae, neg, loss, error=ValueError, names=("recon_loss_mode", "non-negative"))
    _ae(neg, loss, recon_loss_mode="mse")  # mse accepts any real data
    rejects(_ae, a[:30].copy(), loss, error=ValueError, names=("spatial_loss", "49 spots", "30 spots"))


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        ({"optimizer": "LBFGS"}, ValueError, "optimizer"),
        ({"optimizer": None}, TypeError, "optimizer"),
        *[({"lr": v}, e, "lr") for v, e in [*BAD_REALS, (0.0, ValueError)]],
        *[({"tol": v}, e, "tol") for v, e in BAD_REALS],
        *[({"max_epochs": v}, e, "max_epochs") for v, e in BAD_INTS],
        *[({"patience": v}, e, "patience") for v, e in BAD_INTS if v != 0],
        ({"clear_logs": "no"}, TypeError, "clear_logs"),
    ],
)
def test_classic_autoencoder_reduce_rejected(classic, kw, error, name):
    a, loss = classic
    model = _ae(a, loss, n_latent=2, n_hidden=8)
    rejects(model.reduce, error=error, names=name, **kw)
    assert model.dr_logs["total_loss"] == []


@pytest.fixture
def vae_model(classic):
    pytest.importorskip("scvi")
    from smoother.models.reduction import SpatialVAE

    a, loss = classic
    a = a.copy()
    a.X = np.round(a.X * 3).astype(np.float32)
    a.obsm["spatial"] = _base().obsm["spatial"]
    SpatialVAE.setup_anndata(a)
    return a, loss, SpatialVAE


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"lambda_spatial_loss": v}, e, "lambda_spatial_loss") for v, e in BAD_REALS],
        ({"sp_loss_as_kl": "yes"}, TypeError, "sp_loss_as_kl"),
        ({"sp_loss_as_kl": True, "lambda_spatial_loss": 0.0}, ValueError, "sp_loss_as_kl"),
        ({"spatial_loss": "icar"}, TypeError, "spatial_loss"),
    ],
)
def test_classic_vae_init_rejected(vae_model, kw, error, name):
    a, loss, cls = vae_model
    kw = {"spatial_loss": loss, **kw}
    rejects(cls, a, error=error, names=name, **kw)


def test_classic_vae_size_mismatch(vae_model):
    a, loss, cls = vae_model
    small = a[:30].copy()
    cls.setup_anndata(small)
    rejects(cls, small, spatial_loss=loss, error=ValueError, names=("spatial_loss", "49 spots", "30 spots"))


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        *[({"max_epochs": v}, e, "max_epochs") for v, e in BAD_INTS],
        *[({"lr": v}, e, "lr") for v, e in [*BAD_REALS, (-0.1, ValueError)]],
        *[({"batch_size": v}, e, "batch_size") for v, e in [*BAD_INTS_OR_NONE, (1, ValueError)]],
        *[({"random_state": v}, e, "random_state") for v, e in BAD_SEEDS],
        ({"accelerator": "tpu"}, ValueError, "accelerator"),
        ({"accelerator": 0}, TypeError, "accelerator"),
        ({"batch_size": 16, "coords_key": "nope"}, KeyError, "nope"),
        ({"early_stopping": True}, ValueError, "Early stopping"),
    ],
)
def test_classic_vae_train_rejected(vae_model, kw, error, name):
    a, loss, cls = vae_model
    model = cls(a, spatial_loss=loss, n_latent=2, n_hidden=8)
    rejects(model.train, error=error, names=name, adatas=(a,), **kw)
    assert not model.is_trained


def test_classic_vae_gpu_without_cuda(vae_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    a, loss, cls = vae_model
    model = cls(a, spatial_loss=loss, n_latent=2, n_hidden=8)
    for acc in ("gpu", "cuda"):
        rejects(model.train, accelerator=acc, error=ValueError, names=("accelerator", "cpu"), adatas=(a,))
