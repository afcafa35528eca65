"""TopLoss: exact value (vs gudhi), gradients (vs finite differences), padding, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoother.losses import TopLoss

gudhi = pytest.importorskip("gudhi")


def _load_oracle():
    """gudhi oracle from test_persistence.py (loaded by path: pytest runs with --import-mode=importlib)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_toploss_oracle", Path(__file__).with_name("test_persistence.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.gudhi_bars


gudhi_bars = _load_oracle()


def grid_xy(nx, ny):
    return np.argwhere(np.ones((nx, ny), dtype=bool))


def reference_loss(beta, coords_xy, priors):
    """The spec's loss from gudhi barcodes on the padded images (numpy, no gradient)."""
    beta = np.asarray(beta, dtype=float)
    dx, dy = coords_xy.max(0) + 1
    total = 0.0
    for g, prior in priors.items():
        img = np.full((dx, dy), beta.min())
        img[coords_xy[:, 0], coords_xy[:, 1]] = beta[g]
        bars = gudhi_bars(img)
        for k, skip in prior.items():
            lengths = np.sort(bars[k][:, 0] - bars[k][:, 1])[::-1]
            total += lengths[skip:].sum()
    return total / (np.sqrt(coords_xy.shape[0]) * len(priors))


def test_spec_worked_example_value_and_gradient():
    F = np.array([[0, 0, 0, 0, 0], [0, 4, 4, 4, 0], [0, 4, 1, 2, 0], [0, 4, 4, 4, 0], [0, 0, 0, 0, 0]], float)
    xy = grid_xy(5, 5)
    beta = torch.tensor(F.ravel()[None, :], requires_grad=True)
    for skip, expected in [(0, 1.0), (1, 0.0)]:
        tl = TopLoss({0: {1: skip}}, xy)
        loss = tl(beta)
        assert loss.item() == pytest.approx(expected / 5.0)
    tl = TopLoss({0: {0: 1, 1: 0}}, xy)
    loss = tl(beta)
    loss.backward()
    g = beta.grad.reshape(5, 5).numpy()
    expected = np.zeros((5, 5))
    expected[2, 3], expected[2, 2] = 0.2, -0.2  # +1 on the gate (birth 2), -1 on the pit (death 1), / sqrt(25)
    np.testing.assert_allclose(g, expected)


@pytest.mark.filterwarnings("ignore:`coords_xy` leaves")
@pytest.mark.parametrize("seed", range(3))
def test_value_equals_gudhi_reference_many_groups_nonsquare_with_gaps(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        nx, ny = rng.integers(1, 9, size=2)
        xy = grid_xy(nx, ny)
        keep = rng.random(len(xy)) < 0.8
        keep[rng.integers(len(xy))] = True
        xy = xy[keep]
        n_group = int(rng.integers(1, 4))
        beta = rng.random((n_group, len(xy)))
        if rng.random() < 0.5:
            beta = np.round(beta * 3)  # ties
        priors = {
            int(g): {int(k): int(rng.integers(0, 3)) for k in rng.choice(2, rng.integers(1, 3), replace=False)}
            for g in rng.choice(n_group, rng.integers(1, n_group + 1), replace=False)
        }
        tl = TopLoss(priors, xy)
        got = tl(torch.tensor(beta)).item()
        assert got == pytest.approx(reference_loss(beta, xy, priors), abs=1e-12)


def central_fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


@pytest.mark.parametrize("shape", [(4, 6), (1, 7), (7, 1), (5, 5)])
def test_gradients_equal_finite_differences_every_group(shape):
    rng = np.random.default_rng(sum(shape))
    xy = grid_xy(*shape)
    if len(xy) > 5:
        xy = xy[rng.permutation(len(xy))[: len(xy) - 2]]  # two unobserved cells, padded with the minimum
    beta = rng.random((3, len(xy)))
    priors = {0: {0: 1, 1: 0}, 1: {0: 0}, 2: {1: 0, 0: 2}}
    tl = TopLoss(priors, xy)
    t = torch.tensor(beta, requires_grad=True)
    tl(t).backward()
    fd = central_fd(lambda b: tl(torch.tensor(b)).item(), beta)
    np.testing.assert_allclose(t.grad.numpy(), fd, atol=1e-6)
    assert np.abs(fd).sum() > 0  # the test is not vacuous


def test_float32_input_keeps_dtype_and_matches():
    rng = np.random.default_rng(5)
    xy = grid_xy(6, 8)
    beta = rng.random((2, len(xy)))
    tl = TopLoss({0: {0: 1}, 1: {1: 0}}, xy)
    t32 = torch.tensor(beta, dtype=torch.float32, requires_grad=True)
    loss = tl(t32)
    assert loss.dtype == torch.float32
    loss.backward()
    assert t32.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_loss(beta.astype(np.float32), xy, tl.betti_priors), rel=1e-5)


