# Incident ledger build tooling. GNU make + bash; needs only python3, node/npm and make.
# `make` (or `make help`) lists the targets. Variables can be overridden: make test PYTHON=python3.11
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
NPM ?= npm
PIP_VERSION ?= 26.3
PIP_TOOLS_VERSION ?= 7.6.2
LOCK_VENV ?= .venv-lock
LOCK_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

PY := $(VENV)/bin/python
BUF := $(CURDIR)/tools/node_modules/.bin/buf
VENV_STAMP := $(VENV)/.installed-dev
# The project installed editable on top of the lock: its console scripts (ledgerctl, ...) in
# .venv/bin, its packages (services, incidentledger from gen/, incidentledger_client from
# clients/python) importable without PYTHONPATH. See pyproject.toml.
PROJECT_STAMP := $(VENV)/.installed-project
BUF_STAMP := tools/node_modules/.installed
# promtool checks deploy/prometheus in the tests: taken from Debian's prometheus package.
PROMTOOL_DEB ?= prometheus=2.42.0+ds-5+deb12u1
PROMTOOL := tools/prometheus/usr/bin/promtool
# The situation room's browser tests drive Debian's chromium: Playwright never downloads one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# Directories type-checked strictly by mypy, when they exist and hold Python files.
MYPY_DIRS := services clients tests bench demo

.PHONY: help venv chromium proto proto-check lint imports fmt test test-unit test-integration test-system check \
	deploy-check run demo bench soak lock clean catalogs catalogs-check

help: ## list the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20

# --- environment ---------------------------------------------------------------------------

venv: $(PROJECT_STAMP) $(BUF_STAMP) ## create .venv from requirements/dev.txt, install the project (editable) and buf

# Rebuilt from scratch (--clear) whenever the lock file changes, so the venv is exactly the lock.
$(VENV_STAMP): requirements/dev.txt
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

# --no-deps: the lock installed every dependency, pinned; the build backend is the exact
# setuptools pyproject.toml names. Rebuilding the venv (--clear) removes this stamp with it.
# setuptools warns that folders named like the packages may take precedence over them: here
# those folders are the packages (an editable install maps them), so that is as intended.
$(PROJECT_STAMP): $(VENV_STAMP) pyproject.toml requirements/runtime.in
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $@

# Best effort: where apt cannot fetch it, the promtool tests skip (and fail when CI=true).
$(PROMTOOL):
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if (cd "$$tmp" && apt-get download -qq $(PROMTOOL_DEB)); then \
	  dpkg -x "$$tmp"/prometheus_*.deb tools/prometheus && echo "promtool: $(PROMTOOL)"; \
	else \
	  echo "promtool: cannot download $(PROMTOOL_DEB); its checks will be skipped" >&2; \
	fi

# Best effort, like promtool: where chromium cannot be installed (no root, no apt), the browser
# tests (tests/integration/test_situation_room.py) skip, and fail when CI=true.
chromium: ## install Debian's chromium for the browser tests (apt-get; part of make test)
	@if command -v chromium >/dev/null; then \
	  echo "chromium: $$(command -v chromium)"; \
	elif apt-get install -y -qq chromium; then \
	  echo "chromium: $$(command -v chromium)"; \
	else \
	  echo "chromium: cannot install Debian's chromium; the browser tests will be skipped" >&2; \
	fi

$(BUF_STAMP): tools/package.json tools/package-lock.json
	$(NPM) ci --prefix tools --ignore-scripts --no-audit --no-fund
	$(BUF) --version
	touch $@

lock: ## re-pin requirements/*.txt from *.in with pip-compile (LOCK_ARGS=--upgrade to bump all)
	$(PYTHON) -m venv --clear $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	for name in runtime dev; do \
	  CUSTOM_COMPILE_COMMAND="make lock  (edit requirements/*.in, not this file; make lock LOCK_ARGS=--upgrade bumps every pin)" $(LOCK_VENV)/bin/pip-compile --quiet $(LOCK_ARGS) \
	    --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	    --no-emit-trusted-host -o requirements/$$name.txt requirements/$$name.in; \
	done
	rm -rf $(LOCK_VENV)

# --- generated code ------------------------------------------------------------------------

proto: $(VENV_STAMP) ## regenerate gen/incidentledger from proto/incidentledger
	tools/genproto.sh $(PY) gen

proto-check: $(VENV_STAMP) ## fail if gen/ differs from what `make proto` would write
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "tools/genproto.sh $(PY) $$tmp/gen && diff -r gen/incidentledger $$tmp/gen/incidentledger"; \
	tools/genproto.sh $(PY) "$$tmp/gen"; \
	mkdir "$$tmp/none"; \
	have=gen/incidentledger; [[ -d $$have ]] || have=$$tmp/none; \
	want=$$tmp/gen/incidentledger; [[ -d $$want ]] || want=$$tmp/none; \
	if ! diff -r -x __pycache__ -x '*.pyc' "$$have" "$$want"; then \
	  echo "generated code is stale: run make proto" >&2; exit 1; \
	fi; \
	echo "proto-check: gen/ is up to date"

# --- quality -------------------------------------------------------------------------------

