"""pytest settings for executing the tutorials with nbmake (`make test`).

`make test` runs pytest with two xdist workers on a two-core machine, and each worker starts a notebook kernel.
Multi-threaded BLAS / OpenMP / torch inside both kernels would oversubscribe the cores; on small problems that
makes linear algebra 10-30x slower. Kernels inherit this process's environment, so pin them to one thread each
(unless the caller already chose).

The DLPFC tutorial reads real data: from ``SMOOTHER_DATA_DIR`` (set here to ``../shared/data`` beside the
repository when that folder exists and the variable is unset, as in CI), from the download cache, or from the
network. When none of them is there, the notebook is skipped with the reason instead of failing.
"""

import os
import socket
from pathlib import Path

import pytest

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "SMOOTHER_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["SMOOTHER_DATA_DIR"] = str(_SHARED_DATA)  # kernels inherit it

_NEEDS_DLPFC = {"08_dlpfc_151673.ipynb"}


def _dlpfc_unavailable() -> str | None:
    """Why the DLPFC 151673 files cannot be read, or None when they can (local folder, cache or network)."""
    from smoother.datasets._dlpfc import BASE_URL, dlpfc_files

    try:
        dlpfc_files(download=False)  # SMOOTHER_DATA_DIR (checked by SHA-256) or the download cache; no network
        return None
    except (OSError, ImportError, ValueError) as err:
        if os.environ.get("SMOOTHER_DATA_DIR"):
            return f"SMOOTHER_DATA_DIR does not hold the DLPFC 151673 files: {err}"
        local = str(err)
    host = BASE_URL.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return f"the DLPFC 151673 files are not available offline and {host} cannot be reached: {local}"
    return None


def pytest_collection_modifyitems(config, items):
    needing = [item for item in items if Path(str(item.fspath)).name in _NEEDS_DLPFC]
    if not needing:
        return
    reason = _dlpfc_unavailable()
    if reason is not None:
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=reason))
