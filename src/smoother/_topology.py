"""Topological loss (classic ``smoother.losses.TopLoss``), computed without ``topologylayer``.

The persistence pairs come from :mod:`smoother._core.persistence` (exact, on a detached float64 CPU copy); the
loss gathers the paired values from the input tensor, so gradients flow on the input's device and dtype.
See ``spec/toploss.md`` for the mathematics.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from ._core.persistence import superlevel_persistence
from ._validation import as_float_array

__all__ = ["Barcode", "LevelSetLayer2D", "PartialSumBarcodeLengths", "TopLoss"]


class Barcode(NamedTuple):
    """Finite persistence pairs of one image and the image values they index.

    Attributes
    ----------
    pairs
        ``{k: (n_bars, 2) int64 array}`` of flat vertex indices ``[birth_vertex, death_vertex]`` (zero-length
        bars dropped).
    values
        The image flattened in C order, a tensor that carries the gradient.
    """

    pairs: dict[int, np.ndarray]
    values: torch.Tensor


class LevelSetLayer2D:
    """Superlevel-set persistence of a 2D image on the Freudenthal triangulation (the role of ``pdfn``).

    Parameters
    ----------
    size
        Image shape ``(dim_x, dim_y)``.
    sublevel
        Only ``False`` (superlevel sets) is supported, as in the classic ``TopLoss``.
    """

    def __init__(self, size: tuple[int, int], sublevel: bool = False) -> None:
        if sublevel:
            msg = "Only superlevel filtrations (`sublevel=False`) are supported; negate the image for sublevel."
            raise ValueError(msg)
        self.size = (int(size[0]), int(size[1]))
        self.sublevel = False

    def __call__(self, image: torch.Tensor, dims: tuple[int, ...] = (0, 1)) -> Barcode:
        """Persistence pairs of ``image`` (shape ``size``); the values keep the autograd graph."""
        if tuple(image.shape) != self.size:
            msg = f"Expected an image of shape {self.size}, found {tuple(image.shape)}."
            raise ValueError(msg)
        pairs = superlevel_persistence(image.detach(), dims)
        return Barcode(pairs, image.reshape(-1))

    def __repr__(self) -> str:
        return f"LevelSetLayer2D(size={self.size}, sublevel=False)"


class PartialSumBarcodeLengths:
    """Sum of the finite dimension-``dim`` bar lengths except the ``skip`` longest (the role of ``topfn``).

    .. math:: \\mathrm{PSBL}_{k,s}(F) = \\sum_{i > s} (b_{(i)} - d_{(i)}),

    where :math:`(b_{(i)}, d_{(i)})` are the finite dimension-:math:`k` bars sorted by decreasing length. The
    essential H0 bar and zero-length bars contribute nothing; the gradient is :math:`+1` on each counted bar's
    birth vertex and :math:`-1` on its death vertex.
    """

    def __init__(self, dim: int, skip: int = 0) -> None:
        self.dim = _check_betti_k(dim)
        self.skip = _check_skip(skip, f"skip of dimension {dim}")

    def select(self, pairs: dict[int, np.ndarray], flat: np.ndarray) -> np.ndarray:
        """The counted pairs: ``(n, 2)`` vertex indices of all finite bars of length > 0 but the ``skip`` longest.

        ``flat`` holds the image values (flattened, C order). Ties in length are broken by bar order.
        """
        p = pairs[self.dim]
        p = p[flat[p[:, 0]] > flat[p[:, 1]]]
        if len(p) <= self.skip:
            return p[:0]
        lengths = flat[p[:, 0]] - flat[p[:, 1]]
        return p[np.argsort(-lengths, kind="stable")[self.skip :]]

    def __call__(self, barcode: Barcode) -> torch.Tensor:
        values = barcode.values
        counted = self.select(barcode.pairs, values.detach().cpu().double().numpy())
        if len(counted) == 0:
            return values.new_zeros(())
        idx = torch.as_tensor(counted, device=values.device)
        return (values[idx[:, 0]] - values[idx[:, 1]]).sum()

    def __repr__(self) -> str:
        return f"PartialSumBarcodeLengths(dim={self.dim}, skip={self.skip})"


_NUMPY_DTYPES = (torch.float64, torch.float32, torch.float16)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_betti_k(k: Any) -> int:
    if not _is_int(k) or int(k) not in (0, 1):
        msg = (
            f"Betti number dimension must be 0 (connected components) or 1 (holes) on a 2D grid, found {k!r}. "
            "Use e.g. `betti_priors={0: {0: 1, 1: 0}}`."
        )
        raise ValueError(msg)
    return int(k)


def _check_skip(s: Any, what: str) -> int:
    if not _is_int(s) or int(s) < 0:
        msg = f"The expected Betti number ({what}) must be a non-negative integer, found {s!r}."
        raise ValueError(msg)
    return int(s)


def _check_coords_xy(coords_xy: Any) -> np.ndarray:
    arr = as_float_array(coords_xy, "coords_xy", expected="a numeric array of shape (num_spot, 2)")
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        msg = f"Expected `coords_xy` of shape (num_spot, 2), found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all() or np.any(arr != np.round(arr)) or arr.min() < 0:
        msg = (
            "`coords_xy` must hold non-negative integer grid indices (row x, column y). Map spot positions or "
            "Visium array coordinates to a grid with `smoother.utils.coords_to_grid(coords)`."
        )
        raise ValueError(msg)
    ints = arr.astype(np.int64)
    dim_y = int(ints[:, 1].max()) + 1
    keys = ints[:, 0] * dim_y + ints[:, 1]
    uniq, counts = np.unique(keys, return_counts=True)
    if counts.max() > 1:
        dup = uniq[counts > 1][0]
        msg = (
            f"{int((counts > 1).sum())} grid cell(s) of `coords_xy` hold more than one spot, e.g. "
            f"({dup // dim_y}, {dup % dim_y}); each spot needs its own cell (see `coords_to_grid`)."
        )
        raise ValueError(msg)
    return ints


class TopLoss(torch.nn.Module):
    """Penalty on a spatial variable for having more connected regions (or holes) than expected.

    Use it when the topology of a map is known in advance, e.g. a cell type that forms one connected region,
    or a layer without holes: add it to a fit's objective (``sm.tl.deconvolve(top_loss=...)``, or any torch
    loss) next to the data term. It acts on a spatial variable of shape ``num_group x num_spot`` (e.g.
    cell-type proportions, one row per type) on a grid.

    For each group :math:`g` with a prior, the coefficients are placed on the grid given by ``coords_xy``
    (unobserved cells get the overall minimum), and the superlevel persistence of that image on the
    Freudenthal triangulation is computed exactly. The loss penalizes every topological feature beyond the
    expected number:

    .. math::
        L(\\beta) = \\frac{1}{\\sqrt{n}\\,|G|} \\sum_{g \\in G} \\sum_{k \\in P_g}
        \\mathrm{PSBL}_{k,\\, P_g[k]}(F_g),

    where :math:`n` is the number of spots, :math:`G` the groups with priors, :math:`P_g = ` ``betti_priors[g]``
    and :math:`\\mathrm{PSBL}_{k,s}` the sum of the finite dimension-:math:`k` bar lengths except the
    :math:`s` longest. The component born at the global maximum never dies and is never counted, so
    ``{0: 0}`` asks for one connected region and ``{0: s}`` tolerates ``s`` extra components; ``{1: 0}`` asks
    for no holes and ``{1: s}`` tolerates ``s``. Bars of zero length (ties) carry no gradient.

    The gradient of each counted bar is :math:`+1` at the spot holding its birth value and :math:`-1` at the
    spot holding its death value (scaled by the normalization); an unobserved cell passes its share to the
    spot holding the minimum. So the loss lowers spurious peaks *and* raises the saddles joining them to the
    main region; pair it with a data term (and a spatial prior) that resists both.

    Parameters
    ----------
    betti_priors
        ``{group_id: {betti_k: expected_count}}`` with ``group_id`` a row of ``coefs``, ``betti_k`` in
        ``{0, 1}`` and a non-negative integer count. ``None`` switches the loss off (it returns 0).
    coords_xy
        ``(num_spot, 2)`` non-negative integer grid indices (row x, column y) of a 4-connected grid. Visium
        array coordinates (hex offsets) leave half of the cells empty: map them first with
        :func:`smoother.utils.coords_to_grid`.

    Attributes
    ----------
    betti_priors
        The priors, with validated integer keys and values (or ``None``).
    coords_xy
        ``(num_spot, 2)`` int64 grid indices.
    pdfn
        :class:`LevelSetLayer2D` of the grid (``None`` when ``betti_priors`` is ``None``).
    topfn
        ``{group_id: {betti_k: PartialSumBarcodeLengths(dim=betti_k, skip=expected_count)}}``.

    Examples
    --------
    Two bumps on a 10 x 10 grid: asking for one connected region penalizes the second bump (its gradient
    touches only the spots holding its peak and its saddle); tolerating one extra region costs nothing.

    >>> import numpy as np, torch
    >>> from smoother.losses import TopLoss
    >>> rows, cols = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    >>> coords = np.column_stack([rows.ravel(), cols.ravel()])
    >>> bumps = np.exp(-((rows - 2) ** 2 + (cols - 2) ** 2) / 4) + np.exp(-((rows - 7) ** 2 + (cols - 7) ** 2) / 4)
    >>> x = torch.tensor(bumps.reshape(1, -1), requires_grad=True)
    >>> loss = TopLoss({0: {0: 0}}, coords)(x)
    >>> loss.backward()
    >>> round(loss.item(), 4), int((x.grad != 0).sum())
    (0.0854, 2)
    >>> TopLoss({0: {0: 1}}, coords)(x).item()
    0.0
    """

    def __init__(self, betti_priors: dict | None, coords_xy: Any) -> None:
        super().__init__()
        self.coords_xy = _check_coords_xy(coords_xy)
        self._num_spot = int(self.coords_xy.shape[0])
        self._dim_x, self._dim_y = (int(v) + 1 for v in self.coords_xy.max(axis=0))
        self._flat_idx = self.coords_xy[:, 0] * self._dim_y + self.coords_xy[:, 1]
        self._spot_of_cell = np.full(self._dim_x * self._dim_y, -1, dtype=np.int64)
        self._spot_of_cell[self._flat_idx] = np.arange(self._num_spot)
        self.pdfn: LevelSetLayer2D | None = None
        self.topfn: dict[int, dict[int, PartialSumBarcodeLengths]] = {}
        self.betti_priors = self._check_priors(betti_priors)
        if self.betti_priors is None:
            return
        empty = 1.0 - self._num_spot / float(self._dim_x * self._dim_y)
        if empty >= 0.5:
            warnings.warn(
                f"`coords_xy` leaves {empty:.0%} of the {self._dim_x} x {self._dim_y} grid empty; empty cells are "
                "padded with the minimum and can dominate the loss. If these are Visium array coordinates, map "
                "them with `smoother.utils.coords_to_grid(coords)`.",
                UserWarning,
                stacklevel=2,
            )
        self.pdfn = LevelSetLayer2D(size=(self._dim_x, self._dim_y), sublevel=False)
        self.topfn = {
            g: {k: PartialSumBarcodeLengths(dim=k, skip=s) for k, s in prior.items()}
            for g, prior in self.betti_priors.items()
        }

    @staticmethod
    def _check_priors(betti_priors: Any) -> dict[int, dict[int, int]] | None:
        if betti_priors is None:
            return None
        if not isinstance(betti_priors, dict):
            msg = f"Expected `betti_priors` to be a dict {{group_id: {{betti_k: count}}}}, found {type(betti_priors)}."
            raise TypeError(msg)
        out: dict[int, dict[int, int]] = {}
        for g, prior in betti_priors.items():
            if not _is_int(g) or int(g) < 0:
                msg = f"Group ids in `betti_priors` must be non-negative integers (rows of coefs), found {g!r}."
                raise ValueError(msg)
            if not isinstance(prior, dict):
                msg = f"`betti_priors[{g!r}]` must be a dict {{betti_k: count}}, found {type(prior)}."
                raise TypeError(msg)
            out[int(g)] = {_check_betti_k(k): _check_skip(s, f"betti_priors[{g}][{k}]") for k, s in prior.items()}
        return out

    def reshape_coefs(self, beta: Any, pad_value: float | torch.Tensor | None = None) -> torch.Tensor:
        """Place coefficients on the grid: ``num_group x num_spot`` -> ``dim_x x dim_y x num_group``.

        Parameters
        ----------
        beta
            Coefficients, ``num_group x num_spot`` (tensor or array).
        pad_value
            Value at unobserved cells; default ``beta.min()`` as a tensor, so its gradient reaches the spot
            holding the minimum.

        Returns
        -------
        Tensor of shape ``(dim_x, dim_y, num_group)`` on ``beta``'s device and dtype.
        """
        beta = self._check_coefs(beta)
        num_group = beta.shape[0]
        if pad_value is None:
            pad_value = beta.min()
        pad = torch.as_tensor(pad_value, dtype=beta.dtype, device=beta.device)
        ncell = self._dim_x * self._dim_y
        idx = torch.as_tensor(self._flat_idx, device=beta.device)
        out = pad.expand(ncell, num_group).clone()
        out[idx] = beta.T
        return out.reshape(self._dim_x, self._dim_y, num_group)

    def _check_coefs(self, coefs: Any) -> torch.Tensor:
        if not torch.is_tensor(coefs):
            coefs = torch.as_tensor(np.asarray(coefs, dtype=np.float64))
        if coefs.ndim != 2 or coefs.shape[1] != self._num_spot:
            msg = f"Expected coefs of shape (num_group, {self._num_spot}), found {tuple(coefs.shape)}."
            raise ValueError(msg)
        if not coefs.is_floating_point():
            coefs = coefs.double()
        return coefs

    def forward(self, coefs: torch.Tensor) -> torch.Tensor:
        """Topological loss of ``coefs`` (``num_group x num_spot``); a scalar tensor (0 without priors).

        Same value and gradient as ``sum_g sum_k topfn[g][k](pdfn(reshape_coefs(coefs)[:, :, g]))`` divided by
        ``sqrt(num_spot) * len(betti_priors)``, computed without building the padded grid tensor: the counted
        birth and death values are gathered from ``coefs`` directly (or from the pad value ``coefs.min()``).
        """
        coefs = self._check_coefs(coefs)
        if not self.betti_priors:
            return coefs.new_zeros(())
        num_group = coefs.shape[0]
        bad = [g for g in self.betti_priors if g >= num_group]
        if bad:
            msg = (
                f"`betti_priors` names group(s) {bad}, but coefs has only {num_group} rows (groups 0..{num_group - 1})."
            )
            raise ValueError(msg)
        groups = sorted(self.topfn)
        # one detached float64 CPU copy (advanced indexing of the tensor itself is slow on a busy machine)
        det = coefs.detach().cpu()
        det = det.numpy() if det.dtype in _NUMPY_DTYPES else det.double().numpy()
        if not np.isfinite(det).all():
            msg = "coefs contain NaN or inf; the topological loss needs finite values."
            raise ValueError(msg)
        beta = det[groups].astype(np.float64)
        ncell = self._dim_x * self._dim_y
        image = np.full(ncell, float(det.min()) if ncell > self._num_spot else 0.0)
        rows, births, deaths = [], [], []
        for gi, g in enumerate(groups):
            fns = self.topfn[g]
            image[self._flat_idx] = beta[gi]
            pairs = superlevel_persistence(image.reshape(self._dim_x, self._dim_y), tuple(sorted(fns)))
            for fn in fns.values():
                counted = fn.select(pairs, image)
                rows.append(np.full(len(counted), g, dtype=np.int64))
                births.append(counted[:, 0])
                deaths.append(counted[:, 1])
        rows_np = np.concatenate(rows)
        n_bar = len(rows_np)
        if n_bar == 0:
            return coefs.reshape(-1)[:0].sum()  # zero, connected to coefs
        # net weight of every gathered value: +1 per counted birth, -1 per counted death
        cells = np.concatenate(births + deaths)
        weight = np.concatenate([np.ones(n_bar), -np.ones(n_bar)])
        spot = self._spot_of_cell[cells]
        obs = spot >= 0
        flat_pos = np.concatenate([rows_np, rows_np])[obs] * self._num_spot + spot[obs]
        pos_u, inv = np.unique(flat_pos, return_inverse=True)
        w_u = np.bincount(inv.ravel(), weights=weight[obs], minlength=len(pos_u))
        vals = coefs.reshape(-1).index_select(0, torch.as_tensor(pos_u, device=coefs.device))
        loss = torch.dot(vals, torch.as_tensor(w_u, dtype=coefs.dtype, device=coefs.device))
        w_pad = float(weight[~obs].sum())
        if w_pad != 0.0:  # unobserved cells carry the pad value coefs.min(): its gradient reaches the argmin spot
            loss = loss + w_pad * coefs.min()
        return loss / (np.sqrt(self._num_spot) * len(self.betti_priors))

    def extra_repr(self) -> str:
        return f"betti_priors={self.betti_priors}, grid=({self._dim_x}, {self._dim_y}), num_spot={self._num_spot}"
