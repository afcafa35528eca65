"""Neutral simulators for benchmarking cell-type deconvolution (issue 15).

Pure numpy / pandas / scipy / anndata; nothing here imports ``smoother`` (in particular not
``smoother.datasets``), so every method's venv can rebuild the same data and none of the generators is the model of
any one method.

Every generator returns ``(spatial, reference)``:

- ``spatial``: AnnData, spots x genes, integer counts in ``X`` (int32; dense for the DLPFC problem, CSR on the
  lattices), coordinates in ``obsm['spatial']``, the true proportions in ``obsm['props_truth']`` (DataFrame, one
  column per cell type of the tissue, rows sum to 1) and the generator's settings in ``uns['generator']``.
- ``reference``: single-cell AnnData, cells x the same genes, integer counts in ``X`` and the label in
  ``obs['cell_type']``.

Cell model (shared by the reference and generators b/c/d): a cell of type k with library size L (uniform in
``lib_range``, 2,000–6,000 by default) has counts ``Poisson(L * m_kg * G_g)`` per gene, where ``m_k`` is the type's
mean profile (sums to 1) and ``G_g ~ Gamma(1/phi_g, phi_g)`` (mean 1) is cell-to-cell biological noise with a
per-gene dispersion ``phi_g`` (log-normal around 0.3). Reference: 50–300 cells per type.

Generators (all seeded):

- ``nb_mixture`` (a): spot counts ``NB(mean = D_s * sum_k p_sk m_kg, dispersion psi_g)`` (Poisson-Gamma), depth
  ``D_s`` uniform in 3,000–8,000, ``psi_g`` log-normal around 0.2.
- ``cell_sum`` (b): each spot is the sum of 2–8 *held-out* cells drawn from the cell model (types drawn from the
  spot's proportions; the truth is the realised cell fractions), with a per-gene platform effect
  ``exp(N(0, 0.5^2))`` between the reference assay and the spatial assay, then thinned (binomially) to a depth
  uniform in 3,000–8,000 -- the way the Spotless benchmark (synthspot) builds spots from single cells.
- ``missing_type`` (c): as (a), but one type present in the tissue (default ``'L5'`` on DLPFC, the 4th type on a
  lattice) has no cells in the reference. The truth keeps all types; a method's estimate has no column for it, so
  scoring counts the missing type's mass as error.
- ``rare_type`` (d): as (a), with one type (default ``'L4'`` on DLPFC) scaled down to a mean proportion of 2 %.
- ``flash_model`` (e): FlashDeconv's own simulation, as described in its scalability benchmark (reproduced from
  the description, not copied): signatures ``lognormal(1, 1.5)`` per type x gene, entries below 1.5 set to 0,
  20 marker genes per type multiplied by ``U(5, 15)``, each signature scaled to 10,000; proportions
  ``Dirichlet(1)`` per spot with no spatial structure; depth ``N(20,000, 5,000)`` floored at 5,000; Poisson counts
  of the depth-scaled mixture. Their reference is the exact signature matrix; here the reference is Poisson cells
  (no biological noise) drawn from it, whose type means converge to it.

Geometries:

- ``'dlpfc'``: the 3,611 annotated spots of DLPFC 151673 (``$SMOOTHER_DATA_DIR`` or ``/work/shared/data``).
  Types = the 7 cortical layers (L1–L6, WM) with profiles from the real layer-level marker expression
  (``2**x - 1`` of the log2 table, 350 genes). Proportions: the one-hot layer labels smoothed with a Gaussian
  kernel (bandwidth 1.5 spot spacings), then per-spot ``Dirichlet(20 * (smoothed + 0.01))`` noise.
- ``'lattice'``: a Visium-like hex lattice of ``n_spots`` (spacing 1), K = 10 types, 2,000 genes with synthetic
  profiles (log-normal baselines, 5 % of genes per type up 4x, per-type log-normal jitter sd 0.3); proportions =
  softmax of 3x smooth random Fourier fields (length scale ~ side / 6), i.e. smooth zones, plus the same
  Dirichlet spot noise. Built in chunks, so 1e6 spots x 2,000 genes stays within a few GB (sparse counts; use
  ``depth_range=(200, 800)`` for the scaling runs).

Usage::

    from deconv_generators import GENERATORS, make

    spatial, reference = make("cell_sum", geometry="dlpfc", seed=0)
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

GENERATORS = ("nb_mixture", "cell_sum", "missing_type", "rare_type", "flash_model")
DLPFC_SAMPLE = "151673"
LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")


# --------------------------------------------------------------------------------------------- geometry + profiles
def data_dir() -> Path:
    """Folder with the DLPFC 151673 text files (``$SMOOTHER_DATA_DIR`` wins over ``/work/shared/data``)."""
    for d in (os.environ.get("SMOOTHER_DATA_DIR"), "/work/shared/data"):
        if d and (Path(d) / f"DLPFC_{DLPFC_SAMPLE}_coords.txt").exists():
            return Path(d)
    raise FileNotFoundError(
        f"DLPFC_{DLPFC_SAMPLE}_coords.txt not found: set SMOOTHER_DATA_DIR to the folder holding the DLPFC files"
    )


def dlpfc_geometry():
    """Coordinates (pixels), layer label per annotated spot, and the layer profiles (genes x 7, columns sum to 1)."""
    d = data_dir()
    coords = pd.read_csv(d / f"DLPFC_{DLPFC_SAMPLE}_coords.txt", sep=" ")
    ann = pd.read_csv(d / f"DLPFC_{DLPFC_SAMPLE}_layer_annotation.txt", sep=" ")
    ann.index = ann.index.str.replace(r"\.\d+$", "", regex=True)  # barcodes carry a '.<n>' suffix there
    ann = ann[~ann.index.duplicated()]
    keep = coords.index.intersection(ann.index)
    xy = coords.loc[keep].to_numpy(dtype=np.float64)
    layer = ann.loc[keep, "layer"].astype(str).to_numpy()
    logexp = pd.read_csv(d / f"DLPFC_{DLPFC_SAMPLE}_marker_log_exp_by_layer.txt", sep=" ")
    prof = np.clip(np.exp2(logexp.to_numpy(dtype=np.float64)) - 1.0, 0.0, None)
    prof /= prof.sum(0, keepdims=True)
    profiles = pd.DataFrame(prof, index=logexp.index.astype(str), columns=list(LAYERS))
    return pd.Index(keep, name=None), xy, layer, profiles


def hex_lattice(n: int) -> np.ndarray:
    """``n`` points of a hexagonal lattice with spacing 1 (rows offset by half a spacing), roughly square."""
    side = int(np.ceil(np.sqrt(n * np.sqrt(3) / 2)))
    i = np.arange(n)
    r, c = i // side, i % side
    return np.column_stack([c + 0.5 * (r % 2), r * np.sqrt(3) / 2]).astype(np.float64)


def synthetic_profiles(n_types: int, n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """genes x types mean profiles (columns sum to 1): log-normal baselines, 5 % markers per type at 4x, jitter."""
    base = rng.normal(0.0, 1.5, size=n_genes)
    logm = base[:, None] + rng.normal(0.0, 0.3, size=(n_genes, n_types))
    n_mark = max(1, int(round(0.05 * n_genes)))
    for k in range(n_types):
        logm[rng.choice(n_genes, n_mark, replace=False), k] += np.log(4.0)
    m = np.exp(logm)
    m /= m.sum(0, keepdims=True)
    return pd.DataFrame(m, index=[f"gene{g}" for g in range(n_genes)], columns=[f"type{k}" for k in range(n_types)])


def _gauss_smooth_labels(xy: np.ndarray, labels: np.ndarray, types, bandwidth: float) -> np.ndarray:
    """Gaussian-kernel average of one-hot labels over neighbours within 4 bandwidths (sparse, no n x n matrix)."""
    onehot = (labels[:, None] == np.asarray(types)[None, :]).astype(np.float64)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(4.0 * bandwidth, output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(xy))])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(xy))])
    w = np.exp(-0.5 * np.sum((xy[i] - xy[j]) ** 2, axis=1) / bandwidth**2)
    W = sp.csr_matrix((w, (i, j)), shape=(len(xy), len(xy)))
    S = W @ onehot
    return S / S.sum(1, keepdims=True)


def _fourier_zones(xy: np.ndarray, n_types: int, length: float, rng: np.random.Generator, chunk: int = 50_000):
    """Softmax of 3x smooth random Fourier fields (8 waves per type, wavelength ~ ``length``): smooth zones."""
    freq = rng.normal(size=(n_types, 8, 2)) * (2 * np.pi / length)
    phase = rng.uniform(0, 2 * np.pi, size=(n_types, 8))
    amp = rng.normal(size=(n_types, 8)) / np.sqrt(8 / 2)
    out = np.empty((len(xy), n_types))
    for s in range(0, len(xy), chunk):
        f = np.einsum("kj,nkj->nk", amp, np.sin(np.einsum("kjd,nd->nkj", freq, xy[s : s + chunk]) + phase[None]))
        e = np.exp(3.0 * (f - f.max(1, keepdims=True)))
        out[s : s + chunk] = e / e.sum(1, keepdims=True)
    return out


def _dirichlet_noise(base: np.ndarray, rng: np.random.Generator, conc: float = 20.0, floor: float = 0.01):
    """Per-spot Dirichlet(conc * (base + floor)) around a smooth base (gamma draws, chunk-friendly)."""
    g = rng.gamma(conc * (base + floor))
    g = np.maximum(g, 1e-300)
    return g / g.sum(1, keepdims=True)


def _geometry(geometry: str, n_spots: int | None, n_types: int, n_genes: int, rng: np.random.Generator):
    """(names, coords, smooth base proportions, profiles genes x types, extra obs) for a geometry."""
    if geometry == "dlpfc":
        names, xy, layer, profiles = dlpfc_geometry()
        spacing = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
        base = _gauss_smooth_labels(xy, layer, profiles.columns, 1.5 * spacing)
        return names, xy, base, profiles, {"layer": pd.Categorical(layer, categories=list(LAYERS))}
    if geometry == "lattice":
        if n_spots is None:
            raise ValueError("geometry='lattice' needs n_spots")
        xy = hex_lattice(int(n_spots))
        side = max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
        profiles = synthetic_profiles(n_types, n_genes, rng)
        base = _fourier_zones(xy, n_types, side / 6.0, rng)
        return pd.Index([f"spot{i}" for i in range(len(xy))]), xy, base, profiles, {}
    raise ValueError(f"geometry must be 'dlpfc' or 'lattice', got {geometry!r}")


# ------------------------------------------------------------------------------------------------------ cell model
def gene_dispersion(n_genes: int, median: float, rng: np.random.Generator) -> np.ndarray:
    """Per-gene NB dispersion, log-normal (sd 0.5 on the log scale) around ``median``."""
    return median * np.exp(rng.normal(0.0, 0.5, size=n_genes))


def poisson_gamma(mean: np.ndarray, phi: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """NB counts as Poisson(mean * Gamma(1/phi, phi)) (``phi=None``: plain Poisson); int32."""
    if phi is not None:
        shape = 1.0 / phi
        mean = mean * rng.gamma(shape, 1.0 / shape, size=mean.shape)
    return rng.poisson(mean).astype(np.int32)


def sample_cells(
    profiles: np.ndarray,
    cell_types: np.ndarray,
    rng: np.random.Generator,
    *,
    phi: np.ndarray | None,
    lib_range=(2000, 6000),
    chunk: int = 20_000,
) -> np.ndarray:
    """Counts (cells x genes, int32) of cells of the given type indices; profiles are genes x types, columns sum 1."""
    out = np.empty((len(cell_types), profiles.shape[0]), dtype=np.int32)
    for s in range(0, len(cell_types), chunk):
        t = cell_types[s : s + chunk]
        lib = rng.uniform(*lib_range, size=len(t))
        out[s : s + chunk] = poisson_gamma(lib[:, None] * profiles[:, t].T, phi, rng)
    return out


def make_reference(
    profiles: pd.DataFrame,
    rng: np.random.Generator,
    *,
    phi: np.ndarray | None,
    cells_range=(50, 300),
    lib_range=(2000, 6000),
    drop=(),
) -> ad.AnnData:
    """Single-cell reference: ``cells_range`` cells per type (types in ``drop`` get none)."""
    types = [t for t in profiles.columns if t not in set(drop)]
    idx = {t: i for i, t in enumerate(profiles.columns)}
    n_per = rng.integers(cells_range[0], cells_range[1] + 1, size=len(types))
    labels = np.repeat(np.array(types, dtype=object), n_per)
    ti = np.array([idx[t] for t in labels], dtype=np.int64)
    X = sample_cells(profiles.to_numpy(), ti, rng, phi=phi, lib_range=lib_range)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels, categories=types)}, index=[f"cell{i}" for i in range(len(labels))]
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=profiles.index.copy()))


# ----------------------------------------------------------------------------------------------------- spot models
def _nb_spots(P, profiles, depth_range, psi, rng, sparse, chunk=20_000):
    n = P.shape[0]
    parts = []
    m = profiles.to_numpy()
    for s in range(0, n, chunk):
        p = P[s : s + chunk]
        depth = rng.uniform(*depth_range, size=len(p))
        Y = poisson_gamma(depth[:, None] * (p @ m.T), psi, rng)
        parts.append(sp.csr_matrix(Y) if sparse else Y)
    return sp.vstack(parts, format="csr") if sparse else np.vstack(parts)


def _cell_sum_spots(P, profiles, depth_range, phi, platform_sd, cells_range, lib_range, rng, sparse, chunk=5_000):
    """Spots summed from 2–8 fresh cells (types drawn from P), with a platform effect, thinned to the target depth."""
    n, K = P.shape
    effect = np.exp(rng.normal(0.0, platform_sd, size=profiles.shape[0]))
    m = profiles.to_numpy() * effect[:, None]
    m /= m.sum(0, keepdims=True)
    truth = np.empty_like(P)
    parts = []
    for s in range(0, n, chunk):
        p = P[s : s + chunk]
        n_cells = rng.integers(cells_range[0], cells_range[1] + 1, size=len(p))
        counts = np.stack([rng.multinomial(c, q / q.sum()) for c, q in zip(n_cells, p, strict=True)])
        truth[s : s + chunk] = counts / n_cells[:, None]
        spot_of_cell = np.repeat(np.arange(len(p)), n_cells)
        type_of_cell = np.concatenate([np.repeat(np.arange(K), c) for c in counts])
        cells = sample_cells(m, type_of_cell, rng, phi=phi, lib_range=lib_range)
        Y = np.zeros((len(p), m.shape[0]), dtype=np.int64)
        np.add.at(Y, spot_of_cell, cells)
        target = rng.uniform(*depth_range, size=len(p))
        frac = np.minimum(1.0, target / np.maximum(Y.sum(1), 1))
        Y = rng.binomial(Y, frac[:, None]).astype(np.int32)
        parts.append(sp.csr_matrix(Y) if sparse else Y)
    Y = sp.vstack(parts, format="csr") if sparse else np.vstack(parts)
    return Y, truth, effect


def _flash_signatures(n_types: int, n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """FlashDeconv's simulated signatures (types x genes, rows sum to 10,000), from its benchmark's description."""
    ref = rng.lognormal(1.0, 1.5, size=(n_types, n_genes))
    ref[ref < 1.5] = 0.0
    for k in range(n_types):
        idx = rng.choice(n_genes, 20, replace=False)
        ref[k, idx] *= rng.uniform(5.0, 15.0, size=20)
    return ref / ref.sum(1, keepdims=True) * 1e4


# ------------------------------------------------------------------------------------------------------ the API
def make(
    generator: str,
    *,
    geometry: str = "dlpfc",
    n_spots: int | None = None,
    n_types: int = 10,
    n_genes: int = 2000,
    seed: int = 0,
    depth_range=(3000, 8000),
    spot_dispersion: float = 0.2,
    cell_dispersion: float = 0.3,
    platform_sd: float = 0.5,
    cells_per_spot=(2, 8),
    missing: str | None = None,
    rare: str | None = None,
    rare_mean: float = 0.02,
    sparse: bool | None = None,
):
    """Build one benchmark problem; see the module docstring. Returns ``(spatial, reference)`` AnnData objects.

    ``n_types`` / ``n_genes`` apply to the lattice (and to ``flash_model``'s synthetic signatures there); the DLPFC
    problem has the 7 layer types and the 350 genes of the marker table. ``sparse`` (default: lattice only) stores
    spatial counts as CSR.
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    rng = np.random.default_rng([seed, GENERATORS.index(generator)])
    sparse = geometry == "lattice" if sparse is None else bool(sparse)
    names, xy, base, profiles, extra_obs = _geometry(geometry, n_spots, n_types, n_genes, rng)
    types = list(profiles.columns)
    info = {"generator": generator, "geometry": geometry, "seed": seed, "depth_range": list(depth_range)}

    if generator == "flash_model":
        sig = _flash_signatures(len(types), profiles.shape[0], rng)
        profiles = pd.DataFrame((sig / sig.sum(1, keepdims=True)).T, index=profiles.index, columns=types)
        P = rng.dirichlet(np.ones(len(types)), size=len(xy))
        depth = np.maximum(rng.normal(20_000, 5_000, size=len(xy)), 5_000)
        parts = []
        for s in range(0, len(xy), 20_000):
            mean = depth[s : s + 20_000, None] * (P[s : s + 20_000] @ profiles.to_numpy().T)
            Y = poisson_gamma(mean, None, rng)
            parts.append(sp.csr_matrix(Y) if sparse else Y)
        Y = sp.vstack(parts, format="csr") if sparse else np.vstack(parts)
        reference = make_reference(profiles, rng, phi=None)
        truth = P
        info.update(depth="N(20000, 5000) floored at 5000", proportions="Dirichlet(1), no spatial structure")
    else:
        P = _dirichlet_noise(base, rng)
        if generator == "rare_type":
            rare = rare or ("L4" if geometry == "dlpfc" else types[3])
            k = types.index(rare)
            for _ in range(20):  # rescale column k, renormalize spots; converges to the target mean
                P[:, k] *= rare_mean / P[:, k].mean()
                P /= P.sum(1, keepdims=True)
            info.update(rare=rare, rare_mean=float(P[:, k].mean()))
        phi_cell = gene_dispersion(profiles.shape[0], cell_dispersion, rng)
        drop = ()
        if generator == "missing_type":
            missing = missing or ("L5" if geometry == "dlpfc" else types[3])
            if missing not in types:
                raise ValueError(f"missing={missing!r} is not a type: {types}")
            drop = (missing,)
            info.update(missing=missing)
        reference = make_reference(profiles, rng, phi=phi_cell, drop=drop)
        if generator == "cell_sum":
            Y, truth, effect = _cell_sum_spots(
                P, profiles, depth_range, phi_cell, platform_sd, cells_per_spot, (2000, 6000), rng, sparse
            )
            info.update(platform_sd=platform_sd, cells_per_spot=list(cells_per_spot))
        else:
            psi = gene_dispersion(profiles.shape[0], spot_dispersion, rng)
            Y = _nb_spots(P, profiles, depth_range, psi, rng, sparse)
            truth = P
            info.update(spot_dispersion_median=spot_dispersion)
    info.update(n_spots=int(len(xy)), n_genes=int(profiles.shape[0]), n_types=len(types))

    obs = pd.DataFrame(extra_obs, index=names)
    spatial = ad.AnnData(X=Y, obs=obs, var=pd.DataFrame(index=profiles.index.copy()))
    spatial.obsm["spatial"] = xy
    spatial.obsm["props_truth"] = pd.DataFrame(truth, index=names, columns=types)
    spatial.uns["generator"] = info
    reference.uns["generator"] = info
    return spatial, reference


def make_all(geometry: str = "dlpfc", seed: int = 0, **kw):
    """``{name: (spatial, reference)}`` for every generator."""
    return {g: make(g, geometry=geometry, seed=seed, **kw) for g in GENERATORS}


if __name__ == "__main__":
    import time

    for g in GENERATORS:
        t = time.perf_counter()
        s, r = make(g)
        X = s.X
        print(
            f"{g:13s} {s.n_obs} spots x {s.n_vars} genes, depth {np.median(np.asarray(X.sum(1))):.0f}, "
            f"ref {r.n_obs} cells / {r.obs['cell_type'].nunique()} types, "
            f"{time.perf_counter() - t:.1f} s"
        )
