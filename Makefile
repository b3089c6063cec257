# Flotilla: `make run` runs the fleet on the bundled data; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEED ?= 10
RUN_DIR ?= runs/$(shell date -u +%Y%m%dT%H%M%SZ)
PYTEST_ARGS ?=
# Compose v2 plugin when present, else Debian's docker-compose (v1); both read the same file.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILE := deploy/docker-compose.yml

.PHONY: help venv run test test-unit test-integration test-system lint format proto system-deps \
	images compose-up compose-down bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed ## create .venv and install the project with its dev tools

run: $(BIN)/.installed ## run the five services on the bundled Binance data (SPEED=10 by default)
	$(BIN)/flotilla up --until-end --speed $(SPEED) --run-dir $(RUN_DIR)
	$(BIN)/flotilla report $(RUN_DIR) > /dev/null && echo "journal recomputation matches $(RUN_DIR)/summary.json"

system-deps: ## install Debian packages the tests need (redis-server, promtool, chromium, docker-compose)
	bash scripts/install-system-deps.sh

images: $(BIN)/.installed ## build the five service images (offline: Debian base via debootstrap; see README)
	PIP="$(BIN)/pip" bash scripts/build-images.sh

test: $(BIN)/.installed system-deps images ## the whole suite: unit, integration, system (non-zero on any failure)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(BIN)/.installed system-deps ## unit tests only (fast)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: $(BIN)/.installed system-deps ## integration tests: real ZeroMQ on loopback
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-system: $(BIN)/.installed images ## system tests: the compose fleet, real containers and Redis
	$(BIN)/pytest tests/system $(PYTEST_ARGS)

compose-up: images ## run the fleet in containers on the bundled data (REPLAY_SPEED, SIGNAL_REPLICAS)
	$(COMPOSE) -f $(COMPOSE_FILE) up -d
	@echo "fleet up: flotilla status | $(COMPOSE) -f $(COMPOSE_FILE) logs -f | make compose-down"

compose-down: ## stop the compose fleet (SIGTERM, drained exit) and remove its containers
	$(COMPOSE) -f $(COMPOSE_FILE) down

bench: $(BIN)/.installed ## measure latency, throughput, halt propagation against the raw-ZeroMQ floor
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(BIN)/.installed ## ruff (format check + lint) and mypy
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(BIN)/.installed ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(BIN)/.installed ## regenerate proto/ JSON Schemas from the message structs
	$(BIN)/python scripts/gen_proto.py

clean: ## remove the virtualenv, caches and run directories
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs *.egg-info
