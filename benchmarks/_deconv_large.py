"""Large deconvolution problems (numpy/scipy only, so every venv can rebuild the same data from the seed), and
one worker per method.

Usage: python _deconv_large.py METHOD N_SPOTS OUT.json  with METHOD in {smoother, smoother_auto, flashdeconv}.
Data: N hex-lattice spots, K = 10 types, 2,000 genes; proportions = softmax of smooth random Fourier fields;
signatures = log-normal baselines with 200 marker genes per type (5x); Poisson counts at depth 500 (sparse CSR).
"""

import json
import resource
import sys
import time


def cpu():
    """User + system CPU seconds of this process (robust to a busy machine, unlike wall time)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


import numpy as np
import scipy.sparse as sp

K, G, DEPTH = 10, 2000, 500.0


def make(n, seed=0, chunk=50_000):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    r, c = i // side, i % side
    coords = np.column_stack([c + 0.5 * (r % 2), r * np.sqrt(3) / 2]).astype(np.float64)
    base = rng.lognormal(0.0, 1.0, size=G)
    S = np.repeat(base[:, None], K, axis=1)
    per = G // K
    for k in range(K):
        S[k * per : (k + 1) * per, k] *= 5.0
    S /= S.sum(0, keepdims=True)  # genes x types
    freq = rng.normal(size=(K, 4, 2)) * (2 * np.pi / (side / 4.0))
    phase = rng.uniform(0, 2 * np.pi, size=(K, 4))
    amp = rng.normal(size=(K, 4))
    T = np.empty((n, K))
    Y_parts = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xy = coords[s:e]
        logits = np.einsum("kj,nkj->nk", amp, np.sin(np.einsum("kjd,nd->nkj", freq, xy) + phase[None]))
        P = np.exp(1.5 * logits)
        P /= P.sum(1, keepdims=True)
        T[s:e] = P
        Y_parts.append(sp.csr_matrix(rng.poisson(DEPTH * P @ S.T).astype(np.float32)))
    return coords, sp.vstack(Y_parts, format="csr"), S, T


def scores(P, T):
    from scipy.spatial.distance import jensenshannon

    return {
        "rmse": float(np.sqrt(np.mean((P - T) ** 2))),
        "jsd": float(np.mean(jensenshannon(P, T, axis=1, base=2) ** 2)),
    }


def main():
    method, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    t = time.perf_counter()
    coords, Y, S, T = make(n)
    gen = time.perf_counter() - t
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {}
    if method.startswith("smoother"):
        import smoother as sm
        from smoother._core import deconv as core
        from smoother._core import knn_graph, precision

        sm.settings.progress_bar = False
        t0, cpu0 = time.perf_counter(), cpu()
        W = knn_graph(coords, k=6)[0]
        Q = precision(W, "icar", 0.99)
        X = DEPTH * S
        if method == "smoother_auto":
            from smoother.tl._deconv import _choose_lambda

            lam, _ = _choose_lambda(X, Y, Q, "nnls", True, {}, None, 0, 1e-6, 5000)
        else:
            lam = 1.0
        r = core.deconvolve_quadratic(X, Y, model="nnls", Q=Q, lam=lam, show_progress=False)
        sec = time.perf_counter() - t0
        P = core.coef_to_props(r.coef)[0]
        info = {"lambda": lam, "n_iter": r.n_iter, "kkt": r.kkt_residual, "converged": r.converged}
    elif method == "flashdeconv":
        from flashdeconv import FlashDeconv

        t0, cpu0 = time.perf_counter(), cpu()
        model = FlashDeconv(random_state=0)
        P = model.fit_transform(Y, (DEPTH * S).T, coords)
        sec = time.perf_counter() - t0
        info = {"lambda": str(getattr(model, "lambda_spatial_", getattr(model, "lambda_spatial", "auto")))}
    else:
        raise SystemExit(f"unknown method {method}")
    res = {
        "method": method,
        "n_spots": n,
        "n_genes": G,
        "n_types": K,
        "seconds": sec,
        "seconds_data": gen,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_seconds": cpu() - cpu0,
        "rss_after_data_mb": rss_data,
        **scores(np.asarray(P), T),
        **info,
    }
    with open(out, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
