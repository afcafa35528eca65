r"""Classic imputation models of smoother-omics (``smoother.models.impute``), solved exactly.

``y_obs`` holds ``n_obs`` observed spots (rows) by ``n_feature`` features; the spatial loss is built on all
``n_all = n_obs + n_missing`` spots, observed first. The classic objective is

.. math::

    L(X) = \underbrace{\frac{1}{n_{obs} G}\lVert Y_o - X_o\rVert_F^2}_{\text{only if not fixed\_obs}}
    + \lambda \frac{1}{n_{all} G} \sum_g s\, x_g^T Q x_g

(``MSELoss`` and ``SpatialLoss`` with ``normalize=True``, confidence :math:`s`). It is quadratic, so
:class:`ImputeTorch` returns its exact minimizer (the solver of :func:`smoother.tl.impute`):

- ``fixed_obs=True``: the Gaussian conditional mean :math:`Q_{mm} X_m = -Q_{mo} Y_o`;
- ``fixed_obs=False``: :math:`(P + \lambda' Q) X = P Y` with :math:`\lambda' = \lambda s\, n_{obs} / n_{all}`
  (multiply :math:`L` by :math:`n_{obs} G`);
- ``nonneg=True``: the classic model optimizes :math:`|X|`, i.e. the same objective under :math:`X \ge 0`,
  solved exactly (ADMM).

A spatial loss that is not quadratic (``ContrastiveSpatialLoss``, the ``'kl'`` prior) falls back to the classic
gradient fit (Adam), as does ``method='adam'``.

Input: log-normalized expression (or any continuous per-spot feature); the model is Gaussian. On AnnData,
:func:`smoother.tl.impute` does the same with the spots named instead of ordered.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .._core import smooth as core
from .._core.fit import ClassicStopping
from .._core.linalg import NotPositiveDefiniteError
from .._settings import logger
from .._validation import check_bool, check_choice, check_int, check_lambda, check_real

__all__ = ["ImputeConvex", "ImputeModel", "ImputeTorch"]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def _check_fit_args(lr, max_epochs, patience, tol, verbose, quiet) -> None:
    """The classic gradient settings, checked before any work (the user's names)."""
    check_real(lr, "lr", low=0.0, low_open=True, example="1e-3")
    max_epochs = check_int(max_epochs, "max_epochs", low=-1, example="1000")
    if max_epochs == 0:
        msg = "Expected `max_epochs` >= 1 (or -1 for 10,000 epochs), found `0` (e.g. max_epochs=1000)."
        raise ValueError(msg)
    check_int(patience, "patience", low=0, example="10")
    check_real(tol, "tol", low=0.0, example="1e-5")
    check_bool(verbose, "verbose")
    check_bool(quiet, "quiet")


def _to_numpy(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().double().numpy()
    return np.asarray(y, dtype=np.float64)


def _is_quadratic(spatial_loss) -> bool:
    from ..losses import ContrastiveSpatialLoss

    return str(getattr(spatial_loss, "prior", "")).lower() != "kl" and not isinstance(
        spatial_loss, ContrastiveSpatialLoss
    )


class ImputeModel:
    """Shared state of the classic imputation models (cooperative mixin, as in smoother-omics).

    Not used directly: :class:`ImputeTorch` and :class:`ImputeConvex` build on it. It holds the data, the loss,
    the result (``var_*``) and the settings of the last run.

    Attributes
    ----------
    y_obs
        Observed features, ``n_obs x n_feature``.
    spatial_loss_all
        :class:`~smoother.SpatialLoss` on all ``n_all`` spots (observed first).
    fixed_obs, nonneg
        Keep the observations fixed; constrain the result to be non-negative.
    n_feature, n_obs, n_all, n_missing
        Sizes.
    var_obs, var_missing, var_all
        The result: ``n_obs``, ``n_missing`` and ``n_all`` rows by ``n_feature``.
    impute_configs
        Settings of the last :meth:`impute` call.
    impute_time
        Seconds spent in the last :meth:`impute` call.
    impute_flag
        Whether the last imputation succeeded.

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=5, noise_level=0.2, seed=0)
    >>> order = np.random.default_rng(0).permutation(400)  # observed spots first: 300 observed, 100 missing
    >>> coords, X, truth = adata.obsm["spatial"][order], adata.X[order], adata.layers["truth"][order]
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(coords, k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)  # on all 400 spots
    >>> from smoother.models.impute import ImputeModel, ImputeTorch
    >>> model = ImputeTorch(X[:300], sp_loss, verbose=False)
    >>> isinstance(model, ImputeModel), (model.n_obs, model.n_missing, model.n_feature), model.impute_flag
    (True, (300, 100, 5), True)
    """

    def __init__(self, y_obs, spatial_loss_all, fixed_obs=True, nonneg=False, **kwargs):
        super().__init__(**kwargs)
        self.impute_configs = None
        self.impute_time = 0.0
        self.impute_flag = False
        self.set_params(y_obs, spatial_loss_all, fixed_obs, nonneg)

    def set_params(self, y_obs, spatial_loss_all, fixed_obs=True, nonneg=False) -> None:
        """Store the data and the loss, check them, and reset the variables."""
        if not (hasattr(spatial_loss_all, "get_precision") and hasattr(spatial_loss_all, "num_spot")):
            msg = (
                "Expected `spatial_loss_all` to be a smoother.SpatialLoss on all spots (observed first), found "
                f"{type(spatial_loss_all).__name__}."
            )
            raise TypeError(msg)
        fixed_obs = check_bool(fixed_obs, "fixed_obs")
        nonneg = check_bool(nonneg, "nonneg")
        if getattr(spatial_loss_all, "n_precisions", 1) > 1:
            msg = "Imputation supports a spatial loss with one shared precision matrix only."
            raise NotImplementedError(msg)
        if isinstance(y_obs, torch.Tensor):
            if y_obs.is_complex() or not (y_obs.is_floating_point() or y_obs.dtype in _INT_DTYPES):
                msg = f"Expected `y_obs` to be a real numeric tensor, found dtype {y_obs.dtype}."
                raise TypeError(msg)
            y = y_obs if y_obs.is_floating_point() else y_obs.float()
        else:
            arr = y_obs.toarray() if sp.issparse(y_obs) else y_obs
            try:
                arr = np.asarray(arr, dtype=np.float32)
            except (TypeError, ValueError) as e:
                msg = f"Expected `y_obs` to be a numeric (n_obs, n_feature) array, found {type(y_obs).__name__}."
                raise TypeError(msg) from e
            y = torch.as_tensor(arr)
        if y.ndim != 2:
            msg = f"Expected `y_obs` of shape (n_obs, n_feature), found shape {tuple(y.shape)}."
            raise ValueError(msg)
        if not torch.isfinite(y).all():
            msg = "`y_obs` contains NaN or inf."
            raise ValueError(msg)
        if nonneg and y.min() < 0:
            msg = "Nonnegativity is enforced but the observed data contains negative values."
            raise ValueError(msg)
        n_all = spatial_loss_all.num_spot
        if n_all is None or n_all < y.shape[0]:
            msg = f"The spatial loss covers {n_all} spots, fewer than the {y.shape[0]} observed spots."
            raise ValueError(msg)
        if y.shape[0] == 0:
            msg = "`y_obs` has 0 observed spots; at least one is needed."
            raise ValueError(msg)
        self.y_obs = y
        self.spatial_loss_all = spatial_loss_all
        self.fixed_obs = fixed_obs
        self.nonneg = nonneg
        self.n_feature = int(y.shape[1])
        self.n_obs = int(y.shape[0])
        self.n_all = int(n_all)
        self.n_missing = self.n_all - self.n_obs
        self.set_variables()

    def set_variables(self) -> None:
        """Initialize the variables (observed values, missing ones at the feature means)."""
        y = self.y_obs.detach().float()
        self.var_obs = y.clone()
        self.var_missing = y.mean(dim=0, keepdim=True).expand(self.n_missing, -1).clone()
        self.var_all = torch.cat([self.var_obs, self.var_missing], dim=0)

    def get_results(self):
        """Features of all spots after imputation, ``n_all x n_feature`` (observed first)."""
        return self.var_all.detach() if isinstance(self.var_all, torch.Tensor) else self.var_all

    # ---- exact solution shared by both classes ------------------------------------------------------------
    def _record_configs(self, lambda_spatial_loss, **options) -> bool:
        """Store ``impute_configs`` (problem sizes, flags, ``options``); ``False`` when there is nothing to impute."""
        self.impute_configs = {
            "n_feature": self.n_feature,
            "n_obs": self.n_obs,
            "n_missing": self.n_missing,
            "fixed_obs": self.fixed_obs,
            "nonneg": self.nonneg,
            "lambda_spatial_loss": lambda_spatial_loss,
            **options,
        }
        if self.n_missing == 0 and self.fixed_obs:
            warnings.warn("Imputation stopped: Observation is fixed with no missing position.", stacklevel=3)
            return False
        return True

    def _precision(self) -> sp.csr_matrix:
        Q = self.spatial_loss_all.get_precision(0)
        Q = sp.csr_matrix(Q) if not sp.issparse(Q) else sp.csr_matrix(Q, dtype=np.float64)
        scale = float(self.spatial_loss_all.confidences.reshape(-1)[0])
        return Q * scale

    def _solve_exact(self, lambda_spatial_loss: float) -> np.ndarray:
        Q = self._precision()
        op = core.PriorOperator(
            str(self.spatial_loss_all.prior), float(getattr(self.spatial_loss_all, "rho", 1.0)), Q=Q
        )
        y = _to_numpy(self.y_obs)
        observed = np.r_[np.ones(self.n_obs, bool), np.zeros(self.n_missing, bool)]
        if self.fixed_obs:
            xm = core.conditional_mean(op, y, observed, nonneg=self.nonneg)
            return np.vstack([y, xm])
        lam = float(lambda_spatial_loss) * self.n_obs / self.n_all
        Yall = np.vstack([y, np.zeros((self.n_missing, self.n_feature))])
        return core.smooth(Yall, op, lam, weights=observed.astype(float), nonneg=self.nonneg, dtype=np.float64)

    def objective(self, lambda_spatial_loss: float | None = None) -> float:
        """The classic objective :math:`L` at the current result (float64)."""
        lam = self.impute_configs["lambda_spatial_loss"] if lambda_spatial_loss is None else lambda_spatial_loss
        x = _to_numpy(self.get_results())
        y = _to_numpy(self.y_obs)
        recon = 0.0 if self.fixed_obs else float(((x[: self.n_obs] - y) ** 2).mean())
        Q = self._precision()
        sp_loss = float(np.einsum("ij,ij->", x, Q @ x)) / (self.n_all * self.n_feature)
        return recon + float(lam) * sp_loss


class ImputeTorch(ImputeModel, nn.Module):
    r"""Imputation with a spatial loss; the exact optimum when the loss is quadratic (classic name and API).

    Use it to predict features at spots that were not measured (or were filtered out) from their measured
    neighbours. With ``fixed_obs=True`` (default) the observed values are kept and the missing ones are their
    conditional mean under the spatial prior; ``fixed_obs=False`` also denoises the observed ones.

    Parameters
    ----------
    y_obs
        Observed features, ``n_obs x n_feature`` (tensor or array).
    spatial_loss_all
        :class:`~smoother.SpatialLoss` on all spots, the observed ones first.
    fixed_obs
        Keep observed values fixed (Gaussian conditional mean); ``False`` also denoises them.
    nonneg
        Non-negative result.
    **impute_kwargs
        Passed to :meth:`impute`, which the constructor runs.

    Notes
    -----
    ``fixed_obs=True`` solves :math:`Q_{mm} X_m = -Q_{mo} Y_o` for the missing rows :math:`X_m`;
    ``fixed_obs=False`` solves :math:`(P + \lambda' Q) X = P Y` (module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=5, noise_level=0.2, seed=0)
    >>> order = np.random.default_rng(0).permutation(400)  # observed spots first: 300 observed, 100 missing
    >>> coords, X, truth = adata.obsm["spatial"][order], adata.X[order], adata.layers["truth"][order]
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(coords, k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)  # on all 400 spots
    >>> from smoother.models.impute import ImputeTorch
    >>> model = ImputeTorch(X[:300], sp_loss, verbose=False)  # imputes at construction
    >>> out = model.get_results().numpy()  # 400 x 5, observed first
    >>> rmse = lambda a: round(float(np.sqrt(((a - truth[300:]) ** 2).mean())), 2)
    >>> out.shape, rmse(out[300:]), rmse(X[:300].mean(0))  # vs filling in the gene means
    ((400, 5), 0.17, 1.03)
    """

    def __init__(self, y_obs, spatial_loss_all, fixed_obs=True, nonneg=False, **impute_kwargs) -> None:
        super().__init__(y_obs, spatial_loss_all, fixed_obs, nonneg)
        self.impute_flag = self.impute(**impute_kwargs)

    def forward(self, y_obs, **kwargs):
        """Impute another feature matrix on the same spots and loss; returns ``n_all x n_feature``."""
        self.set_params(y_obs, self.spatial_loss_all, self.fixed_obs, self.nonneg)
        self.impute_flag = self.impute(**kwargs)
        return self.get_results()

    def impute(
        self,
        lambda_spatial_loss=1.0,
        lr=1e-3,
        max_epochs=1000,
        patience=10,
        tol=1e-5,
        verbose=True,
        quiet=False,
        method="auto",
    ) -> bool:
        """Run the imputation.

        Parameters
        ----------
        lambda_spatial_loss
            Strength of the spatial loss.
        lr, max_epochs, patience, tol
            Adam settings, used only by the gradient path (``method='adam'`` or a non-quadratic loss).
        verbose, quiet
            Log progress / the final summary (through the ``smoother`` logger).
        method
            ``'auto'`` (exact when the loss is quadratic), ``'exact'`` or ``'adam'``.

        Returns
        -------
        Whether the imputation succeeded.
        """
        method = check_choice(method, "method", ("auto", "exact", "adam"))
        lambda_spatial_loss = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
        _check_fit_args(lr, max_epochs, patience, tol, verbose, quiet)
        if method == "exact" and not _is_quadratic(self.spatial_loss_all):
            msg = "method='exact' needs a quadratic spatial loss (not 'kl' or ContrastiveSpatialLoss)."
            raise ValueError(msg)
        if not self.fixed_obs and lambda_spatial_loss == 0 and self.n_missing:
            msg = (
                "`lambda_spatial_loss` = 0 leaves the missing spots undetermined; use a positive value "
                "(e.g. lambda_spatial_loss=1.0) or fixed_obs=True."
            )
            raise ValueError(msg)
        if not self._record_configs(
            lambda_spatial_loss,
            lr=lr,
            max_epochs=max_epochs,
            patience=patience,
            tol=tol,
            verbose=verbose,
            quiet=quiet,
            method=method,
        ):
            return False
        exact = method == "exact" or (method == "auto" and _is_quadratic(self.spatial_loss_all))
        t0 = time.perf_counter()
        if exact:
            try:
                x = self._solve_exact(lambda_spatial_loss)
            except NotPositiveDefiniteError as e:
                warnings.warn(
                    f"The imputation system is not positive definite ({e}); the precision matrix is improper "
                    "for this graph, or missing spots are not connected to observed ones.",
                    stacklevel=2,
                )
                return False
            if not np.isfinite(x).all():
                warnings.warn(
                    "The imputation produced NaN or inf values (an ill-conditioned system); the result is not "
                    "usable. Check the spatial loss (confidences, rho) and the data scale.",
                    stacklevel=2,
                )
                return False
            x = torch.from_numpy(x).float()
            self.var_all = x
            self.var_obs = x[: self.n_obs]
            self.var_missing = x[self.n_obs :]
            ok = True
        else:
            ok = self._fit_adam(lambda_spatial_loss, lr, max_epochs, patience, tol, verbose and not quiet)
        self.impute_time = time.perf_counter() - t0
        if not quiet:
            logger.info("Imputation finished in %.2fs (%s).", self.impute_time, "exact" if exact else "adam")
        return ok

    def _fit_adam(self, lam, lr, max_epochs, patience, tol, verbose) -> bool:
        """The classic gradient fit, for losses without a closed form."""
        y = self.y_obs.detach().float()
        obs = nn.Parameter(y.clone(), requires_grad=not self.fixed_obs)
        mis = nn.Parameter(y.mean(dim=0, keepdim=True).expand(self.n_missing, -1).clone())
        params = [p for p in (obs, mis) if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        stop = ClassicStopping(max_epochs, patience, tol)
        while stop.keep_going():
            opt.zero_grad()
            x_all = torch.cat([obs, mis], dim=0)
            x_use = x_all.abs() if self.nonneg else x_all
            loss = lam * self.spatial_loss_all(x_use.T)
            if not self.fixed_obs:
                loss = loss + torch.mean((y - (obs.abs() if self.nonneg else obs)) ** 2)
            loss.backward()
            opt.step()
            cur = float(loss.detach())
            if not np.isfinite(cur):
                warnings.warn(
                    f"The loss became {cur} at epoch {stop.epoch + 1}; the fit failed. Lower `lr` or check the data.",
                    stacklevel=3,
                )
                return False
            stop.update(cur)
            if verbose and stop.epoch % 10 == 0:
                logger.info("Epoch %d. Loss %.4f.", stop.epoch, cur)
        with torch.no_grad():
            x_all = torch.cat([obs, mis], dim=0).detach()
            if self.nonneg:
                x_all = x_all.abs()
        self.var_all, self.var_obs, self.var_missing = x_all, x_all[: self.n_obs], x_all[self.n_obs :]
        if stop.epoch == stop.max_epochs:
            warnings.warn("Fail to converge. Try to increase 'max_epochs'.", stacklevel=3)
            return False
        return True


class ImputeConvex(ImputeModel):
    """Imputation with cvxpy (classic API); needs ``pip install smoother[cvxpy]``.

    Builds the classic objective (see the module docstring) as a cvxpy problem and solves it with ``solver``.
    The result equals :class:`ImputeTorch`'s exact solution up to the solver's tolerance; use it to add your own
    cvxpy constraints, otherwise :class:`ImputeTorch` is faster.

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="gp", n_genes=5, noise_level=0.2, seed=0)
    >>> order = np.random.default_rng(0).permutation(400)  # observed spots first: 300 observed, 100 missing
    >>> coords, X, truth = adata.obsm["spatial"][order], adata.X[order], adata.layers["truth"][order]
    >>> swm = sm.SpatialWeightMatrix()
    >>> swm.calc_weights_knn(coords, k=6, verbose=False)
    >>> sp_loss = sm.SpatialLoss("icar", swm, rho=0.99)  # on all 400 spots
    >>> from smoother.models.impute import ImputeConvex, ImputeTorch
    >>> cvx = ImputeConvex(X[:300], sp_loss)
    >>> exact = ImputeTorch(X[:300], sp_loss, verbose=False).get_results().numpy()
    >>> cvx.get_results().shape, bool(np.abs(cvx.get_results() - exact).max() < 1e-4)
    ((400, 5), True)
    """

    def __init__(self, y_obs, spatial_loss_all, fixed_obs=True, nonneg=False, **impute_kwargs) -> None:
        try:
            import cvxpy  # noqa: F401
        except ImportError as e:
            msg = "ImputeConvex needs cvxpy: `pip install smoother[cvxpy]` (or use ImputeTorch, which is exact)."
            raise ImportError(msg) from e
        if not _is_quadratic(spatial_loss_all):
            msg = "ImputeConvex needs a quadratic spatial loss (not 'kl' or ContrastiveSpatialLoss)."
            raise ValueError(msg)
        super().__init__(y_obs, spatial_loss_all, fixed_obs, nonneg)
        self.impute_flag = self.impute(**impute_kwargs)

    def set_variables(self) -> None:
        """cvxpy variables for the unknown values."""
        import cvxpy as cp

        y = _to_numpy(self.y_obs)
        if self.fixed_obs:
            self._var = cp.Variable((self.n_missing, self.n_feature), nonneg=self.nonneg)
            self.var_obs = y
            self.var_missing = self._var
            self.var_all = cp.vstack([cp.Constant(y), self._var]) if self.n_missing else cp.Constant(y)
        else:
            self._var = cp.Variable((self.n_all, self.n_feature), nonneg=self.nonneg)
            self.var_all = self._var
            self.var_obs = self._var[: self.n_obs]
            self.var_missing = self._var[self.n_obs :]

    def get_results(self):
        """Features of all spots, ``n_all x n_feature`` (numpy)."""
        return np.asarray(self.var_all.value)

    def impute(self, lambda_spatial_loss=1.0, verbose=False, quiet=False, solver=None, **kwargs) -> bool:
        """Solve the convex problem; ``solver`` and ``kwargs`` go to ``cvxpy.Problem.solve``."""
        import cvxpy as cp
        from cvxpy.atoms.affine.wraps import psd_wrap

        lambda_spatial_loss = check_lambda(lambda_spatial_loss, "lambda_spatial_loss")
        check_bool(verbose, "verbose")
        check_bool(quiet, "quiet")
        if solver is not None and not isinstance(solver, str):
            msg = f"Expected `solver` to be a cvxpy solver name or None, found {type(solver).__name__} `{solver!r}`."
            raise TypeError(msg)
        if solver is not None and solver.upper() not in cp.installed_solvers():
            msg = f"Unknown or uninstalled cvxpy `solver` {solver!r}; installed: {cp.installed_solvers()}."
            raise ValueError(msg)
        if not self.fixed_obs and lambda_spatial_loss == 0 and self.n_missing:
            msg = (
                "`lambda_spatial_loss` = 0 leaves the missing spots undetermined; use a positive value "
                "(e.g. lambda_spatial_loss=1.0) or fixed_obs=True."
            )
            raise ValueError(msg)
        if not self._record_configs(lambda_spatial_loss, verbose=verbose, quiet=quiet):
            return False
        t0 = time.perf_counter()
        Q = psd_wrap(sp.coo_matrix(0.5 * (self._precision() + self._precision().T)))
        y = _to_numpy(self.y_obs)
        sp_loss = sum(cp.quad_form(self.var_all[:, i], Q) for i in range(self.n_feature)) / (
            self.n_all * self.n_feature
        )
        recon = 0 if self.fixed_obs else cp.sum_squares(self.var_obs - y) / (self.n_obs * self.n_feature)
        self.problem = cp.Problem(cp.Minimize(recon + lambda_spatial_loss * sp_loss))
        try:
            self.problem.solve(solver=solver, verbose=verbose and not quiet, **kwargs)
        except cp.error.SolverError as e:
            warnings.warn(f"The cvxpy solver failed: {e}", stacklevel=2)
            return False
        self.impute_time = time.perf_counter() - t0
        value = self.var_all.value
        if value is None or not np.isfinite(np.asarray(value)).all():
            warnings.warn(f"Problem status: {self.problem.status}; no finite solution.", stacklevel=2)
            return False
        if self.problem.status != cp.OPTIMAL:
            warnings.warn(f"Problem status: {self.problem.status}.", stacklevel=2)
            return self.problem.status == cp.OPTIMAL_INACCURATE
        return True
