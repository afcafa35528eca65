"""The human DLPFC Visium section 151673 (spatialLIBD): real geometry, real layers, counts generated from them.

The three public text files come from the smoother-omics repository (``docs/source/tutorials/data/``). They are read
from the folder named by the environment variable ``SMOOTHER_DATA_DIR`` when it is set (offline use, CI), otherwise
downloaded once with pooch into a cache and verified by their SHA-256 checksums. pooch is imported only here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._constants import SIMULATION, SPATIAL_KEY, TRUTH
from .._settings import log_finish, log_start
from .._validation import check_bool, check_choice, check_random_state, check_real

if TYPE_CHECKING:
    from anndata import AnnData

#: Environment variable naming a local folder that holds the three files (no download then).
DATA_DIR_ENV = "SMOOTHER_DATA_DIR"
#: Environment variable that moves pooch's download cache (default: the OS cache folder of ``smoother``).
CACHE_DIR_ENV = "SMOOTHER_CACHE_DIR"
BASE_URL = "https://raw.githubusercontent.com/JiayuSuPKU/Smoother/main/docs/source/tutorials/data/"
COORDS_FILE = "DLPFC_151673_coords.txt"
LAYERS_FILE = "DLPFC_151673_layer_annotation.txt"
MARKERS_FILE = "DLPFC_151673_marker_log_exp_by_layer.txt"
#: SHA-256 of each file, computed from the published files.
SHA256 = {
    COORDS_FILE: "af1bf78a618ae2b2b071a23d0c12fe83793ddacae3070abb159e2962cdef322d",
    LAYERS_FILE: "58388b4bba5e42d19abfb003354bb0dd0f542f7bb7b28ab5e963ab3e31d46940",
    MARKERS_FILE: "1586e383bcd98ee1c98cf67bcc2ddf48b1334fa7f3eea79ea02d6ca47c165d0e",
}
#: Cortical layers in anatomical order, as named in the annotation file (the marker table says 'Layer1', ...).
LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")
LAYER_KEY = "layer"  # obs key of the annotated layer
LAYER_EXPRESSION = "layer_log2_expression"  # varm key of the real layer-level expression table

_NOISES = ("poisson", "nb")
_MAX_DEPTH = 1e9


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _how_to_fix() -> str:
    files = ", ".join(SHA256)
    return (
        f"To work offline, put the three files ({files}) from {BASE_URL} into a folder and set the environment "
        f"variable {DATA_DIR_ENV} to it, e.g. `export {DATA_DIR_ENV}=/path/to/data` (or "
        f"`os.environ[{DATA_DIR_ENV!r}] = '/path/to/data'` before the call)."
    )


def _local_files(folder: str) -> dict[str, Path]:
    """The three files in ``folder`` (``SMOOTHER_DATA_DIR``), checked for presence and checksum."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        msg = f"{DATA_DIR_ENV}={folder!r} is not a folder. " + _how_to_fix()
        raise FileNotFoundError(msg)
    paths = {name: root / name for name in SHA256}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        msg = f"{DATA_DIR_ENV}={folder!r} lacks {missing}. " + _how_to_fix()
        raise FileNotFoundError(msg)
    for name, p in paths.items():
        if _sha256(p) != SHA256[name]:
            msg = (
                f"{p} is not the published file (its SHA-256 checksum differs); replace it with the file from "
                f"{BASE_URL}{name}."
            )
            raise ValueError(msg)
    return paths


def _cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("smoother"))


def _downloaded_files(download: bool) -> dict[str, Path]:
    """The three files from pooch's cache, downloaded first when missing (``download=True``)."""
    try:
        import pooch
    except ImportError as e:
        msg = "Downloading the DLPFC data needs the package `pooch` (`pip install pooch`). " + _how_to_fix()
        raise ImportError(msg) from e
    cache = _cache_dir()
    if not download:
        paths = {name: cache / name for name in SHA256}
        if all(p.is_file() and _sha256(p) == SHA256[name] for name, p in paths.items()):
            return paths
        msg = f"The DLPFC 151673 files are not in the cache {cache} and `download=False`. " + _how_to_fix()
        raise OSError(msg)
    fetcher = pooch.create(
        path=cache, base_url=BASE_URL, registry={name: f"sha256:{h}" for name, h in SHA256.items()}, retry_if_failed=2
    )
    paths = {}
    for name in SHA256:
        try:
            paths[name] = Path(fetcher.fetch(name))
        except Exception as e:  # network errors (requests), an unwritable cache (OSError), a checksum mismatch
            msg = f"Could not download {name} from {BASE_URL} ({type(e).__name__}: {e}). " + _how_to_fix()
            raise OSError(msg) from e
    return paths


