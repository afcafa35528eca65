r"""Regression-based deconvolution with spatial (and topological) losses — the classic ``smoother.models.deconv`` API.

Each factory (:func:`LinearRegression`, :func:`NNLS`, :func:`NuSVR`, :func:`DWLS`, :func:`LogNormReg`) returns a
model whose :meth:`~DeconvModel.deconv` minimizes

.. math::

    \text{model loss}(X\beta + b, Y) + \lambda_{sp}\, \text{SpatialLoss}(\beta) + \lambda_{top}\, \text{TopLoss}(\beta)

over the coefficients :math:`\beta` (``num_group x num_spot``) and a per-spot intercept :math:`b` (``bias=True``),
with ``x`` (``num_gene x num_group``) the reference signatures and ``y`` (``num_gene x num_spot``) the spatial
data. Losses are the classic ones: means over genes x spots, and the spatial loss normalized by
``beta.numel()``, so ``lambda_spatial_loss`` means the same here as in smoother-omics 1.1.0.

Solvers. With ``backend='pytorch'`` the quadratic models (LR, NNLS, DWLS) are solved to optimality by the
exact solver shared with :func:`smoother.tl.deconvolve` (accelerated projected gradient with a KKT stopping
rule), unless a topological loss or ``solver='adam'`` asks for the gradient loop; nu-SVR and log-normal
regression use the torch loop (Adam, ``lr``/``max_epochs``/``patience``/``tol``). ``backend='cvxpy'`` builds
the same convex problem in cvxpy (optional dependency, ``pip install smoother[cvxpy]``).

Input: ``x`` and ``y`` on the same scale, e.g. library-size normalized expression (not log: the models are
linear in the mixture). On AnnData, :func:`smoother.tl.deconvolve` does all of this, with a count model by
default.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from .._core import deconv as _dc
from .._settings import logger
from .._validation import (
    as_float_array,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_lambda,
    check_real,
)

__all__ = ["DWLS", "NNLS", "DeconvModel", "LinearRegression", "LogNormReg", "NuSVR"]

_BACKENDS = ("pytorch", "cvxpy")


def _to_numpy(a, name: str, shape: str) -> np.ndarray:
    arr = as_float_array(a, name, expected="a numeric 2D array or tensor", densify_sparse=True)
    if arr.ndim != 2:
        msg = f"Expected `{name}` to be 2D ({shape}), found shape {arr.shape}."
        raise ValueError(msg)
    if 0 in arr.shape:
        msg = f"Expected `{name}` ({shape}) to be non-empty, found shape {arr.shape}."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        msg = f"`{name}` contains NaN or inf values; remove or impute them first."
        raise ValueError(msg)
    return arr


def spatial_loss_precisions(spatial_loss, n_types: int):
    """Precision matrices and confidences of a classic ``SpatialLoss`` (or a plain matrix) as scipy/numpy.

    Returns ``(Q, confidences)`` with ``Q`` one matrix or a list of ``n_types`` matrices; ``(None, None)``
    when ``spatial_loss`` is not a quadratic loss (e.g. the KL prior), which the caller then evaluates in torch.
    """
    if spatial_loss is None:
        return None, 1.0
    if sp.issparse(spatial_loss) or isinstance(spatial_loss, np.ndarray):
        return spatial_loss, 1.0
    if getattr(spatial_loss, "prior", None) == "kl":
        return None, None
    conf = getattr(spatial_loss, "confidences", 1.0)
    if hasattr(conf, "detach"):
        conf = conf.detach().cpu().numpy()
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    if conf.size not in (1, n_types):
        msg = f"`spatial_loss.confidences` has {conf.size} entries, expected 1 or {n_types}."
        raise ValueError(msg)
    if hasattr(spatial_loss, "get_precision"):
        n_cov = _n_covs(spatial_loss)
        Qs = [
            sp.csr_matrix(spatial_loss.get_precision(i))
            if sp.issparse(spatial_loss.get_precision(i))
            else np.asarray(spatial_loss.get_precision(i))
            for i in range(n_cov)
        ]
        if len(Qs) not in (1, n_types):
            msg = f"`spatial_loss` holds {len(Qs)} precision matrices, expected 1 or {n_types} (one per group)."
            raise ValueError(msg)
        return (Qs[0] if len(Qs) == 1 else Qs), conf
    inv_cov = getattr(spatial_loss, "inv_cov", None)
    if inv_cov is not None:  # (n_cov, n, n) tensor, dense or sparse
        from .._validation import _torch_to_scipy

        Qs = [_torch_to_scipy(inv_cov[i]) for i in range(inv_cov.shape[0])]
        return (Qs[0] if len(Qs) == 1 else Qs), conf
    return None, None


def _n_covs(spatial_loss) -> int:
    for attr in ("n_precisions", "n_covs", "num_covs"):
        if hasattr(spatial_loss, attr):
            return int(getattr(spatial_loss, attr))
    inv_cov = getattr(spatial_loss, "inv_cov", None)
    if inv_cov is not None and hasattr(inv_cov, "shape"):
        return int(inv_cov.shape[0])
    sw = getattr(spatial_loss, "spatial_weights", None)
    return len(sw) if isinstance(sw, (list, tuple)) and sw else 1


class DeconvModel:
    """A regression deconvolution model (classic interface).

    Made by the factories :func:`LinearRegression`, :func:`NNLS`, :func:`NuSVR`, :func:`DWLS` and
    :func:`LogNormReg`; fit it with :meth:`deconv`, then read :meth:`get_props` (cell-type proportions per
    spot), :meth:`get_coefs`, :meth:`get_bias` and the losses at the solution.

    Attributes
    ----------
    model_name
        E.g. ``'nnls_torch'`` or ``'nnls_cvx'``.
    backend
        ``'pytorch'`` or ``'cvxpy'``.
    use_bias
        Whether a per-spot intercept is fitted.
    nonneg
        Whether coefficients are constrained to be non-negative.
    deconv_time
        Seconds spent in the last :meth:`deconv`.
    result
        The last fit (``coef``: spots x groups, ``bias``, ``model_loss``, ``spatial_loss``, ``top_loss``); read it
        through the ``get_*`` methods.

    Examples
    --------
    >>> import smoother as sm
    >>> from smoother.models.deconv import NNLS
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x = adata.varm["signature_truth"]  # num_gene x num_group, columns sum to 1
    >>> y = adata.X.T / 100  # num_gene x num_spot, divided by the depth
    >>> model = NNLS()
    >>> model.deconv(x, y, verbose=False)
    >>> tuple(model.get_props().shape), tuple(model.get_coefs().shape), tuple(model.get_bias().shape)
    ((200, 3), (3, 200), (200,))
    >>> model.get_props().sum(1)[:3].tolist()  # proportions sum to 1 per spot
    [1.0, 1.0, 1.0]
    """

    _model: str = "lr"

    def __init__(
        self,
        backend: str = "pytorch",
        *,
        bias: bool = True,
        nonneg: bool | None = None,
        solver: str = "auto",
        **model_kwargs,
    ) -> None:
        check_choice(backend, "backend", _BACKENDS)
        check_choice(solver, "solver", ("auto", "exact", "adam", "lbfgs"))
        self.backend = backend
        self.use_bias = check_bool(bias, "bias")
        self.nonneg = self._default_nonneg() if nonneg is None else check_bool(nonneg, "nonneg")
        self.solver = solver
        self.model_kwargs = model_kwargs
        self.model_name = f"{self._name()}_{'torch' if backend == 'pytorch' else 'cvx'}"
        self.deconv_time: float | None = None
        self.result: _dc.DeconvResult | None = None
        self.deconv_configs: dict | None = None

    def _default_nonneg(self) -> bool:
        return self._model not in ("lr", "nusvr")

    def _name(self) -> str:
        return {"lr": "linear", "nnls": "nnls", "nusvr": "svr", "dwls": "dwls", "lognorm": "lognormreg"}[self._model]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, bias={self.use_bias}, nonneg={self.nonneg})"

    # -- fitting -------------------------------------------------------------------------------------------
    def deconv(
        self,
        x,
        y,
        spatial_loss=None,
        lambda_spatial_loss: float = 0.0,
        top_loss=None,
        lambda_top_loss: float = 0.0,
        lr: float = 1e-3,
        max_epochs: int = 1000,
        patience: int = 10,
        tol: float = 1e-5,
        init_with_lr_sol: bool = True,
        verbose: bool = True,
        quiet: bool = False,
        **kwargs,
    ):
        """Deconvolve ``y`` with signatures ``x``.

        Parameters
        ----------
        x
            Signatures, ``num_gene x num_group`` (tensor or array).
        y
            Spatial data, ``num_gene x num_spot``.
        spatial_loss
            A classic ``SpatialLoss`` (or a precision matrix ``num_spot x num_spot``); ``None`` for none.
        lambda_spatial_loss
            Strength of the spatial loss.
        top_loss, lambda_top_loss
            A ``TopLoss`` (any torch module on the ``num_group x num_spot`` coefficients) and its strength.
        lr, max_epochs, patience, tol
            Gradient loop settings (torch models); for the exact solver ``max_epochs`` is not a limit (it
            stops on its KKT residual, at most ``max(max_epochs, 5000)`` iterations).
        init_with_lr_sol
            Start from the least-squares solution.
        verbose, quiet
            Log progress (info level) / log nothing.
        **kwargs
            ``device`` (torch device of the gradient loop, default ``'cpu'``; ``'cuda'`` without CUDA is an
            error before any work); cvxpy backend: ``solver`` and solver options passed to ``problem.solve``.

        Returns
        -------
        None (the fitted values are read with :meth:`get_props` etc.).

        Raises
        ------
        TypeError, ValueError
            A wrong type or value of any argument (NaN, inf or a string ``lambda_spatial_loss``, a ``spatial_loss``
            built on other spots, ...), checked before any work; the message names the argument.
        """
        # every argument is checked before any work (the classic names: lambda_spatial_loss, ...)
        t0 = time.perf_counter()
        lam = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
        lam_top = check_lambda(lambda_top_loss, "lambda_top_loss")
        lr = check_real(lr, "lr", low=0.0, low_open=True, example="1e-3")
        max_epochs = check_int(max_epochs, "max_epochs", low=1, example="1000")
        patience = check_int(patience, "patience", low=1, example="10")
        tol = check_real(tol, "tol", low=0.0, example="1e-5")
        init_with_lr_sol = check_bool(init_with_lr_sol, "init_with_lr_sol")
        verbose = check_bool(verbose, "verbose")
        quiet = check_bool(quiet, "quiet")
        kwargs = dict(kwargs)
        device = check_device(kwargs.pop("device", "cpu"))
        if self.backend == "pytorch" and kwargs:
            msg = f"deconv() got unexpected keyword argument(s) {sorted(kwargs)} (solver options: backend='cvxpy')."
            raise TypeError(msg)
        if top_loss is not None and not callable(top_loss):
            msg = f"Expected `top_loss` to be callable on the coefficients, found {type(top_loss).__name__}."
            raise TypeError(msg)
        X = _to_numpy(x, "x", "num_gene x num_group")
        Yg = _to_numpy(y, "y", "num_gene x num_spot")
        if X.shape[0] != Yg.shape[0]:
            msg = f"`x` has {X.shape[0]} genes (rows) but `y` has {Yg.shape[0]}; both must be num_gene first."
            raise ValueError(msg)
        if self._model in ("dwls", "lognorm") and Yg.min() < 0:
            msg = f"{type(self).__name__[1:]} needs non-negative `y` (count-like expression); found negative values."
            raise ValueError(msg)
        K, N = X.shape[1], Yg.shape[1]
        Q, conf = spatial_loss_precisions(spatial_loss if lam > 0 else None, K)
        for q in Q if isinstance(Q, list) else [Q]:
            if q is not None and tuple(q.shape[-2:]) != (N, N):
                msg = (
                    f"`spatial_loss` is built on {q.shape[-1]} spots but `y` has {N} spots (columns); build it on "
                    "the same spots as `y`."
                )
                raise ValueError(msg)
        if self.backend == "cvxpy" and top_loss is not None and lam_top > 0:
            msg = "The cvxpy backend does not support a topological loss; use backend='pytorch'."
            raise ValueError(msg)
        if self.backend == "cvxpy" and conf is None:
            msg = "The cvxpy backend needs a quadratic spatial loss (not the KL prior)."
            raise ValueError(msg)
        self.deconv_configs = {
            "lambda_spatial_loss": lam,
            "lambda_top_loss": lam_top,
            "lr": lr,
            "max_epochs": max_epochs,
            "patience": patience,
            "tol": tol,
        }
        Y = Yg.T  # spots x genes
        show = None if (verbose and not quiet) else False
        if self.backend == "cvxpy":
            self.result = _solve_cvxpy(
                self._model,
                X,
                Y,
                Q=Q,
                lam=lam,
                confidences=conf,
                bias=self.use_bias,
                nonneg=self.nonneg,
                verbose=verbose and not quiet,
                **self.model_kwargs,
                **kwargs,
            )
        else:
            use_top = top_loss is not None and lam_top > 0
            exact = self._model in _dc.QUADRATIC_MODELS and self.solver in ("auto", "exact") and conf is not None
            if exact and not use_top:
                self.result = _dc.deconvolve_quadratic(
                    X,
                    Y,
                    model=self._model,
                    Q=Q,
                    lam=lam,
                    confidences=conf,
                    bias=self.use_bias,
                    nonneg=self.nonneg,
                    max_weights=self.model_kwargs.get("max_weights", 8.0),
                    max_iter=max(int(max_epochs), 5000),
                    init_with_lr_sol=init_with_lr_sol,
                    show_progress=show,
                )
            else:
                z0 = b0 = None
                if init_with_lr_sol and exact:  # start the topological fit at the exact spatial optimum
                    r0 = _dc.deconvolve_quadratic(
                        X,
                        Y,
                        model=self._model,
                        Q=Q,
                        lam=lam,
                        confidences=conf,
                        bias=self.use_bias,
                        nonneg=self.nonneg,
                        show_progress=False,
                    )
                    z0, b0 = r0.coef, r0.bias
                elif not init_with_lr_sol:
                    z0 = np.zeros((N, K))
                    b0 = np.zeros(N) if self.use_bias else None
                spatial_fn = None if conf is not None or spatial_loss is None else spatial_loss
                # smooth unconstrained problems (nu-SVR with the l2 loss) converge far better with L-BFGS
                smooth = self._model == "nusvr" and not self.nonneg and not use_top and spatial_fn is None
                optimizer = "lbfgs" if self.solver == "lbfgs" or (self.solver == "auto" and smooth) else "adam"
                self.result = _dc.solve_torch(
                    X,
                    Y,
                    model=self._model,
                    Q=Q,
                    lam=lam,
                    confidences=1.0 if conf is None else conf,
                    spatial_fn=spatial_fn,
                    bias=self.use_bias,
                    nonneg=self.nonneg,
                    top_loss=top_loss if use_top else None,
                    lam_top=lam_top,
                    model_kwargs=self.model_kwargs,
                    z0=z0,
                    b0=b0,
                    optimizer=optimizer,
                    lr=1.0 if optimizer == "lbfgs" and self.solver == "auto" else lr,
                    max_epochs=max_epochs,
                    tol=tol,
                    patience=patience,
                    device=device,
                    show_progress=show,
                )
        self.deconv_time = time.perf_counter() - t0
        if not quiet:
            logger.info(
                "=== Time %.2fs. Loss: (total) %.4g, (model) %.4g, (spatial) %.4g. %s after %d iterations.",
                self.deconv_time,
                self.result.objective,
                self.result.model_loss,
                self.result.spatial_loss,
                "Converged" if self.result.converged else "Not converged",
                self.result.n_iter,
            )

    # -- results -------------------------------------------------------------------------------------------
    def _check_fitted(self) -> _dc.DeconvResult:
        if self.result is None:
            msg = "The model is not fitted yet; call `model.deconv(x, y, ...)` first."
            raise RuntimeError(msg)
        return self.result

    def _out(self, a):
        if self.backend == "pytorch":
            import torch

            return torch.as_tensor(np.asarray(a), dtype=torch.float32)
        return np.asarray(a)

    def get_props(self):
        """Proportions, ``num_spot x num_group``: coefficients clipped at 0 and normalized per spot.

        A spot whose coefficients are all 0 gets uniform proportions.
        """
        props, _ = _dc.coef_to_props(self._check_fitted().coef)
        return self._out(props)

    def get_coefs(self):
        """Raw coefficients ``num_group x num_spot`` (the classic ``beta``)."""
        return self._out(self._check_fitted().coef.T)

    def get_bias(self):
        """Per-spot intercept ``(num_spot,)`` (``None`` without bias)."""
        b = self._check_fitted().bias
        return None if b is None else self._out(b)

    def get_model_loss(self):
        """The model (reconstruction) loss at the solution."""
        return self._out(self._check_fitted().model_loss)

    def get_sp_loss(self):
        """The spatial loss at the solution, multiplied by ``lambda_spatial_loss``."""
        return self._out(self._check_fitted().spatial_loss)

    def get_top_loss(self):
        """The topological loss at the solution, multiplied by ``lambda_top_loss``."""
        return self._out(self._check_fitted().top_loss)


class _LR(DeconvModel):
    _model = "lr"


class _NNLS(DeconvModel):
    _model = "nnls"


class _NuSVR(DeconvModel):
    _model = "nusvr"

    def __init__(self, backend="pytorch", *, bias=True, C=1.0, nu=0.1, nonneg=False, loss_mode="l2", **kw):
        C = check_real(C, "C", low=0.0, low_open=True, example="1.0")
        nu = check_real(nu, "nu", low=0.0, high=1.0, low_open=True, example="0.1")
        check_choice(loss_mode, "loss_mode", ("l2", "l1"))
        super().__init__(backend, bias=bias, nonneg=nonneg, C=C, nu=nu, loss_mode=loss_mode, **kw)


class _DWLS(DeconvModel):
    _model = "dwls"

    def __init__(self, backend="pytorch", *, bias=True, nonneg=True, max_weights=8, **kw):
        max_weights = check_real(max_weights, "max_weights", low=1.0, example="8")
        super().__init__(backend, bias=bias, nonneg=nonneg, max_weights=max_weights, **kw)


class _LogNorm(DeconvModel):
    _model = "lognorm"

    def __init__(self, backend="pytorch", *, bias=True, epsilon=1, **kw):
        if backend != "pytorch":
            msg = f"LogNormReg is available with backend='pytorch' only (the problem is not convex), found {backend!r}."
            raise ValueError(msg)
        epsilon = check_real(epsilon, "epsilon", low=0.0, low_open=True, example="1")
        super().__init__(backend, bias=bias, nonneg=True, epsilon=epsilon, **kw)


def _drop_dims(kwargs: dict) -> dict:
    # the classic constructors also took dim_in / dim_out; they are set from the data at fit time
    return {k: v for k, v in kwargs.items() if k not in ("dim_in", "dim_out")}


def LinearRegression(backend: str = "pytorch", **kwargs) -> DeconvModel:  # noqa: N802
    r"""Linear regression: mean squared error, unconstrained coefficients (``bias=True``).

    The simplest model: fast and exact, but coefficients can be negative (they are clipped before proportions
    are formed). Prefer :func:`NNLS` for proportions.

    Notes
    -----
    Minimizes :math:`\mathrm{mean}((X\beta + b - Y)^2) + \lambda\, L_{sp}(\beta)` over :math:`\beta` and
    :math:`b` (module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x, y = adata.varm["signature_truth"], adata.X.T / 100  # genes x types, genes x spots (per unit depth)
    >>> truth = adata.obsm["props_truth"].to_numpy()
    >>> from smoother.models.deconv import LinearRegression
    >>> model = LinearRegression()
    >>> model.deconv(x, y, verbose=False)
    >>> round(float(np.sqrt(((model.get_props().numpy() - truth) ** 2).mean())), 2)  # RMSE of proportions
    0.07
    """
    return _LR(backend, **_drop_dims(kwargs))


def NNLS(backend: str = "pytorch", **kwargs) -> DeconvModel:  # noqa: N802
    r"""Non-negative least squares: mean squared error with coefficients >= 0 (``bias=True``).

    The usual choice for cell-type proportions. With a :class:`smoother.SpatialLoss`, neighbouring spots get
    similar proportions; the strength ``lambda_spatial_loss`` is on the scale of the model loss, which is small
    for normalized data (here 1e-3).

    Notes
    -----
    Minimizes :math:`\mathrm{mean}((X\beta + b - Y)^2) + \lambda\, L_{sp}(\beta)` subject to
    :math:`\beta \ge 0`, exactly (accelerated projected gradient with a KKT stopping rule).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x, y = adata.varm["signature_truth"], adata.X.T / 100  # genes x types, genes x spots (per unit depth)
    >>> truth = adata.obsm["props_truth"].to_numpy()
    >>> from smoother.models.deconv import NNLS
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(adata.obsm["spatial"], k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)
    >>> rmse = {}
    >>> for lam in (0.0, 1e-3):
    ...     model = NNLS()
    ...     model.deconv(x, y, spatial_loss=sp_loss, lambda_spatial_loss=lam, verbose=False)
    ...     rmse[lam] = round(float(np.sqrt(((model.get_props().numpy() - truth) ** 2).mean())), 2)
    >>> rmse  # the spatial loss brings the proportions closer to the truth
    {0.0: 0.07, 0.001: 0.05}
    """
    return _NNLS(backend, **_drop_dims(kwargs))


def NuSVR(backend: str = "pytorch", **kwargs) -> DeconvModel:  # noqa: N802
    r"""nu-SVR: :math:`C(\nu\varepsilon + \mathrm{mean}(\max(|r|-\varepsilon, 0)^2)) + \mathrm{mean}(\beta^2)/2`.

    A robust regression: residuals smaller than :math:`\varepsilon` cost nothing, so a few badly fitting genes
    matter less. Keyword arguments ``C=1.0, nu=0.1, nonneg=False, loss_mode='l2', bias=True``;
    :math:`\varepsilon \ge 0` is learned. Fitted by the torch gradient loop (``lr``, ``max_epochs``).

    Notes
    -----
    Minimizes :math:`C(\nu\varepsilon + \mathrm{mean}(\max(|r|-\varepsilon, 0)^2)) + \mathrm{mean}(\beta^2)/2
    + \lambda\, L_{sp}(\beta)` over :math:`\beta`, :math:`b` and :math:`\varepsilon \ge 0`, with residuals
    :math:`r = X\beta + b - Y` (``loss_mode='l1'``: :math:`\max(|r|-\varepsilon, 0)` unsquared).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x, y = adata.varm["signature_truth"], adata.X.T / 100  # genes x types, genes x spots (per unit depth)
    >>> truth = adata.obsm["props_truth"].to_numpy()
    >>> from smoother.models.deconv import NuSVR
    >>> model = NuSVR()
    >>> model.deconv(x, y, max_epochs=50, verbose=False)
    >>> tuple(model.get_props().shape), bool(np.sqrt(((model.get_props().numpy() - truth) ** 2).mean()) < 0.2)
    ((200, 3), True)
    """
    return _NuSVR(backend, **_drop_dims(kwargs))


def DWLS(backend: str = "pytorch", **kwargs) -> DeconvModel:  # noqa: N802
    r"""Dampened weighted least squares: NNLS in which lowly expressed genes weigh more (Tsoucas et al., 2019).

    The squared error is weighted per gene and spot by the inverse squared observed value, scaled to minimum 1
    per spot and capped at ``max_weights`` (``nonneg=True, max_weights=8``), so marker genes of rare cell types
    are not drowned by highly expressed genes.

    Notes
    -----
    Minimizes :math:`\mathrm{mean}(w \odot (X\beta + b - Y)^2) + \lambda\, L_{sp}(\beta)`, :math:`\beta \ge 0`,
    with :math:`w_{gi} = \min(m, \tilde w_{gi} / \min_{g'} \tilde w_{g'i})`,
    :math:`\tilde w_{gi} = \min(y_{gi}^{-2}, m^2)` and :math:`m` = ``max_weights`` (a zero count gets :math:`m^2`).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x, y = adata.varm["signature_truth"], adata.X.T / 100  # genes x types, genes x spots (per unit depth)
    >>> truth = adata.obsm["props_truth"].to_numpy()
    >>> from smoother.models.deconv import DWLS
    >>> model = DWLS()
    >>> model.deconv(x, y, verbose=False)
    >>> round(float(np.sqrt(((model.get_props().numpy() - truth) ** 2).mean())), 2)
    0.07
    """
    return _DWLS(backend, **_drop_dims(kwargs))


def LogNormReg(backend: str = "pytorch", **kwargs) -> DeconvModel:  # noqa: N802
    r"""Log-normal regression: mean squared error of ``log(pred + epsilon)`` vs ``log(y + epsilon)`` (pytorch only).

    Fits the mixture on the log scale, so relative (not absolute) errors count; non-negative coefficients.
    Fitted by the torch gradient loop (``lr``, ``max_epochs``).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata, ref = sm.datasets.simulate_mixture(200, n_types=3, n_genes=30, n_cells_per_type=10, depth=100)
    >>> x, y = adata.varm["signature_truth"], adata.X.T / 100  # genes x types, genes x spots (per unit depth)
    >>> truth = adata.obsm["props_truth"].to_numpy()
    >>> from smoother.models.deconv import LogNormReg
    >>> model = LogNormReg()
    >>> model.deconv(x, y, max_epochs=50, verbose=False)
    >>> tuple(model.get_props().shape), bool(np.sqrt(((model.get_props().numpy() - truth) ** 2).mean()) < 0.2)
    ((200, 3), True)
    """
    return _LogNorm(backend, **_drop_dims(kwargs))


# ------------------------------------------------------------------------------------------------------------
def _solve_cvxpy(
    model,
    X,
    Y,
    *,
    Q,
    lam,
    confidences,
    bias,
    nonneg,
    verbose=False,
    solver=None,
    C=1.0,
    nu=0.1,
    loss_mode="l2",
    max_weights=8.0,
    **solver_kwargs,
) -> _dc.DeconvResult:
    """The same objective in cvxpy (an independent reference; small problems)."""
    try:
        import cvxpy as cp
    except ImportError as e:  # pragma: no cover - depends on the environment
        msg = "backend='cvxpy' needs cvxpy: `pip install smoother[cvxpy]`."
        raise ImportError(msg) from e
    t0 = time.perf_counter()
    N, G = Y.shape
    K = X.shape[1]
    Z = cp.Variable((N, K), nonneg=bool(nonneg))
    R = Y - Z @ X.T
    if bias:
        b = cp.Variable((N, 1))
        R = R - b @ np.ones((1, G))
    if model in ("lr", "nnls"):
        ml = cp.sum_squares(R) / (G * N)
    elif model == "dwls":
        ml = cp.sum(cp.multiply(_dc.dwls_weights(Y, max_weights), cp.square(R))) / (G * N)
    elif model == "nusvr":
        eps = cp.Variable(nonneg=True)
        h = cp.pos(cp.abs(R) - eps)
        fit = cp.sum_squares(h) if loss_mode == "l2" else cp.sum(h)
        ml = C * (nu * eps + fit / (G * N)) + 0.5 * cp.sum_squares(Z) / (K * N)
    else:
        msg = f"Model {model!r} is not available with backend='cvxpy'."
        raise ValueError(msg)
    spl = 0
    if Q is not None and lam > 0:
        Qs = Q if isinstance(Q, list) else [Q] * K
        s = np.broadcast_to(np.asarray(confidences, dtype=np.float64).reshape(-1), (K,))
        terms = [
            s[k] * cp.quad_form(Z[:, k], cp.psd_wrap(sp.csr_matrix(Qs[k]) if sp.issparse(Qs[k]) else Qs[k]))
            for k in range(K)
        ]
        spl = lam / (K * N) * cp.sum(cp.hstack(terms))
    prob = cp.Problem(cp.Minimize(ml + spl))
    prob.solve(solver=solver, verbose=verbose, **solver_kwargs)
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        msg = f"cvxpy finished with status {prob.status!r}; try backend='pytorch'."
        raise RuntimeError(msg)
    return _dc.DeconvResult(
        coef=np.asarray(Z.value),
        bias=None if not bias else np.asarray(b.value).ravel(),
        model_loss=float(ml.value),
        spatial_loss=float(spl.value) if not isinstance(spl, int) else 0.0,
        n_iter=int(prob.solver_stats.num_iters or 0),
        converged=prob.status == cp.OPTIMAL,
        solver=f"cvxpy-{prob.solver_stats.solver_name}",
        seconds=time.perf_counter() - t0,
        extra={"model": model, **({"epsilon": float(eps.value)} if model == "nusvr" else {})},
    )
