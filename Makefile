# Two commands for a newcomer: `make demo` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SCALE ?= 0.03
DEMO_SEED ?= 11
HOST ?= 127.0.0.1
TEST_WORKERS ?= 2
PORT ?= 8000

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt requirements-spark.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-spark.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned requirements

world: $(STAMP) ## Build the demo world into the database (DEMO_SCALE, DEMO_SEED)
	$(BIN)/python -m training generate --scale $(DEMO_SCALE) --seed $(DEMO_SEED) --replace

train: $(STAMP) ## Train control and test models from the database into models/
	$(BIN)/python -m training train

evaluate: $(STAMP) ## Offline evaluation of the current models (writes reports/eval)
	$(BIN)/python -m training evaluate --json reports/eval/metrics.json --report reports/eval

serve: $(STAMP) ## Serve on http://$(HOST):$(PORT)
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

demo: $(STAMP) world train serve ## Set up, build the demo world, train, serve

lint: $(STAMP) ## ruff
	$(BIN)/ruff check app training tests bench

browser: ## Install Debian's headless Chromium for the console's browser test (when missing)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium chromium-driver)

wrk: ## Install wrk, the load generator of the chaos suite and the benchmarks (when missing)
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)

java: ## Install Debian's Java 17 for the Spark engine and its test (when missing)
	command -v java >/dev/null || (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless)

nginx: ## Install Debian's nginx for the replicas' load balancer and its test (when missing)
	command -v nginx >/dev/null || (apt-get update -q && apt-get install -y -q nginx-light)

test: $(STAMP) lint browser wrk java nginx ## Lint and run the whole test suite (SQLite, PostgreSQL, headless Chromium)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

screenshots: $(STAMP) browser ## Browser test of the console, saving its screenshots into docs/ (README shows them)
	CONSOLE_SCREENSHOT_DIR=docs $(BIN)/python -m pytest -q tests/test_console_browser.py

bench: $(STAMP) ## Scale-1.0 pipeline on PostgreSQL, the serving benchmark and the cost by catalogue size (~45 min); appends docs/benchmarks.md, docs/catalogue.md
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python -m bench

chaos: $(STAMP) wrk nginx ## Faults under load, hostile input, 10-min soak, dependency scan (~16 min); writes docs/reliability.md
	test -x .venv-audit/bin/pip-audit || ($(PY) -m venv .venv-audit && .venv-audit/bin/pip install -q -r requirements-audit.txt)
	$(BIN)/python -m bench.chaos

quality: $(STAMP) ## Offline quality over three demo worlds at scale 0.1 (docs/quality.md)
	$(BIN)/python -m bench.quality --scale 0.1 --seeds 1 2 3

.PHONY: help install world train evaluate serve demo lint browser java nginx test screenshots bench quality chaos wrk check simulate ab-report
