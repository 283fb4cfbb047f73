# The README's two commands: `make demo` and `make test`.
# Both create .venv when missing and install the project (idempotently) first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint sysdeps venv clean-results notebooks compiled clean-compiled

$(STAMP): pyproject.toml
	@bash scripts/sysdeps.sh  # NetfilterQueue (emu, test extras) builds against libnetfilter-queue-dev
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

demo: $(STAMP) sysdeps
	$(VENV)/bin/overlaysim run scenarios/quickstart.yaml --out results/quickstart

lint: $(STAMP)
	$(PY) -m ruff check overlaysim tests bench
	$(PY) -m ruff format --check overlaysim tests bench

test: $(STAMP) sysdeps lint
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not emu and not slow"

# JupyterLab into .venv (the `notebooks` extra), then open notebooks/ with it.
# As root Jupyter refuses to start without --allow-root; JUPYTER_ARGS adds options
# (e.g. JUPYTER_ARGS='--no-browser --ip=127.0.0.1').
NB_STAMP := $(VENV)/.notebooks-stamp
JUPYTER_ARGS ?=

$(NB_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[test,notebooks]'
	@touch $(NB_STAMP)

notebooks: $(NB_STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $$(test "$$(id -u)" = 0 && echo --allow-root) $(JUPYTER_ARGS)

# Optional: the table layer and the broadcast queue compiled by mypyc from the same .py
# into build/compiled, for the simulator only and only when asked (`overlaysim sim
# --core compiled`, `bench/sim_scale.py --core compiled`); a build made from other
# sources than the ones on disk is refused. Needs gcc. docs/scale.md says what it buys.
COMPILED_STAMP := $(VENV)/.compiled-stamp

$(COMPILED_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[test,compiled]'
	@touch $(COMPILED_STAMP)

compiled: $(COMPILED_STAMP)
	$(PY) scripts/build_compiled.py

clean-compiled:
	$(PY) scripts/build_compiled.py --clean

clean-results:
	rm -rf results
