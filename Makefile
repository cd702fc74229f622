# gradvar developer entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv, install the package with its pinned torch, and fetch the offline data.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export THP_MEM_ALLOC_ENABLE := 1
export MPLBACKEND := Agg
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install data test lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,notebooks]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian (offline-friendly); skipped quietly where apt is unavailable.
data:
	@if [ ! -e $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	    || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	  else echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"; fi; \
	fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install data lint
	$(PY) -m pytest -q -ra --durations=15

# CPU threads: THREADS=N, else OMP_NUM_THREADS, else the CLI's default (half the CPUs, at most 4)
demo: install
	$(VENV)/bin/gradvar demo --out demo-out $(if $(THREADS),--threads $(THREADS))

bench: install
	$(PY) benchmarks/bench_probe.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
