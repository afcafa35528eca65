"""pytest settings for executing the tutorials with nbmake (`make test`).

`make test` runs pytest with two xdist workers on a two-core machine, and each worker starts a notebook kernel.
Multi-threaded BLAS / OpenMP / torch inside both kernels would oversubscribe the cores; on small problems that
makes linear algebra 10-30x slower. Kernels inherit this process's environment, so pin them to one thread each
(unless the caller already chose).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
