r"""The quadratic spatial loss :math:`\sum_g s_g \beta_g^T Q_g \beta_g` in torch, with autograd.

This is the negative log density (up to constants and a factor 1/2) of independent Gaussian random field
priors with precisions :math:`Q_g` on the rows :math:`\beta_g` of ``beta`` (``n_groups x n_spots``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def to_torch_sparse(Q, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A scipy sparse matrix (or dense array) as a coalesced torch sparse COO tensor."""
    Q = sp.coo_matrix(Q)
    idx = torch.from_numpy(np.vstack([Q.row, Q.col]).astype(np.int64))
    val = torch.from_numpy(Q.data.astype(np.float64)).to(dtype)
    return torch.sparse_coo_tensor(idx, val, Q.shape, device=device, check_invariants=False).coalesce()


def block_diag_sparse(Qs: list) -> sp.csr_matrix:
    """Block-diagonal CSR matrix from a list of square sparse/dense blocks."""
    return sp.block_diag([sp.csr_matrix(q) for q in Qs], format="csr")


def _scales(group_scales, g: int, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(group_scales, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        s = s.expand(g)
    s = s.reshape(-1)
    if s.numel() != g:
        msg = f"Expected {g} group scales (one per row of beta), found {s.numel()}."
        raise ValueError(msg)
    return s


def quadratic_form(beta: torch.Tensor, Q: torch.Tensor, group_scales=1.0) -> torch.Tensor:
    r"""Return :math:`\sum_g s_g \beta_g^T Q_g \beta_g` (a scalar tensor; differentiable in ``beta``).

    Parameters
    ----------
    beta
        ``(n_groups, n_spots)`` tensor.
    Q
        One of: a sparse or dense ``(n_spots, n_spots)`` precision shared by all groups; a dense
        ``(1, n, n)`` or ``(n_groups, n, n)`` stack; or a sparse block-diagonal ``(n_groups * n, n_groups * n)``
        matrix with one block per group.
    group_scales
        Scalar or ``(n_groups,)`` relative confidences :math:`s_g`.
    """
    if beta.ndim != 2:
        msg = f"Expected `beta` of shape (n_groups, n_spots), found shape {tuple(beta.shape)}."
        raise ValueError(msg)
    g, n = beta.shape
    s = _scales(group_scales, g, beta)
    Q = Q.to(dtype=beta.dtype, device=beta.device)
    if Q.ndim == 3:
        if Q.shape[1:] != (n, n) or Q.shape[0] not in (1, g):
            msg = f"Precision of shape {tuple(Q.shape)} does not fit beta of shape {(g, n)}."
            raise ValueError(msg)
        Qb = torch.matmul(Q, beta.unsqueeze(-1)).squeeze(-1)  # (g, n)
        return (s * (beta * Qb).sum(dim=1)).sum()
    if Q.ndim != 2:
        msg = f"Expected a 2D or 3D precision, found {Q.ndim} dimensions."
        raise ValueError(msg)
    if Q.shape == (n, n):
        Qb = torch.sparse.mm(Q, beta.T).T if Q.is_sparse else beta @ Q.T  # (g, n)
        return (s * (beta * Qb).sum(dim=1)).sum()
    if Q.shape == (g * n, g * n):
        flat = beta.reshape(-1, 1)
        Qb = (torch.sparse.mm(Q, flat) if Q.is_sparse else Q @ flat).reshape(g, n)
        return (s * (beta * Qb).sum(dim=1)).sum()
    msg = (
        f"Precision of shape {tuple(Q.shape)} does not fit beta of shape {(g, n)}: "
        f"expected ({n}, {n}) or ({g * n}, {g * n})."
    )
    raise ValueError(msg)