def test_padding_gradient_reaches_argmin_spot():
    # one row: [3, (empty), 4, 0.5]; the bar born at 3 dies at the empty cell, whose value is beta.min() = 0.5
    xy = np.array([[0, 0], [0, 2], [0, 3]])
    beta = torch.tensor([[3.0, 4.0, 0.5]], requires_grad=True)
    tl = TopLoss({0: {0: 0}}, xy)
    loss = tl(beta)
    assert loss.item() == pytest.approx(2.5 / np.sqrt(3))
    loss.backward()
    np.testing.assert_allclose(beta.grad.numpy(), [[1 / np.sqrt(3), 0.0, -1 / np.sqrt(3)]])
    # pad with the minimum over ALL groups: the argmin may sit in another group's row
    beta2 = torch.tensor([[3.0, 4.0, 0.5], [1.0, 1.0, 0.1]], requires_grad=True)
    tl(beta2).backward()
    np.testing.assert_allclose(beta2.grad.numpy(), [[1 / np.sqrt(3), 0, 0], [0, 0, -1 / np.sqrt(3)]])
    # reshape_coefs pads with the same tensor
    grid = tl.reshape_coefs(beta2)
    assert grid.shape == (1, 4, 2)
    assert grid[0, 1, 0].item() == pytest.approx(0.1)
    np.testing.assert_allclose(tl.reshape_coefs(beta2, pad_value=-7.0)[0, 1].detach().numpy(), [-7.0, -7.0])


def test_zero_length_bars_give_no_gradient():
    # [[1, 0, 1, 1, 2]]: the cell at index 2 is born at 1 and dies at 1 (index 3): a zero-length pair
    xy = grid_xy(1, 5)
    beta = torch.tensor([[1.0, 0.0, 1.0, 1.0, 2.0]], requires_grad=True)
    tl = TopLoss({0: {0: 0}}, xy)
    loss = tl(beta)
    assert loss.item() == pytest.approx(1.0 / np.sqrt(5))
    loss.backward()
    np.testing.assert_allclose(beta.grad.numpy(), [[1, -1, 0, 0, 0]] / np.sqrt(5))
    # a constant map has no bar at all
    flat = torch.ones(1, 5, requires_grad=True)
    out = TopLoss({0: {0: 0, 1: 0}}, xy)(flat)
    out.backward()
    assert out.item() == 0.0 and flat.grad is not None and flat.grad.abs().sum() == 0


def test_groups_have_independent_gradients():
    # the published layer shared one object across groups; here group 0's gradient is its own
    rng = np.random.default_rng(11)
    xy = grid_xy(5, 6)
    beta = rng.random((2, 30))
    t = torch.tensor(beta, requires_grad=True)
    TopLoss({0: {0: 1}, 1: {0: 1}}, xy)(t).backward()
    t0 = torch.tensor(beta[:1], requires_grad=True)
    t1 = torch.tensor(beta[1:], requires_grad=True)
    # pad values differ when the rows are split, but the grid is full so padding plays no role
    TopLoss({0: {0: 1}}, xy)(t0).backward()
    TopLoss({0: {0: 1}}, xy)(t1).backward()
    np.testing.assert_allclose(t.grad[0].numpy(), t0.grad[0].numpy() / 2)
    np.testing.assert_allclose(t.grad[1].numpy(), t1.grad[0].numpy() / 2)


def test_single_row_and_single_column_grids():
    vals = np.array([3.0, 1.0, 2.0, 0.0, 5.0])
    for xy in (grid_xy(1, 5), grid_xy(5, 1)):
        loss = TopLoss({0: {0: 1}}, xy)(torch.tensor(vals[None, :]))
        # maxima 5 (essential), 3 dies at 0 (longest, skipped), 2 dies at 1
        assert loss.item() == pytest.approx(1.0 / np.sqrt(5))


def test_nonsquare_grid_orientation():
    # 2 x 5 grid: a bump at (0, 1) and one at (1, 3); row-major placement matters
    xy = grid_xy(2, 5)
    img = np.zeros((2, 5))
    img[0, 1], img[1, 3] = 2.0, 1.0
    loss = TopLoss({0: {0: 1}}, xy)(torch.tensor(img.ravel()[None, :])).item()
    assert loss == 0.0  # 2 is the essential bar; (1, 0) is the one finite bar, skipped
    loss0 = TopLoss({0: {0: 0}}, xy)(torch.tensor(img.ravel()[None, :])).item()
    assert loss0 == pytest.approx(1.0 / np.sqrt(10))
    # transposed coordinates give the transposed image, same barcode
    xy_t = xy[:, ::-1].copy()
    assert TopLoss({0: {0: 0}}, xy_t)(torch.tensor(img.ravel()[None, :])).item() == pytest.approx(loss0)


