"""Posterior standard deviations and intervals from the compact uncertainty stored by ``sm.tl``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._anndata import check_adata
from .._validation import check_key, check_real

__all__ = ["interval", "posterior_sd"]


def _gene_index(adata, genes) -> np.ndarray:
    if genes is None:
        return np.arange(adata.n_vars)
    if isinstance(genes, str):
        genes = [genes]
    if not isinstance(genes, Sequence | np.ndarray | pd.Index):
        msg = f"Expected `genes` to be a gene name, a list of names or None, found {type(genes).__name__}."
        raise TypeError(msg)
    genes = np.asarray(genes).astype(str)
    idx = adata.var_names.get_indexer(genes)
    if (idx < 0).any():
        msg = f"Genes {list(genes[idx < 0][:5])} not found in `adata.var_names`."
        raise KeyError(msg)
    return idx


def _factors(adata, key: str) -> tuple[np.ndarray, np.ndarray]:
    vf, sg = f"{key}_var_factor", f"{key}_sigma"
    if vf not in adata.obs.columns or sg not in adata.var.columns:
        msg = (
            f"No uncertainty for {key!r}: `adata.obs[{vf!r}]` and `adata.var[{sg!r}]` are written by "
            f"`sm.tl.smooth(adata, uncertainty=True, key_added={key!r})` (or `sm.tl.impute` / `sm.tl.enhance` with "
            "`uncertainty=True`)."
        )
        raise KeyError(msg)
    return np.asarray(adata.obs[vf], dtype=np.float64), np.asarray(adata.var[sg], dtype=np.float64)


def posterior_sd(adata, genes: str | Sequence[str] | None = None, *, key: str = "smoothed") -> pd.DataFrame:
    r"""Posterior standard deviation of a smoothed (or imputed) value, for the chosen genes.

    The posterior of gene :math:`g` is :math:`N(\hat x_g, \sigma_g^2 \Sigma)` with one spot-wise factor shared by
    all genes, so the standard deviation at spot :math:`i` is :math:`\sigma_g \sqrt{d_i}` with
    :math:`d_i` = ``adata.obs[f'{key}_var_factor']`` and :math:`\sigma_g` = ``adata.var[f'{key}_sigma']``.

    Parameters
    ----------
    adata
        AnnData after ``sm.tl.smooth(..., uncertainty=True)`` (or the AnnData returned by ``sm.tl.impute`` /
        ``sm.tl.enhance`` with ``uncertainty=True``).
    genes
        A gene name or a list of names; ``None``: all genes (``n_obs x n_vars``: only when you need them all).
    key
        The ``key_added`` of the fit.

    Returns
    -------
    DataFrame ``(n_obs, n_genes)`` indexed by ``obs_names``, columns the genes. For ``sm.tl.impute`` with the
    observations fixed, :math:`\sigma_g` is the prior's scale (no noise term; see its ``uncertainty``), the
    observed spots have sd 0 and spots with no graph path to the data NaN.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    >>> sm.get.posterior_sd(adata, ["gene_0"]).shape
    (400, 1)
    """
    check_adata(adata, writes=False)
    check_key(key, "key")
    idx = _gene_index(adata, genes)
    d, sigma = _factors(adata, key)
    sd = np.sqrt(np.clip(d, 0.0, None))[:, None] * sigma[idx][None, :]
    return pd.DataFrame(sd, index=adata.obs_names.copy(), columns=adata.var_names[idx].copy())


def interval(
    adata,
    genes: str | Sequence[str] | None = None,
    *,
    key: str = "smoothed",
    level: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""Pointwise credible interval :math:`\hat x_{ig} \pm z_{(1+\mathrm{level})/2}\, \sigma_g \sqrt{d_i}`.

    The estimate is ``adata.layers[key]`` (``sm.tl.smooth``) or ``adata.X`` of the AnnData returned by
    ``sm.tl.impute`` / ``sm.tl.enhance`` (whose ``uns[key]`` records the fit). The intervals are Gaussian posterior
    intervals given the estimated :math:`\lambda` and :math:`\sigma_g`: they are calibrated when the data follow
    the prior (a Gaussian field plus noise); at sharp boundaries the smoothed value is biased and the interval
    can miss (see the uncertainty benchmark).

    Parameters
    ----------
    adata, genes, key
        As in :func:`posterior_sd`.
    level
        Coverage in (0, 1), e.g. 0.9 or 0.95.

    Returns
    -------
    ``(lower, upper)``: two DataFrames ``(n_obs, n_genes)``.

    Examples
    --------
    >>> import numpy as np
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(n_spots=400, n_genes=5, seed=0)
    >>> sm.pp.spatial_graph(adata)
    >>> sm.tl.smooth(adata, lambda_spatial=1.0, uncertainty=True)
    >>> lower, upper = sm.get.interval(adata, ["gene_0", "gene_1"], level=0.9)
    >>> lower.shape, bool((lower.to_numpy() < upper.to_numpy()).all())
    ((400, 2), True)

    On the AnnData returned by ``sm.tl.impute`` the estimate is its ``X``; observed spots (held fixed) have
    zero-width intervals:

    >>> held_out = np.arange(adata.n_obs) % 5 == 0
    >>> out = sm.tl.impute(adata[~held_out].copy(), adata.obsm["spatial"][held_out], uncertainty=True)
    >>> lower, upper = sm.get.interval(out, "gene_0", key="impute", level=0.9)
    >>> width = (upper - lower)["gene_0"]
    >>> bool((width[out.obs["observed"]] == 0).all()), bool((width[~out.obs["observed"]] > 0).all())
    (True, True)
    """
    from scipy.stats import norm

    check_adata(adata, writes=False)
    level = check_real(level, "level", low=0.0, high=1.0, low_open=True, high_open=True, example="0.95")
    sd = posterior_sd(adata, genes, key=key)
    idx = _gene_index(adata, genes)
    if key in adata.layers:
        est = adata.layers[key]
    else:
        est = adata.X
    est = est[:, idx]
    est = np.asarray(est.toarray() if hasattr(est, "toarray") else est, dtype=np.float64)
    z = float(norm.ppf(0.5 + level / 2))
    lower = pd.DataFrame(est - z * sd.to_numpy(), index=sd.index, columns=sd.columns)
    upper = pd.DataFrame(est + z * sd.to_numpy(), index=sd.index, columns=sd.columns)
    return lower, upper
