# The README's two commands: `make demo` and `make test`.
# Both create .venv when missing and install the project (idempotently) first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint sysdeps venv clean-results

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

clean-results:
	rm -rf results
