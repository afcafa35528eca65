"""Do the defaults of ``sm.tl.smooth`` / ``sm.tl.impute`` beat naive baselines on data that are not from our model?

Semi-real data (issue 11): the real DLPFC 151673 Visium geometry (3,611 annotated spots) with the real layer-level
marker log-expression of 350 genes (``../shared/data`` or ``$SMOOTHER_DATA_DIR``) as the truth, so the signal is
piecewise constant over the cortical layers (not a Gaussian random field). Two noise models:

- ``log+noise``: truth + N(0, 1) (RMSE of the raw data 1.0);
- ``nb_counts``: counts ~ NB(mean = depth_s * p_{g, layer}, size 5) with p the layer's expression share
  (2^logexp normalized over the 350 genes) and a log-normal depth per spot (median 30,000 counts over the 350
  genes, sd 0.5 in log); observed = log1p(CPM), truth = log1p(1e6 * p).

Smoothing baselines: the raw data and naive averaging over each spot and its 6 nearest neighbours applied twice.
Imputation: a contiguous 5% "tear" (the spots inside a 4:1 ellipse at the tissue centre) is removed; baselines
fill it with the global mean of the observed spots or the mean of the 6 nearest observed spots. RMSE against the
truth over all spots (smoothing) or the torn spots (imputation).

Run: ``python benchmarks/smooth_defaults.py TAG`` (e.g. ``before`` / ``after``); the runs of every tag are kept in
benchmarks/results/smooth_defaults.json and tabulated in smooth_defaults.md.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def data_dir() -> Path | None:
    """``$SMOOTHER_DATA_DIR`` or ``../shared/data`` beside the repository, when it holds the DLPFC files."""
    for d in (os.environ.get("SMOOTHER_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if d and (Path(d) / "DLPFC_151673_coords.txt").is_file():
            return Path(d)
    return None


def load(d: Path):
    """Coordinates ``(n, 2)``, layer labels ``(n,)`` and the ``(n_genes, n_layers)`` marker table (log scale)."""
    import pandas as pd

    coords = pd.read_csv(d / "DLPFC_151673_coords.txt", sep=r"\s+", quotechar='"')
    ann = pd.read_csv(d / "DLPFC_151673_layer_annotation.txt", sep=r"\s+", quotechar='"')
    ann.index = [i.rsplit(".", 1)[0] for i in ann.index]
    markers = pd.read_csv(d / "DLPFC_151673_marker_log_exp_by_layer.txt", sep=r"\s+", quotechar='"')
    markers.columns = [c.split("_")[-1].replace("Layer", "L") for c in markers.columns]
    common = coords.index.intersection(ann.index)
    layers = ann.loc[common, "layer"].astype(str).to_numpy()
    keep = np.isin(layers, markers.columns)
    return coords.loc[common].to_numpy(float)[keep], layers[keep], markers


def simulate(coords, layers, markers, kind: str, seed: int = 0, genes=None):
    """``(Y, truth)`` for ``kind`` in {'log+noise', 'nb_counts'} (see the module docstring)."""
    rng = np.random.default_rng(seed)
    M = markers.to_numpy(float) if genes is None else markers.to_numpy(float)[genes]
    idx = np.array([list(markers.columns).index(lay) for lay in layers])
    if kind == "log+noise":
        truth = M.T[idx]
        return truth + rng.normal(size=truth.shape), truth
    p = 2.0 ** (M - M.max(axis=0))
    p = (p / p.sum(axis=0)).T[idx]  # spot x gene expression share of its layer
    depth = 3e4 * np.exp(rng.normal(scale=0.5, size=(len(idx), 1)))
    size = 5.0
    mu = depth * p
    counts = rng.negative_binomial(size, size / (size + mu))
    lib = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(1e6 * counts / lib), np.log1p(1e6 * p)


def knn_average_twice(coords, Y, k=6):
    """Naive baseline: the mean over each spot and its ``k`` nearest neighbours, applied twice."""
    from sklearn.neighbors import NearestNeighbors

    _, nb = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)  # self included
    Z = Y[nb].mean(axis=1)
    return Z[nb].mean(axis=1)


def tear(coords, frac=0.05):
    """Boolean mask of a contiguous ``frac`` of the spots: those inside a 4:1 ellipse at the tissue centre."""
    c = coords - np.median(coords, axis=0)
    d = (c[:, 0] / 4.0) ** 2 + c[:, 1] ** 2
    return d <= np.quantile(d, frac)


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def supported(func, kwargs) -> bool:
    names = inspect.signature(func).parameters
    return all(k in names for k in kwargs)


SMOOTH_RUNS = {
    "default": {},
    "lambda=1, centred": {"lambda_spatial": 1.0},
    "auto (rho=0.99)": {"lambda_spatial": "auto", "rho": 0.99},
    "auto, rho=1": {"lambda_spatial": "auto", "rho": 1.0},
    "lambda=10, rho=0.99": {"lambda_spatial": 10.0, "rho": 0.99},
    "lambda=1, rho=0.99, center=False (the old default)": {"lambda_spatial": 1.0, "rho": 0.99, "center": False},
    "auto, rho=0.99, center=False": {"lambda_spatial": "auto", "rho": 0.99, "center": False},
    "auto, rho=0.99, center=True": {"lambda_spatial": "auto", "rho": 0.99, "center": True},
    "lambda=10, rho=0.99, center=True": {"lambda_spatial": 10.0, "rho": 0.99, "center": True},
    "auto, sar (unnormalized)": {"lambda_spatial": "auto", "prior": "sar", "rho": 0.99},
}

IMPUTE_RUNS = {
    "default": {},
    "fixed_obs, rho=0.99": {"rho": 0.99},
    "fixed_obs, rho=1": {"rho": 1.0},
    "fixed_obs, rho=0.99, center=True": {"rho": 0.99, "center": True},
    "joint, lambda=5, rho=1": {"fixed_obs": False, "lambda_spatial": 5.0, "rho": 1.0},
    "joint, auto, rho=1": {"fixed_obs": False, "lambda_spatial": "auto", "rho": 1.0},
    "joint, auto (default rho)": {"fixed_obs": False, "lambda_spatial": "auto"},
    "fixed_obs, rho=0.99, center=False (the old default)": {"rho": 0.99, "center": False},
}


def run(tag: str, seed: int = 0) -> dict:
    import anndata as ad
    from sklearn.neighbors import NearestNeighbors

    import smoother as sm

    sm.settings.progress_bar = False
    d = data_dir()
    coords, layers, markers = load(d)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    out = {
        "tag": tag,
        "commit": commit.strip(),
        "load_average_at_start": list(os.getloadavg()),
        "n_spots": len(coords),
        "n_genes": markers.shape[0],
        "smooth": {},
        "impute": {},
    }
    miss = tear(coords)
    for kind in ("log+noise", "nb_counts"):
        Y, truth = simulate(coords, layers, markers, kind, seed)
        a = ad.AnnData(Y.astype(np.float32))
        a.obsm["spatial"] = coords
        sm.pp.spatial_graph(a)
        res = {"raw": rmse(Y, truth), "naive kNN average x2": rmse(knn_average_twice(coords, Y), truth)}
        times = {}
        for name, kw in SMOOTH_RUNS.items():
            if not supported(sm.tl.smooth, kw):
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b = sm.tl.smooth(a, copy=True, **kw)
            times[name] = time.perf_counter() - t0
            res[name] = rmse(b.layers["smoothed"], truth)
            res[name + " [lambda]"] = b.uns["smoothed"]["params"]["lambda"]
        out["smooth"][kind] = {"rmse": res, "seconds": times}
        # imputation of the tear
        o = a[~miss].copy()
        obs_coords, new_coords = coords[~miss], coords[miss]
        res = {"global mean fill": rmse(np.broadcast_to(Y[~miss].mean(0), truth[miss].shape), truth[miss])}
        _, nb = NearestNeighbors(n_neighbors=6).fit(obs_coords).kneighbors(new_coords)
        res["mean of 6 nearest observed"] = rmse(Y[~miss][nb].mean(axis=1), truth[miss])
        times = {}
        for name, kw in IMPUTE_RUNS.items():
            if not supported(sm.tl.impute, kw):
                continue
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = sm.tl.impute(o, new_coords, **kw)
            except (ValueError, TypeError) as e:
                res[name] = f"error: {e}"[:120]
                continue
            times[name] = time.perf_counter() - t0
            new = ~r.obs["observed"].to_numpy()
            res[name] = rmse(r.X[new], truth[miss])
            res[name + " [lambda]"] = r.uns["impute"]["params"].get("lambda")
        out["impute"][kind] = {"rmse": res, "seconds": times}
    return out


def write(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "smooth_defaults.json"
    allres = json.loads(path.read_text()) if path.is_file() else {}
    allres[result["tag"]] = result
    path.write_text(json.dumps(allres, indent=1, default=str))
    lines = [
        "# Defaults of sm.tl.smooth / sm.tl.impute vs naive baselines (DLPFC 151673 geometry and layer profiles)",
        "",
        "RMSE against the truth (smoothing: all 3,611 spots; imputation: the 5% torn spots). Generated by "
        "`benchmarks/smooth_defaults.py`; see its docstring for the data. `[lambda]` rows: the lambda used.",
        "",
        "`default` is `sm.tl.smooth(adata)` / `sm.tl.impute(adata, coords_new)` with the defaults of that commit: "
        "`before` (b46625f) prior='icar', rho=0.99, lambda_spatial=1.0, the prior's mean 0 (no centring) and "
        "fixed observations for imputation; `centred` (814d8f7) the same with center=True; `after` "
        "lambda_spatial='auto' and center=True for smooth, center=True for impute (rho=0.99, fixed_obs=True kept). "
        "Columns without a value: the option did not exist in that commit.",
        "",
    ]
    for task in ("smooth", "impute"):
        for kind in ("log+noise", "nb_counts"):
            lines += [f"## {task}: {kind}", "", "| method | " + " | ".join(allres) + " |"]
            lines.append("| --- |" + " --- |" * len(allres))
            names = []
            for r in allres.values():
                names += [n for n in r[task][kind]["rmse"] if n not in names]
            for n in names:
                cells = []
                for r in allres.values():
                    v = r[task][kind]["rmse"].get(n, "")
                    cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Commits: " + ", ".join(f"{t}: {r['commit']}" for t, r in allres.items()), ""]
    (OUT / "smooth_defaults.md").write_text("\n".join(lines))


if __name__ == "__main__":
    if data_dir() is None:
        print("DLPFC data not found (../shared/data or $SMOOTHER_DATA_DIR); skipping")
        sys.exit(0)
    result = run(sys.argv[1] if len(sys.argv) > 1 else "current")
    write(result)
    print(json.dumps({k: result[k] for k in ("smooth", "impute")}, indent=1, default=str))
