"""One gradient-based fitting loop for the torch models (Adam or L-BFGS), with a tested stopping rule.

Stopping rule (:func:`should_stop`): an epoch *stalls* when the loss drops by less than
``tol * max(1, |previous loss|)`` (this includes any increase). The loop stops, and reports convergence,
after ``patience`` consecutive stalled epochs; it stops without convergence at ``max_epochs`` or when the
loss is not finite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .._settings import progress


@contextmanager
def torch_threads(n: int | None):
    """Temporarily use ``n`` torch CPU threads (``None``: leave as is); the previous setting is restored.

    Small problems run much faster on one thread: with OpenMP, every tiny kernel pays a synchronization that,
    on a busy machine (or under ``pytest -n``), costs milliseconds.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    n_epochs: int
    converged: bool
    loss: float
    history: list[float] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class ClassicStopping:
    """smoother-omics 1.1.0's stopping rule, kept for the classic models' gradient loops (imputation, SpatialPCA).

    Training goes on while the last epoch lowered the loss by at least ``tol``, or while the loss went up and
    patience is left (every increase uses one unit of ``patience``, at least 1); it stops at ``max_epochs``
    (``-1``: 10,000). Use :meth:`keep_going` as the loop condition and call :meth:`update` once per epoch.
    """

    def __init__(self, max_epochs: int, patience: int, tol: float):
        self.max_epochs = 10000 if max_epochs == -1 else int(max_epochs)
        self.patience = max(int(patience), 1)
        self.tol = tol
        self.prev = self.d_loss = np.inf
        self.epoch = 0

    def keep_going(self) -> bool:
        """Whether to run another epoch."""
        return self.epoch < self.max_epochs and (self.d_loss >= self.tol or (self.d_loss < 0 and self.patience > 0))

    def update(self, cur: float) -> None:
        """Record the loss ``cur`` of the epoch just run."""
        self.epoch += 1
        self.d_loss = self.prev - cur
        if self.d_loss < 0:
            self.patience -= 1
        self.prev = cur


def should_stop(prev: float, cur: float, stall: int, *, tol: float, patience: int) -> tuple[bool, int]:
    """Apply the stopping rule to one epoch.

    Parameters
    ----------
    prev, cur
        Loss before and after the epoch.
    stall
        Number of consecutive stalled epochs before this one.
    tol
        Relative decrease below which an epoch counts as stalled.
    patience
        Number of consecutive stalled epochs that ends the fit.

    Returns
    -------
    stop, stall
        Whether to stop, and the updated stall count.
    """
    if not np.isfinite(prev):
        return False, 0
    if prev - cur < tol * max(1.0, abs(prev)):
        stall += 1
    else:
        stall = 0
    return stall >= max(1, patience), stall


def fit(
    params: Iterable[torch.Tensor],
    loss_fn: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    *,
    optimizer: str = "adam",
    lr: float = 1e-3,
    max_epochs: int = 1000,
    tol: float = 1e-5,
    patience: int = 10,
    project: Callable[[], None] | None = None,
    show_progress: bool | None = None,
    desc: str = "fit",
) -> FitResult:
    """Minimize ``loss_fn()`` over ``params`` with Adam or L-BFGS.

    Parameters
    ----------
    params
        Leaf tensors with ``requires_grad=True``.
    loss_fn
        Returns the total loss (a scalar tensor) and a dict of its named parts (floats, for the progress bar).
    optimizer
        ``'adam'`` or ``'lbfgs'``.
    lr
        Learning rate (L-BFGS: initial step length).
    max_epochs
        Maximum number of optimizer steps.
    tol, patience
        Stopping rule, see :func:`should_stop`.
    project
        Called (under ``torch.no_grad``) after every step, e.g. to clamp coefficients at 0 (projected method).
    show_progress
        Show a tqdm bar (default: ``sm.settings.progress_bar``).
    desc
        Label of the progress bar.
    """
    params = list(params)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=20, line_search_fn="strong_wolfe")
    else:
        msg = f"Unknown optimizer `{optimizer!r}`: expected 'adam' or 'lbfgs'."
        raise ValueError(msg)
    max_epochs = int(max_epochs)
    if max_epochs < 1:
        msg = f"Expected `max_epochs` >= 1, found {max_epochs}."
        raise ValueError(msg)

    history: list[float] = []
    parts: dict[str, float] = {}
    prev, stall = np.inf, 0
    converged, reason = False, "max_epochs"
    bar = progress(total=max_epochs, desc=desc, disable=None if show_progress is None else not show_progress)
    epoch = 0
    try:
        for epoch in range(1, max_epochs + 1):  # noqa: B007
            if optimizer == "adam":
                opt.zero_grad()
                loss, parts = loss_fn()
                loss.backward()
                opt.step()
            else:

                def closure():
                    opt.zero_grad()
                    total, _ = loss_fn()
                    total.backward()
                    for p in params:  # L-BFGS flattens gradients with .view()
                        if p.grad is not None and not p.grad.is_contiguous():
                            p.grad = p.grad.contiguous()
                    return total

                opt.step(closure)
            if project is not None:
                with torch.no_grad():
                    project()
            if optimizer == "lbfgs" or project is not None:
                with torch.no_grad():
                    loss, parts = loss_fn()  # loss at the (projected) iterate
            cur = float(loss.detach())
            history.append(cur)
            bar.update(1)
            if epoch % 10 == 0:
                bar.set_postfix({k: f"{v:.4g}" for k, v in parts.items()}, refresh=False)
            if not np.isfinite(cur):
                reason = "non-finite loss"
                break
            stop, stall = should_stop(prev, cur, stall, tol=tol, patience=patience)
            prev = cur
            if stop:
                converged, reason = True, "tol"
                break
    finally:
        bar.close()
    return FitResult(
        n_epochs=epoch,
        converged=converged,
        loss=history[-1] if history else np.nan,
        history=history,
        parts={k: float(v) for k, v in parts.items()},
        reason=reason,
    )
