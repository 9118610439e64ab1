# Two commands on a fresh machine: `make demo` and `make test`; each creates .venv from the lock when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: venv test test-fast demo bench clean

$(STAMP): requirements/cpu-lock.txt requirements/no-deps.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/cpu-lock.txt
	$(PY) -m pip install -q --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# The whole suite, slow tests included: what CI runs. One worker per core (at most 4: each holds its own TensorFlow);
# tests/conftest.py groups the tests so every shared training run is still built once.
XDIST := -n auto --maxprocesses 4 --dist loadgroup
test: venv
	$(PY) -m pytest -q -ra $(XDIST) --durations 30

# Everyday loop: skips the tests marked slow.
test-fast: venv
	$(PY) -m pytest -q -ra $(XDIST) -m "not slow"

demo: venv
	$(PY) -m steel_tpu.demo --out $(DEMO_DIR)

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .hypothesis
