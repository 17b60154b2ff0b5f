# The two first commands on a fresh machine:
#   make demo   virtualenv + everything installed + the CPU-heavy example on a local Dask cluster
#   make test   virtualenv + everything installed + the test suite (real Prefect, Dask and Ray)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPAT_STAMP := $(VENV)/.installed-compat
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test test-resilience test-prefect-oldest test-burn test-compat test-k8s test-quick lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[all,test,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	SCALEGROUPS_RUNNER=dask $(BIN)/python examples/primes.py

# Tests get their own Prefect home (a database of their own) and never a user's remote API. Two
# pytest-xdist workers (a third only adds contention on 2 cores). Tests must not share names, ports
# or namespaces: xdist_group is not honoured (pytest 9.2 with pytest-xdist 3.8).
# `make test` leaves out the tests that kill processes or cut hosts off mid-run (marker
# `resilience`, 6 min of worker time); `make test-resilience` runs them, and CI runs both.
TEST_WORKERS ?= 2
TEST_SELECTION ?= -m "not resilience"
test: install
	env -u PREFECT_API_URL -u PREFECT_API_KEY PREFECT_HOME=$(CURDIR)/.prefect-test \
		$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load $(TEST_SELECTION) $(PYTEST_ARGS)

test-resilience: install
	$(MAKE) test TEST_SELECTION="-m resilience"

# The oldest Prefect pyproject.toml allows, in a virtualenv of its own: the compatibility hooks'
# tests and the group tests on thread and Dask (`make test` runs the newest allowed).
OLDEST_VENV := .venv-prefect-oldest
OLDEST_PREFECT := $(shell sed -n 's/.*"prefect>=\([0-9.]*\),.*/\1/p' pyproject.toml)
$(OLDEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q -e ".[test,ray]" "prefect==$(OLDEST_PREFECT)"
	touch $@

test-prefect-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "import prefect; assert prefect.__version__ == '$(OLDEST_PREFECT)', prefect.__version__; print('prefect', prefect.__version__)"
	env -u PREFECT_API_URL -u PREFECT_API_KEY PREFECT_HOME=$(CURDIR)/.prefect-test-oldest \
		$(OLDEST_VENV)/bin/python -m pytest -p no:cacheprovider -q tests/test_prefect_compat.py tests/test_api_clients.py tests/test_groups.py \
		$(PYTEST_ARGS)

# The suite 3 times in a row with one core kept busy by a CPU burner (tests/burn.py); logs in .burn-run-N.log.
test-burn: install
	$(BIN)/python tests/burn.py --runs $(or $(RUNS),3) --workers $(TEST_WORKERS) $(PYTEST_ARGS)

# The Kubernetes e2e (changes the cluster KUBECONFIG names): apply k8s/, run the example Job on Dask and Ray.
test-k8s: install
	SCALEGROUPS_K8S_E2E=1 $(BIN)/python -m pytest tests/test_k8s_e2e.py -v -s -p no:cacheprovider $(PYTEST_ARGS)

# prefect-dask's and prefect-ray's own runner tests, unchanged, on the stock runners and on ours
# (tests/compat/run.py; sdists cached in .compat-cache/). Fails on a test that passes on stock only.
$(COMPAT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[all,test,compat]"
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(BIN)/python tests/compat/run.py $(COMPAT_ARGS)

test-quick: install
	$(MAKE) test TEST_SELECTION="-m 'not slow and not resilience'" PYTEST_ARGS="--scalegroups-runners=thread,dask"

lint: install
	$(BIN)/ruff check scalegroups tests examples $(wildcard benchmarks)
	$(BIN)/ruff format --check scalegroups tests examples $(wildcard benchmarks)

clean:
	rm -rf $(VENV) .prefect-test .pytest_cache .compat-cache build dist

bench: install
	$(BIN)/python -m benchmarks.run