lint: venv ## buf lint, ruff check, ruff format --check, mypy (strict), import contracts, catalogs
	@if [[ -n $$(find proto -name '*.proto' -type f -print -quit) ]]; then \
	  echo "cd proto && buf lint"; (cd proto && $(BUF) lint); \
	else \
	  echo "lint: no .proto files under proto/: skipping buf lint"; \
	fi
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@dirs=(); \
	for d in $(MYPY_DIRS); do \
	  if [[ -d $$d && -n $$(find "$$d" -name '*.py' -type f -print -quit) ]]; then dirs+=("$$d"); fi; \
	done; \
	if [[ $${#dirs[@]} -gt 0 ]]; then \
	  echo "$(PY) -m mypy $${dirs[*]}"; $(PY) -m mypy "$${dirs[@]}"; \
	else \
	  echo "lint: no Python files in $(MYPY_DIRS): skipping mypy"; \
	fi
	$(MAKE) --no-print-directory imports
	$(MAKE) --no-print-directory catalogs-check

# The catalogs of incidentledger_client/i18n: every message of the code translated, none stale,
# each .mo the compiled .po (catalogs: extract, merge, compile after a change of the texts).
catalogs-check: $(PROJECT_STAMP) ## check the message catalogs (part of lint)
	$(PY) -m incidentledger_client.i18n.catalogs check

catalogs: $(PROJECT_STAMP) ## update the message catalogs from the code (then translate the new ones)
	$(PY) -m incidentledger_client.i18n.catalogs update

# tests, bench and demo are not installed: on the path so that the contracts can name them.
imports: venv ## check the import contracts of .importlinter alone (part of lint)
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports --no-cache

fmt: $(VENV_STAMP) ## ruff format + ruff check --fix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The tiers of the test suite (docs/development.md, "Tests"): unit (tests/unit), integration
# (tests/integration) and system (tests marked `system`: soak, cluster, chaos), each test in
# exactly one. pytest's exit status 5 (no test collected) fails a tier.
test: venv $(PROMTOOL) chromium ## lint, proto-check, then every test tier: unit, integration, system
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory proto-check
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory test-integration
	$(MAKE) --no-print-directory test-system

check: test ## alias of test

test-unit: $(PROJECT_STAMP) $(PROMTOOL) ## the unit tests (tests/unit; under a minute)
	$(PY) -m pytest tests/unit -m "not system" $(PYTEST_ARGS)

test-integration: $(PROJECT_STAMP) chromium ## the integration tests (tests/integration, but the system tier)
	$(PY) -m pytest tests/integration -m "not system" $(PYTEST_ARGS)

test-system: $(PROJECT_STAMP) ## the system tests: soak, NATS cluster, faults, kills, stop trials
	$(PY) -m pytest tests -m system $(PYTEST_ARGS)

# No Docker needed: YAML, Kubernetes and compose schemas, hadolint, nats-server -t, cross-checks,
# the health probe and concurrent migrations (PostgreSQL). Part of `make test` as well.
deploy-check: $(PROJECT_STAMP) ## validate deploy/ offline (see docs/deploying.md)
	$(PY) -m pytest tests/unit/test_deploy.py tests/unit/test_healthcheck.py \
	  tests/integration/test_migrate.py $(PYTEST_ARGS)

# --- running -------------------------------------------------------------------------------

# exec: the supervisor replaces the recipe's shell, so Ctrl-C and SIGTERM reach it directly.
# RUN_ARGS: extra arguments, e.g. make run RUN_ARGS=--services=services.ledger
run: $(PROJECT_STAMP) $(BUF_STAMP) ## run NATS, the ledger, the notifier and the situation room (python -m services.run)
	exec $(PY) -m services.run $(RUN_ARGS)

# DEMO_STACK=LEDGER,NOTIFIER plays against that stack, DEMO_STACK=own starts one on free ports;
# unset: `make run`'s stack if it is up, else one of its own. DEMO_DAY: the day to play on.
# DEMO_LANG=id: in Bahasa Indonesia (else LEDGER_LANG, then the locale). --stay: the situation
# room shows the day afterwards (a stack of its own keeps it until Ctrl-C; make run's has it).
demo: $(PROJECT_STAMP) $(BUF_STAMP) ## play a polling day in Mukomuko, then show it on the situation room (DEMO_LANG=id)
	exec $(PY) -m demo.run --stay $(if $(DEMO_LANG),--lang $(DEMO_LANG)) $(DEMO_ARGS)

# BENCH_ARGS: e.g. --quick (a short run), --strict (exit 1 on a missed target), --only sqlite.
bench: $(PROJECT_STAMP) ## run the benchmarks (python -m bench; BENCH_ARGS="--quick --strict"), see docs/performance.md
	$(PY) -m bench $(BENCH_ARGS)

# SOAK_SECONDS: how long the faults go round (default 600); SOAK_RATE: commands/s (default 20).
soak: $(PROJECT_STAMP) ## the long soak run: faults under steady load for SOAK_SECONDS, then every check
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(PY) -m pytest tests/integration/test_soak.py \
	  -s --timeout=$$(( $${SOAK_SECONDS:-600} + 1200 ))

clean: ## remove .venv, tools/node_modules, data/ and caches
	rm -rf $(VENV) $(LOCK_VENV) tools/node_modules data *.egg-info build .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