def test_none_priors_give_zero_and_attributes():
    xy = grid_xy(3, 4)
    tl = TopLoss(None, xy)
    out = tl(torch.rand(2, 12))
    assert float(out) == 0.0
    assert tl.betti_priors is None and tl._num_spot == 12 and tl.pdfn is None
    tl = TopLoss({1: {0: 1, 1: 0}}, xy)
    assert tl.pdfn.size == (3, 4)
    assert tl.topfn[1][0].dim == 0 and tl.topfn[1][0].skip == 1
    assert tl.topfn[1][1].dim == 1 and tl.topfn[1][1].skip == 0
    np.testing.assert_array_equal(tl.coords_xy, xy)
    # the pdfn/topfn objects compose to the same loss as forward
    t = torch.rand(2, 12, dtype=torch.float64)
    grid = tl.reshape_coefs(t)
    manual = sum(fn(tl.pdfn(grid[:, :, 1])) for fn in tl.topfn[1].values()) / np.sqrt(12)
    assert manual.item() == pytest.approx(tl(t).item())


def test_validation_errors():
    xy = grid_xy(3, 3)
    with pytest.raises(ValueError, match="0 .*or 1"):
        TopLoss({0: {2: 0}}, xy)
    with pytest.raises(ValueError, match="non-negative integer"):
        TopLoss({0: {0: -1}}, xy)
    with pytest.raises(ValueError, match="non-negative integers"):
        TopLoss({-1: {0: 1}}, xy)
    with pytest.raises(ValueError, match="only 2 rows"):
        TopLoss({2: {0: 1}}, xy)(torch.rand(2, 9))
    with pytest.raises(ValueError, match="non-negative integer grid"):
        TopLoss({0: {0: 1}}, xy - 1)
    with pytest.raises(ValueError, match="non-negative integer grid"):
        TopLoss({0: {0: 1}}, xy + 0.5)
    with pytest.raises(ValueError, match="more than one spot"):
        TopLoss({0: {0: 1}}, np.vstack([xy, xy[:1]]))
    with pytest.raises(ValueError, match="shape"):
        TopLoss({0: {0: 1}}, xy)(torch.rand(1, 8))
    with pytest.raises(ValueError, match="NaN"):
        TopLoss({0: {0: 1}}, xy)(torch.full((1, 9), float("nan")))
    with pytest.raises(TypeError, match="dict"):
        TopLoss([0, 1], xy)


def test_checkerboard_coords_warn():
    r, c = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    keep = (r + c).ravel() % 2 == 0
    xy = np.column_stack([r.ravel(), c.ravel()])[keep]
    with pytest.warns(UserWarning, match="coords_to_grid"):
        TopLoss({0: {0: 1}}, xy)


def test_gradient_descent_removes_a_spurious_fragment():
    # a main region plus a small detached fragment; {0: 0} (no finite H0 bar: one component) removes it
    img = np.zeros((8, 8))
    img[1:5, 1:5] = 1.0
    img[6, 6] = 0.8
    xy = grid_xy(8, 8)
    t = torch.tensor(img.ravel()[None, :], requires_grad=True)
    tl = TopLoss({0: {0: 0}}, xy)
    # {0: 1} tolerates one finite bar, i.e. two components: the fragment is not penalized
    assert TopLoss({0: {0: 1}}, xy)(t).item() == 0.0
    opt = torch.optim.SGD([t], lr=0.5)
    first = tl(t).item()
    for _ in range(30):
        opt.zero_grad()
        loss = tl(t)
        loss.backward()
        opt.step()
    assert first > 0.09 and tl(t).item() < 1e-3 * first + 1e-12


@pytest.mark.filterwarnings("ignore::Warning")
def test_classic_deconvolution_with_top_loss_removes_fragments():
    NNLS = pytest.importorskip("smoother.models.deconv").NNLS
    rng = np.random.default_rng(0)
    xy = grid_xy(12, 12)
    sig = rng.gamma(2.0, 1.0, size=(40, 2))
    img = np.zeros((12, 12))
    img[2:8, 2:8] = 1.0
    img[10, 10] = img[10, 1] = 1.0  # two one-spot fragments of type 0
    props = np.stack([img.ravel(), 1.0 - img.ravel()])
    y = sig @ props + rng.normal(0, 0.3, size=(40, 144))
    tl = TopLoss({0: {0: 0}}, xy)
    values = {}
    for lam in (0.0, 5.0):
        model = NNLS()
        model.deconv(sig, y, top_loss=tl, lambda_top_loss=lam, lr=0.05, max_epochs=150, quiet=True)
        values[lam] = tl(torch.as_tensor(np.asarray(model.result.coef).T)).item()
    assert values[0.0] > 0.1
    assert values[5.0] < 0.1 * values[0.0]
