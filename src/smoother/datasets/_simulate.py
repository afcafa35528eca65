"""Simulated spatial omics data with the ground truth stored alongside (AnnData out)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._constants import (
    CELL_TYPE,
    CELL_TYPES,
    PROPS_TRUTH,
    SIGNATURE_TRUTH,
    SIMULATION,
    SPATIAL_KEY,
    TRUTH,
    ZONE,
)
from .._settings import log_finish, log_start
from .._validation import accepts_random_state, check_real
from ._fields import (
    LAYOUTS,
    check_choice,
    check_field_grid,
    check_int,
    check_seed,
    check_size,
    default_length_scale,
    gaussian_fields,
    lattice_extent,
    make_lattice,
    standardize_columns,
)

if TYPE_CHECKING:
    from anndata import AnnData

PATTERNS = ("zones", "donut", "gp", "blobs")
NOISES = ("gaussian", "poisson", "nb")

_MAX_GP_FACTORS = 10  # 'gp' genes are mixtures of at most this many independent fields
_BLOBS_PER_GROUP = 3
_COUNT_MEDIAN = 5.0  # median mean count of a gene in simulate_field(noise='poisson'|'nb')
_MARKER_LOGFOLD = 2.0  # log fold change of a marker gene in its cell type (about 7.4x)
_PROP_SHARPNESS = 2.0  # proportions = softmax(sharpness * standardized smooth fields)


def lattice(n_spots: int, layout: Literal["hex", "square"] = "hex", *, spacing: float = 1.0) -> np.ndarray:
    """Coordinates of a nearly square patch of a hexagonal (Visium-like) or square lattice.

    The spot layout of the simulations; use it for classic-API examples that need coordinates only.
    Points are laid out row by row; the last row may be partial, so exactly ``n_spots`` points are returned.
    In the hexagonal layout odd rows are shifted by half a spacing and rows are ``spacing * sqrt(3) / 2``
    apart, so every interior spot has 6 neighbours at distance ``spacing`` (as on a Visium slide). In the
    square layout every interior spot has 4 neighbours at distance ``spacing``.

    Parameters
    ----------
    n_spots
        Number of points (>= 1).
    layout
        ``'hex'`` (hexagonal, Visium-like) or ``'square'`` (a regular grid).
    spacing
        Distance between neighbouring spots.

    Returns
    -------
    Float64 array of shape ``(n_spots, 2)`` with the x (column) and y (row) coordinates, starting at 0.

    Examples
    --------
    >>> import smoother as sm
    >>> sm.datasets.lattice(4, "square")
    array([[0., 0.],
           [1., 0.],
           [0., 1.],
           [1., 1.]])
    """
    n_spots = check_int(n_spots, "n_spots")
    layout = check_choice(layout, "layout", LAYOUTS)
    spacing = _check_spacing(spacing)
    check_size(n_spots, 2, "n_spots", None)
    return make_lattice(n_spots, layout, spacing)


def _lattice_and_length_scale(
    n_spots: int, layout: str, spacing: float, length_scale: float | None, *, field: bool
) -> tuple[np.ndarray, float]:
    """The lattice of the simulators and the field's length scale (default from the lattice's extent).

    ``length_scale`` was checked by the caller; with ``field=True`` (a Gaussian field is drawn) the size of its
    FFT grid is checked here from the extent alone, before the lattice or anything else is built.
    """
    extent = lattice_extent(n_spots, layout, spacing)
    ell = default_length_scale(extent, spacing) if length_scale is None else length_scale
    if field:
        check_field_grid(extent, ell)
    return make_lattice(n_spots, layout, spacing), ell


#: Spot spacing allowed by the simulators: squared distances of the coordinates stay finite and non-zero.
_SPACING_RANGE = (1e-100, 1e100)
#: Largest expected count allowed (numpy's Poisson sampler fails above ~9e18).
_MAX_DEPTH = 1e12


#: Largest Gaussian noise level (relative to a unit signal): keeps float32 values finite.
_MAX_NOISE_LEVEL = 1e15


def _check_noise_level(noise_level, noise: str) -> float:
    """``>= 0`` (``> 0`` for 'nb', the dispersion); at most ``_MAX_NOISE_LEVEL`` for 'gaussian'."""
    high = _MAX_NOISE_LEVEL if noise == "gaussian" else None
    return check_real(noise_level, "noise_level", low=0.0, low_open=noise == "nb", high=high, example="0.5")


def _check_spacing(spacing) -> float:
    return check_real(spacing, "spacing", low=_SPACING_RANGE[0], high=_SPACING_RANGE[1], example="1.0")


def _spot_names(prefix: str, n: int) -> pd.Index:
    return pd.Index(np.char.add(prefix, np.arange(n).astype(str)).astype(object))


def _unit_box(coords: np.ndarray) -> np.ndarray:
    """Coordinates rescaled per axis to [0, 1] (axes without extent map to 0.5)."""
    lo = coords.min(axis=0)
    span = np.ptp(coords, axis=0)
    out = np.full_like(coords, 0.5)
    ok = span > 0
    out[:, ok] = (coords[:, ok] - lo[ok]) / span[ok]
    return out


def _dominant_loadings(n_basis: int, n_genes: int, rng: np.random.Generator, *, signed: bool) -> np.ndarray:
    """Mixing weights ``(n_basis, n_genes)``: every gene follows mostly one basis field, a little of the others."""
    load = 0.3 * rng.standard_normal((n_basis, n_genes))
    main = rng.integers(n_basis, size=n_genes)
    strength = rng.uniform(1.0, 2.0, size=n_genes)
    if signed:
        strength *= rng.choice([-1.0, 1.0], size=n_genes)
    load[main, np.arange(n_genes)] += strength
    return load


def _pattern_truth(
    coords: np.ndarray,
    pattern: str,
    n_genes: int,
    n_zones: int,
    length_scale: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Noise-free fields ``(n_spots, n_genes)``, standardized per gene, and the zone of each spot (or None)."""
    zone = None
    if pattern == "zones":
        u = _unit_box(coords)
        # curved layers, like the cortical layers of a brain section
        depth = u[:, 1] + 0.3 * (u[:, 0] - 0.5) ** 2
        edges = np.quantile(depth, np.linspace(0.0, 1.0, n_zones + 1)[1:-1])
        zone = np.searchsorted(edges, depth, side="right")
        means = rng.standard_normal((n_zones, n_genes))
        truth = means[zone]
    elif pattern == "donut":
        center = coords.min(axis=0) + 0.5 * np.ptp(coords, axis=0)
        half = 0.5 * float(np.ptp(coords, axis=0).min())
        radius = np.linalg.norm(coords - center, axis=1) / (half if half > 0 else 1.0)
        basis = np.column_stack(
            [
                1.0 / (1.0 + np.exp((radius - 0.35) / 0.06)),  # inside the hole
                np.exp(-0.5 * ((radius - 0.65) / 0.12) ** 2),  # the ring
                1.0 / (1.0 + np.exp(-(radius - 0.95) / 0.06)),  # outside
            ]
        )
        truth = basis @ _dominant_loadings(3, n_genes, rng, signed=True)
    elif pattern == "gp":
        n_factors = min(n_genes, _MAX_GP_FACTORS)
        factors = gaussian_fields(coords, n_factors, length_scale, rng)
        truth = factors @ rng.standard_normal((n_factors, n_genes))
    else:  # blobs
        lo, span = coords.min(axis=0), np.ptp(coords, axis=0)
        centers = lo + span * rng.uniform(size=(n_zones, _BLOBS_PER_GROUP, coords.shape[1]))
        width = 0.6 * length_scale
        basis = np.zeros((coords.shape[0], n_zones))
        for k in range(n_zones):  # loop over blob groups, never over spots
            for c in centers[k]:
                basis[:, k] += np.exp(-0.5 * np.sum((coords - c) ** 2, axis=1) / width**2)
        truth = basis @ _dominant_loadings(n_zones, n_genes, rng, signed=False)
    return standardize_columns(np.asarray(truth, dtype=np.float64)), zone


