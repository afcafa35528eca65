# Two set-up commands for a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
PIP_QUIET ?= -q

.PHONY: install install-test install-doc demo lint test docs benchmarks clean

$(PY):
	python3 -m venv $(VENV)

# torch first: the pinned CPU wheel lies on disk; a bare `torch` would pull a CUDA build.
# The installs are stamped: they rerun only when pyproject.toml changed (the package itself is installed editable).
$(VENV)/.stamp-install: pyproject.toml | $(PY)
	$(PIP) install $(PIP_QUIET) torch==2.13.0 2>&1 | sed "/is ignored: it is neither/d"
	$(PIP) install $(PIP_QUIET) -e . 2>&1 | sed "/is ignored: it is neither/d"
	$(PY) -c "import smoother, torch; print('smoother', smoother.__version__, '| torch', torch.__version__)"
	touch $@

$(VENV)/.stamp-install-test: pyproject.toml | $(PY)
	$(PIP) install $(PIP_QUIET) torch==2.13.0 2>&1 | sed "/is ignored: it is neither/d"
	$(PIP) install $(PIP_QUIET) -e ".[test,doc]" 2>&1 | sed "/is ignored: it is neither/d"
	$(PY) -c "import smoother, torch, pytest; print('smoother', smoother.__version__, '| torch', torch.__version__)"
	touch $@

install: $(VENV)/.stamp-install

install-test: $(VENV)/.stamp-install-test

# the doc extra comes with install-test (tests/test_docs.py builds the docs in `make test`)
install-doc: install-test

demo: install
	$(PY) -m smoother demo

lint: install-test
	$(VENV)/bin/ruff check --no-cache src tests benchmarks tutorials
	$(VENV)/bin/ruff format --no-cache --check src tests benchmarks tutorials

test: install-test lint
	# two xdist workers, one BLAS/torch/numba thread each: no oversubscription of the 2 cores
	MPLBACKEND=agg OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(PY) -m pytest -n 2 --durations=15 --nbmake --doctest-modules tests tutorials src/smoother $(PYTEST_ARGS)

docs: install-doc
	$(VENV)/bin/sphinx-build -M html docs docs/_build -W --keep-going

benchmarks: install-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf docs/_build demo_out .pytest_cache
