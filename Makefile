# Every target sets itself up from nothing: a .venv from requirements-dev.txt and Azurite from package-lock.json.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SIZE ?=
PORT ?= 7071

.PHONY: setup test test-fast test-next-year demo serve lint format bench bench-setup clean

setup: $(VENV)/.ready node_modules/.ready .worker/.ready

$(VENV)/.ready: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

.worker/.ready: requirements-worker.txt $(VENV)/.ready
	rm -rf .worker
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python --target .worker -r requirements-worker.txt
	touch $@

node_modules/.ready: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup
	$(PY) -m pytest

# The tests that need neither Azurite nor a browser (pytest marker `fast`): seconds, for the edit loop.
test-fast: setup
	$(PY) -m pytest -m fast

# The suite again with this machine's clock a year ahead (libfaketime, for Azurite and subprocesses too):
# a test that depends on today's date fails here, not next week. The multi-threaded libfaketime (-m), reading
# FAKETIME once: by default it reads the environment again every 10 s from whichever thread asks the time, and
# a background thread doing so while a test set an environment variable crashed the run (a segfault in
# time.sleep under libfaketime, beside os.environ's putenv, 2026-12-06).
test-next-year: setup
	FAKETIME_CACHE_DURATION=1000000 faketime -m -f '+365d' $(PY) -m pytest

demo: setup
	$(PY) -m dev.demo --people $(or $(SIZE),20000)

serve: setup
	$(PY) -m dev.serve --port $(PORT)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# make bench SIZE=10k|100k|1M: every stage against its baseline; bench-setup installs PostgreSQL 15 for the peer.
bench: setup
	$(PY) -m bench.run --size $(or $(SIZE),10k) $(if $(REBUILD),--rebuild)

bench-setup:
	@if command -v initdb >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/initdb ]; then \
		echo "PostgreSQL 15 is installed"; \
	else \
		$(if $(shell command -v sudo),sudo) apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15; \
	fi

clean:
	rm -rf $(VENV) node_modules .worker .azurite .pytest_cache .ruff_cache .bench