def _add_count_noise(mean: np.ndarray, noise: str, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson or negative binomial (gamma-Poisson, variance ``mu + dispersion * mu^2``) counts as float32."""
    if noise == "nb":
        mean = rng.gamma(shape=1.0 / dispersion, scale=mean * dispersion)
    return rng.poisson(mean).astype(np.float32)


@accepts_random_state
def simulate_field(
    n_spots: int = 2500,
    *,
    layout: Literal["hex", "square"] = "hex",
    pattern: Literal["zones", "donut", "gp", "blobs"] = "zones",
    n_genes: int = 50,
    noise: Literal["gaussian", "poisson", "nb"] = "gaussian",
    noise_level: float = 0.5,
    n_zones: int = 5,
    spacing: float = 1.0,
    length_scale: float | None = None,
    seed: int | None = 0,
) -> AnnData:
    """Smooth spatial expression fields plus noise, with the noise-free truth.

    Use it to try and test smoothing, imputation, spatial PCA and the decay diagnostics: the truth is known, so
    the error of every result can be measured. ``noise='gaussian'`` stands for log-normalized data,
    ``'poisson'``/``'nb'`` for counts.

    Spots lie on :func:`lattice`. Each gene is a smooth spatial field built from one pattern:

    ``'zones'``
        Curved layers (like cortical layers) of equal size; each gene has its own mean in each zone.
        The true layer of every spot is in ``obs['zone']``.
    ``'donut'``
        Mixtures of three smooth radial fields: the hole, the ring and the outside.
    ``'gp'``
        Random linear combinations of ``min(n_genes, 10)`` independent Gaussian-process draws with covariance
        :math:`\\exp(-d^2 / 2\\ell^2)` (made by FFT filtering on a grid, so 10^6 spots take seconds).
    ``'blobs'``
        Mixtures of ``n_zones`` groups of Gaussian bumps of width ``0.6 * length_scale``; each gene follows
        mostly one group.

    Every truth field is standardized per gene; the noise model is in Notes.

    Parameters
    ----------
    n_spots
        Number of spots (>= 1).
    layout
        ``'hex'`` (Visium-like) or ``'square'`` lattice, see :func:`lattice`.
    pattern
        ``'zones'``, ``'donut'``, ``'gp'`` or ``'blobs'``.
    n_genes
        Number of genes (>= 1).
    noise
        ``'gaussian'``, ``'poisson'`` or ``'nb'`` (negative binomial).
    noise_level
        Standard deviation of the Gaussian noise, or the dispersion :math:`\\phi > 0` of ``'nb'``; not used
        by ``'poisson'``.
    n_zones
        Number of zones (``'zones'``) or of blob groups (``'blobs'``).
    spacing
        Distance between neighbouring spots.
    length_scale
        Length scale of ``'gp'`` fields and of blobs, in coordinate units. Default: a sixth of the longest
        side of the tissue, at least ``3 * spacing``. A ``'gp'`` field is drawn on an FFT grid of cell
        ``length_scale / 4`` covering the tissue: a length scale that would need more than 2^25 grid cells
        raises ``ValueError`` naming the smallest value that works.
    seed
        Seed of the local random generator; the same seed gives the same data. ``None`` draws a seed (recorded
        in ``uns['simulation']``). Also accepted as ``random_state`` (scanpy's name, used in the recorded
        params).

    Returns
    -------
    AnnData with ``n_spots`` observations (``'spot_0'``, ...) and ``n_genes`` variables (``'gene_0'``, ...):

    ``X``
        Noisy expression, float32 ``(n_spots, n_genes)`` (counts for ``'poisson'``/``'nb'``).
    ``layers['truth']``
        Noise-free field (Gaussian) or count mean (Poisson/NB), float32 ``(n_spots, n_genes)``.
    ``obsm['spatial']``
        Coordinates, float64 ``(n_spots, 2)``.
    ``obs['zone']``
        Only for ``pattern='zones'``: categorical true zone (``'zone_0'``, ...).
    ``uns['simulation']``
        The parameters used (writable to h5ad).

    Raises
    ------
    TypeError
        An argument of the wrong type (a string or bool for a number, a float for an integer).
    ValueError
        NaN, inf or out-of-range values (``spacing`` in [1e-100, 1e100], Gaussian ``noise_level`` at most 1e15),
        a ``length_scale`` too small for the FFT grid, or ``n_spots x n_genes`` too large for this machine's
        memory. All are checked before any work.

    Notes
    -----
    Every truth field is standardized per gene (mean 0, standard deviation 1 over spots), so for
    ``noise='gaussian'`` ``noise_level`` is the inverse signal-to-noise ratio: ``X = truth + noise_level * e``,
    :math:`e \\sim N(0, 1)`. For counts (``'poisson'``, ``'nb'``), the mean is
    :math:`\\mu_{ig} = b_g \\exp(z_{ig})` with the standardized field :math:`z` and a gene baseline :math:`b_g`
    (median 5); ``layers['truth']`` then holds :math:`\\mu` and ``X`` holds Poisson counts, or negative
    binomial counts with variance :math:`\\mu + \\phi\\mu^2`, :math:`\\phi` = ``noise_level``.

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.simulate_field(400, pattern="zones", n_genes=10, seed=1)
    >>> adata.layers["truth"].shape
    (400, 10)
    """
    import anndata as ad

    n_spots = check_int(n_spots, "n_spots")
    layout = check_choice(layout, "layout", LAYOUTS)
    pattern = check_choice(pattern, "pattern", PATTERNS)
    n_genes = check_int(n_genes, "n_genes")
    noise = check_choice(noise, "noise", NOISES)
    noise_level = _check_noise_level(noise_level, noise)
    n_zones = check_int(n_zones, "n_zones")
    spacing = _check_spacing(spacing)
    seed = check_seed(seed)
    ell = check_real(length_scale, "length_scale", low=0.0, low_open=True, allow_none=True, example="5.0")
    check_size(n_spots, n_genes, "n_spots", "n_genes")
    coords, ell = _lattice_and_length_scale(n_spots, layout, spacing, ell, field=pattern == "gp")

    start = log_start(f"simulating {n_spots} spots x {n_genes} genes ('{pattern}', {noise} noise)")
    rng = np.random.default_rng(seed)
    z, zone = _pattern_truth(coords, pattern, n_genes, n_zones, ell, rng)
    if noise == "gaussian":
        truth = z.astype(np.float32)
        del z
        X = rng.standard_normal(truth.shape, dtype=np.float32)
        X *= np.float32(noise_level)
        X += truth
    else:
        baseline = _COUNT_MEDIAN * np.exp(0.5 * rng.standard_normal(n_genes))
        np.exp(z, out=z)
        z *= baseline
        truth = z.astype(np.float32)
        X = _add_count_noise(z, noise, noise_level, rng)
        del z

    obs = pd.DataFrame(index=_spot_names("spot_", n_spots))
    if zone is not None:
        names = [f"zone_{k}" for k in range(n_zones)]
        obs[ZONE] = pd.Categorical.from_codes(zone, categories=names)
    var = pd.DataFrame(index=_spot_names("gene_", n_genes))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[TRUTH] = truth
    adata.obsm[SPATIAL_KEY] = coords
    adata.uns[SIMULATION] = {
        "function": "simulate_field",
        "n_spots": n_spots,
        "layout": layout,
        "pattern": pattern,
        "n_genes": n_genes,
        "noise": noise,
        "noise_level": noise_level,
        "n_zones": n_zones,
        "spacing": spacing,
        "length_scale": ell,
        "seed": seed,
    }
    added = ["X", f"layers['{TRUTH}']", f"obsm['{SPATIAL_KEY}']", f"uns['{SIMULATION}']"]
    log_finish(start, added + ([f"obs['{ZONE}']"] if zone is not None else []))
    return adata


@accepts_random_state
def simulate_mixture(
    n_spots: int = 2500,
    *,
    layout: Literal["hex", "square"] = "hex",
    n_types: int = 6,
    n_genes: int = 200,
    n_cells_per_type: int = 50,
    noise: Literal["poisson", "nb", "gaussian"] = "poisson",
    noise_level: float = 0.1,
    depth: float = 1000.0,
    spacing: float = 1.0,
    length_scale: float | None = None,
    seed: int | None = 0,
) -> tuple[AnnData, AnnData]:
    """Spots that mix cell types in spatially smooth proportions, and a single-cell reference.

    Use it to try and test deconvolution (:func:`smoother.tl.deconvolve`): the true proportions and signatures
    are stored, and both the spots and the reference cells hold counts (``noise='gaussian'`` aside).

    Each type has a block of marker genes; the proportions are smooth spatial fields that sum to 1 per spot (the
    generative model is in Notes).

    Parameters
    ----------
    n_spots
        Number of spots (>= 1).
    layout
        ``'hex'`` (Visium-like) or ``'square'`` lattice, see :func:`lattice`.
    n_types
        Number of cell types (>= 1).
    n_genes
        Number of genes (>= ``n_types``, so that every type has a marker).
    n_cells_per_type
        Number of reference cells per type (>= 1).
    noise
        Noise model of the spots: ``'poisson'``, ``'nb'`` or ``'gaussian'``.
    noise_level
        Dispersion :math:`\\phi > 0` for ``'nb'``; relative noise for ``'gaussian'``; unused for ``'poisson'``.
    depth
        Expected total count of a spot (and median total count of a reference cell).
    spacing
        Distance between neighbouring spots.
    length_scale
        Length scale of the proportion fields; default and smallest allowed value as in :func:`simulate_field`.
    seed
        Seed of the local random generator (``None`` draws one and records it). Also accepted as
        ``random_state`` (scanpy's name, used in the recorded params).

    Returns
    -------
    ``(adata_spatial, adata_reference)``. ``adata_spatial`` (``'spot_0'``, ... x ``'gene_0'``, ...) has

    ``X``
        Noisy spot expression, float32 ``(n_spots, n_genes)``.
    ``layers['truth']``
        Noise-free mean :math:`d\\, \\pi S^T`, float32 ``(n_spots, n_genes)``.
    ``obsm['props_truth']``
        True proportions, DataFrame ``(n_spots, n_types)`` with columns ``'type_0'``, ...; rows sum to 1.
    ``obsm['spatial']``
        Coordinates, float64 ``(n_spots, 2)``.
    ``varm['signature_truth']``
        True signatures :math:`S`, float64 ``(n_genes, n_types)``, columns sum to 1.
    ``uns['cell_types']``, ``uns['simulation']``
        The type names in column order; the parameters used.

    ``adata_reference`` (``'cell_0'``, ... x the same genes) has counts in ``X`` (float32),
    ``obs['cell_type']`` (categorical), and the same ``varm['signature_truth']``, ``uns['cell_types']`` and
    ``uns['simulation']``.

    Raises
    ------
    TypeError, ValueError
        As in :func:`simulate_field`; also ``n_genes < n_types`` and ``depth`` outside (0, 1e12].

    Notes
    -----
    A reference signature matrix :math:`S` (genes x types, columns sum to 1) has a block of
    ``n_genes // n_types`` marker genes per type (about 7.4x higher in that type) on top of log-normal gene
    baselines. The true proportions are :math:`\\pi_i = \\mathrm{softmax}(2 f_i)` of ``n_types`` smooth
    Gaussian-process fields :math:`f` (see :func:`simulate_field`, ``pattern='gp'``), so rows sum to 1. The
    noise-free spot expression is :math:`\\mu_i = d\\, S \\pi_i` with ``depth`` :math:`d`; ``X`` adds Poisson,
    negative binomial (variance :math:`\\mu + \\phi\\mu^2`, :math:`\\phi` = ``noise_level``) or Gaussian noise
    (standard deviation ``noise_level`` times the gene's standard deviation of :math:`\\mu` over spots).
    Reference cells of type :math:`t` are Poisson counts around :math:`d_c S_{:,t}` with a log-normal cell
    depth :math:`d_c` (median ``depth``) and log-normal biological variation per gene (sd 0.2).

    Examples
    --------
    >>> import smoother as sm
    >>> sp, ref = sm.datasets.simulate_mixture(300, n_types=3, n_genes=30, n_cells_per_type=10)
    >>> sp.obsm["props_truth"].shape, ref.n_obs
    ((300, 3), 30)
    """
    import anndata as ad

    n_spots = check_int(n_spots, "n_spots")
    layout = check_choice(layout, "layout", LAYOUTS)
    n_types = check_int(n_types, "n_types")
    n_genes = check_int(n_genes, "n_genes")
    if n_genes < n_types:
        msg = f"Expected `n_genes` >= `n_types` so that every cell type has a marker gene, found {n_genes} < {n_types}."
        raise ValueError(msg)
    n_cells_per_type = check_int(n_cells_per_type, "n_cells_per_type")
    noise = check_choice(noise, "noise", NOISES)
    noise_level = _check_noise_level(noise_level, noise)
    depth = check_real(depth, "depth", low=0.0, high=_MAX_DEPTH, low_open=True, example="1000.0")
    spacing = _check_spacing(spacing)
    seed = check_seed(seed)
    ell = check_real(length_scale, "length_scale", low=0.0, low_open=True, allow_none=True, example="5.0")
    check_size(n_spots, n_genes, "n_spots", "n_genes")
    check_size(n_types * n_cells_per_type, n_genes, "n_types * n_cells_per_type", "n_genes")
    coords, ell = _lattice_and_length_scale(n_spots, layout, spacing, ell, field=True)

    start = log_start(f"simulating {n_spots} spots mixing {n_types} cell types, {n_genes} genes")
    rng = np.random.default_rng(seed)
    types = [f"type_{t}" for t in range(n_types)]

    # signatures: gene baselines x small type noise x marker blocks, columns normalized to sum 1
    log_sig = rng.normal(0.0, 1.0, size=(n_genes, 1)) + rng.normal(0.0, 0.3, size=(n_genes, n_types))
    n_markers = n_genes // n_types
    marker_gene = np.arange(n_markers * n_types)
    log_sig[marker_gene, marker_gene // n_markers] += _MARKER_LOGFOLD
    sig = np.exp(log_sig)
    sig /= sig.sum(axis=0, keepdims=True)

    # spatially smooth proportions
    logits = _PROP_SHARPNESS * gaussian_fields(coords, n_types, ell, rng)
    logits -= logits.max(axis=1, keepdims=True)
    props = np.exp(logits)
    props /= props.sum(axis=1, keepdims=True)

    mean = depth * (props @ sig.T)
    truth = mean.astype(np.float32)
    if noise == "gaussian":
        sd = mean.std(axis=0, keepdims=True)
        X = (mean + noise_level * sd * rng.standard_normal(mean.shape)).astype(np.float32)
    else:
        X = _add_count_noise(mean, noise, noise_level, rng)
    del mean

    # single-cell reference
    cell_type = np.repeat(np.arange(n_types), n_cells_per_type)
    n_cells = cell_type.size
    cell_depth = depth * np.exp(0.2 * rng.standard_normal((n_cells, 1)))
    bio = np.exp(0.2 * rng.standard_normal((n_cells, n_genes)))
    ref_X = rng.poisson(cell_depth * sig.T[cell_type] * bio).astype(np.float32)

    params = {
        "function": "simulate_mixture",
        "n_spots": n_spots,
        "layout": layout,
        "n_types": n_types,
        "n_genes": n_genes,
        "n_cells_per_type": n_cells_per_type,
        "noise": noise,
        "noise_level": noise_level,
        "depth": depth,
        "spacing": spacing,
        "length_scale": ell,
        "seed": seed,
    }
    genes = _spot_names("gene_", n_genes)
    obs_names = _spot_names("spot_", n_spots)
    spatial = ad.AnnData(X=X, obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=genes))
    spatial.layers[TRUTH] = truth
    spatial.obsm[SPATIAL_KEY] = coords
    spatial.obsm[PROPS_TRUTH] = pd.DataFrame(props, index=obs_names, columns=types)
    spatial.varm[SIGNATURE_TRUTH] = sig
    spatial.uns[CELL_TYPES] = list(types)
    spatial.uns[SIMULATION] = dict(params)

    ref_obs = pd.DataFrame(
        {CELL_TYPE: pd.Categorical.from_codes(cell_type, categories=types)},
        index=_spot_names("cell_", n_cells),
    )
    reference = ad.AnnData(X=ref_X, obs=ref_obs, var=pd.DataFrame(index=genes.copy()))
    reference.varm[SIGNATURE_TRUTH] = sig.copy()
    reference.uns[CELL_TYPES] = list(types)
    reference.uns[SIMULATION] = dict(params)
    log_finish(
        start,
        ["X", f"layers['{TRUTH}']", f"obsm['{PROPS_TRUTH}']", f"obsm['{SPATIAL_KEY}']", f"varm['{SIGNATURE_TRUTH}']"],
    )
    return spatial, reference
