# Every target sets itself up from nothing: a .venv from requirements-dev.txt and Azurite from package-lock.json.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SIZE ?= 5000
ROWS ?= 200000
PEOPLE ?= 20000
PORT ?= 7071

.PHONY: setup test demo serve lint format bench clean

setup: $(VENV)/.ready node_modules/.ready

$(VENV)/.ready: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.ready: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) -m dev.demo --people $(SIZE)

serve: setup
	$(PY) -m dev.serve --port $(PORT)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: setup
	$(PY) -m bench.ingest --rows $(ROWS)
	$(PY) -m bench.segments --people $(PEOPLE)
	$(PY) -m bench.export --people $(PEOPLE)
	$(PY) -m bench.campaign --people $(PEOPLE)

clean:
	rm -rf $(VENV) node_modules .azurite .pytest_cache .ruff_cache