def dlpfc_files(*, download: bool = True) -> dict[str, Path]:
    """Paths of the three DLPFC 151673 files: from ``SMOOTHER_DATA_DIR`` when set, else from pooch's cache.

    Parameters
    ----------
    download
        Download the files into the cache when they are not there (once; verified by SHA-256). ``False`` never
        touches the network.

    Raises
    ------
    FileNotFoundError
        ``SMOOTHER_DATA_DIR`` is set but is not a folder holding the three files.
    ValueError
        A local file differs from the published one (checksum).
    OSError
        No ``SMOOTHER_DATA_DIR`` and the download failed (no network) or is disabled; the message says how to
        set ``SMOOTHER_DATA_DIR``.
    ImportError
        No ``SMOOTHER_DATA_DIR`` and pooch is not installed.
    """
    check_bool(download, "download")
    folder = os.environ.get(DATA_DIR_ENV)
    if folder:
        return _local_files(folder)
    return _downloaded_files(download)


def _read_table(path: Path) -> pd.DataFrame:
    # R's write.table layout: a header without the row-name column, quoted strings, space separated
    return pd.read_csv(path, sep=" ", quotechar='"', header=0)


def read_dlpfc_151673(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Coordinates ``(n_spots, 2)`` (x = pixel column, y = pixel row, full resolution), the layer of every
    annotated spot (categorical, :data:`LAYERS` order) and the layer-level table (genes x layers, log2 scale).

    Only the spots with a layer label are returned, in the order of the coordinate file.
    """
    coords = _read_table(paths[COORDS_FILE])
    ann = _read_table(paths[LAYERS_FILE])
    markers = _read_table(paths[MARKERS_FILE])
    ann.index = ann.index.astype(str).str.replace(r"\.\d+$", "", regex=True)  # 'barcode-1.8' -> 'barcode-1'
    layer = ann["layer"].astype(str)
    layer = layer[layer.isin(LAYERS)]
    keep = coords.index[coords.index.isin(layer.index)]
    xy = coords.loc[keep, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].astype(np.float64)
    labels = pd.Series(pd.Categorical(layer.loc[keep].to_numpy(), categories=list(LAYERS)), index=keep, name="layer")
    markers.columns = [c.rsplit("_", 1)[-1].replace("Layer", "L") for c in markers.columns]
    markers = markers[list(LAYERS)].astype(np.float64)
    markers.index = markers.index.astype(str)
    return xy, labels, markers


def dlpfc_151673(
    *,
    depth: float = 3000.0,
    noise: Literal["poisson", "nb"] = "poisson",
    noise_level: float = 0.1,
    random_state: int | None = 0,
    download: bool = True,
) -> AnnData:
    r"""Real human cortex (DLPFC Visium section 151673): real spot layout and layers, with generated counts.

    Real spot positions and cortical layers; the counts are generated from the real layer-level expression.

    Use it to try smoother on real tissue geometry with a known truth: the layer of every spot is the expert
    annotation of the spatialLIBD study (Maynard et al., Nature Neuroscience 2021), and the expected expression of
    every spot is its layer's real expression profile. **The spot-level counts are generated** (seeded by
    ``random_state``); they are not the measured counts of the section.

    The data are three public text files of the smoother-omics repository (``docs/source/tutorials/data/``). They
    are read from the folder named by the environment variable ``SMOOTHER_DATA_DIR`` when it is set (nothing is
    downloaded), otherwise downloaded once with pooch into a cache (``SMOOTHER_CACHE_DIR``, default the user cache
    folder) and verified by SHA-256 checksums.

    Parameters
    ----------
    depth
        Median total count of a spot over the whole transcriptome (Visium-like: a few thousand); the 350 marker
        genes hold about 8% of it.
    noise
        ``'poisson'`` counts, or ``'nb'``: negative binomial counts with variance :math:`\mu + \phi \mu^2`.
    noise_level
        The dispersion :math:`\phi > 0` of ``'nb'`` (unused for ``'poisson'``).
    random_state
        Seed of the counts; the same seed gives the same data. ``None`` draws a seed (recorded in
        ``uns['simulation']``).
    download
        Download the files when they are neither in ``SMOOTHER_DATA_DIR`` nor in the cache; ``False`` never uses
        the network.

    Returns
    -------
    AnnData with the 3,611 annotated spots (the 28 spots of the section without a layer label are left out) and
    the 350 marker genes (Ensembl IDs):

    ``X``
        Generated counts, float32 ``(n_spots, 350)`` holding non-negative integers.
    ``layers['truth']``
        Their expectation :math:`\mu`, float32.
    ``obs['layer']``
        Real annotated layer, categorical ``'L1'`` ... ``'L6'``, ``'WM'`` (white matter).
    ``obs['library_size']``
        The spot's generated total count over the whole transcriptome (for CPM normalization).
    ``obsm['spatial']``
        Real spot centres in full-resolution pixels, float64 ``(n_spots, 2)``: x (column), y (row). Neighbouring
        Visium spots are about 138 pixels apart.
    ``varm['layer_log2_expression']``
        The real layer-level expression table, DataFrame (genes x 7 layers).
    ``uns['simulation']``, ``uns['dataset']``
        The parameters used; the source files, their checksums and the study.

    Raises
    ------
    TypeError, ValueError
        A bad argument (checked before anything is read or downloaded).
    OSError
        ``SMOOTHER_DATA_DIR`` is not set and the files could not be downloaded (no network, or ``download=False``
        and no cached copy); the message says how to set ``SMOOTHER_DATA_DIR``. ``FileNotFoundError`` (an
        ``OSError``) when ``SMOOTHER_DATA_DIR`` does not hold the three files.

    Notes
    -----
    The layer-level table holds :math:`v_{\ell g}`, the expression of gene :math:`g` in layer :math:`\ell` on a
    log2 scale; we read it as :math:`\log_2(\mathrm{CPM} + 1)` of the layer's pooled spots, so
    :math:`c_{\ell g} = 2^{v_{\ell g}} - 1` counts per million. A spot :math:`i` of layer :math:`\ell(i)` gets a
    library size :math:`L_i = d \exp(0.3 z_i)`, :math:`z_i \sim N(0, 1)` (median :math:`d` = ``depth``), the
    expectation :math:`\mu_{ig} = L_i c_{\ell(i) g} / 10^6` and counts :math:`X_{ig} \sim \mathrm{Poisson}(\mu_{ig})`
    (``'nb'``: a gamma-distributed rate with mean :math:`\mu_{ig}` and variance :math:`\phi \mu_{ig}^2` first).

    Examples
    --------
    >>> import smoother as sm
    >>> adata = sm.datasets.dlpfc_151673()  # doctest: +SKIP
    >>> adata.obs["layer"].value_counts().sort_index().to_dict()  # doctest: +SKIP
    {'L1': 273, 'L2': 253, 'L3': 989, 'L4': 218, 'L5': 673, 'L6': 692, 'WM': 513}
    """
    import anndata as ad

    depth = check_real(depth, "depth", low=0.0, high=_MAX_DEPTH, low_open=True, example="3000.0")
    noise = check_choice(noise, "noise", _NOISES)
    noise_level = check_real(noise_level, "noise_level", low=0.0, low_open=True, example="0.1")
    seed = check_random_state(random_state)
    check_bool(download, "download")
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    paths = dlpfc_files(download=download)

    start = log_start("loading DLPFC 151673 and generating counts from its layer profiles")
    xy, labels, markers = read_dlpfc_151673(paths)
    rng = np.random.default_rng(seed)
    cpm = np.exp2(markers.to_numpy()) - 1.0  # genes x layers
    codes = labels.cat.codes.to_numpy()
    library = depth * np.exp(0.3 * rng.standard_normal(len(codes)))
    mu = library[:, None] * cpm.T[codes] / 1e6
    rate = rng.gamma(shape=1.0 / noise_level, scale=mu * noise_level) if noise == "nb" else mu
    X = rng.poisson(rate).astype(np.float32)

    obs = pd.DataFrame({LAYER_KEY: labels.array, "library_size": library}, index=pd.Index(xy.index, dtype=object))
    var = pd.DataFrame(index=pd.Index(markers.index, dtype=object))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[TRUTH] = mu.astype(np.float32)
    adata.obsm[SPATIAL_KEY] = xy.to_numpy()
    adata.varm[LAYER_EXPRESSION] = markers.set_axis(adata.var_names, axis=0)
    adata.uns[SIMULATION] = {
        "function": "dlpfc_151673",
        "depth": depth,
        "noise": noise,
        "noise_level": noise_level if noise == "nb" else None,
        "random_state": seed,
    }
    adata.uns["dataset"] = {
        "name": "human DLPFC, Visium section 151673 (spatialLIBD; Maynard et al., Nat Neurosci 2021)",
        "source": BASE_URL,
        "sha256": dict(SHA256),
        "note": "real coordinates, layer labels and layer-level expression; spot-level counts generated",
    }
    log_finish(start, ["X", f"layers['{TRUTH}']", f"obs['{LAYER_KEY}']", f"obsm['{SPATIAL_KEY}']"])
    return adata
