# smartrouter — one-word entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KERNEL := $(VENV)/share/jupyter/kernels/smartrouter/kernel.json

# world parameters for `make world` (defaults = the default world of WORLD.md)
DAYS    ?= 84
PER_DAY ?= 10500
SEED    ?= 42
TRUTH   ?= default
END     ?=
PROFILE ?= default
# run parameters for `make run`
RUN_PROFILE ?= default
AS_OF   ?=
# live loop parameters for `make live` (scenario: a file or a name in scenarios/)
LIVE_DAYS     ?= 14
SCENARIO      ?=
RETRAIN_PROFILE ?= live

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONUNBUFFERED := 1

.PHONY: help setup run live test test-fast lab world serve bench bench-world bench-features bench-models bench-serve bench-failover bench-run bench-live bench-abtest bench-retry bench-messages bench-scale clean

help: ## list every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name smartrouter --display-name "smartrouter (Python 3.11)" >/dev/null
	@echo "registered Jupyter kernel 'smartrouter'"

setup: $(STAMP) $(KERNEL) ## create .venv, install the package, register the Jupyter kernel

run: setup ## the daily job: build the local world if missing, then run every stage (RUN_PROFILE=quick|default|prod AS_OF=YYYY-MM-DD)
	$(BIN)/smartrouter world ensure
	$(BIN)/smartrouter run --profile $(RUN_PROFILE) $(if $(AS_OF),--as-of $(AS_OF),)

live: setup ## the live loop: the world moves on day by day through the service, daily retrain + hot reload (LIVE_DAYS=14 SCENARIO= RETRAIN_PROFILE=live; rerun to resume)
	$(BIN)/smartrouter world ensure
	$(BIN)/smartrouter live --days $(LIVE_DAYS) --retrain-profile $(RETRAIN_PROFILE) $(if $(SCENARIO),--scenario $(SCENARIO),)

test: setup ## run the whole test suite (sets everything up first, Chromium, Redis and promtool included)
	bash tests/ensure_chromium.sh
	bash tests/ensure_redis.sh
	bash tests/ensure_promtool.sh
	$(BIN)/python -m pytest -q

test-fast: setup ## unit tests only (skips slow whole-chain and load tests)
	$(BIN)/python -m pytest -q -m "not slow"

# Jupyter refuses to start as root without --allow-root (containers and CI images run as root);
# the flag is added only for root, so a normal user keeps Jupyter's own guard. LAB_FLAGS adds
# server options, e.g. make lab LAB_FLAGS="--no-browser --port=8899".
LAB_FLAGS ?=
lab: setup ## JupyterLab on notebooks/ with the project kernel (works as root too; LAB_FLAGS="--port=8899")
	$(BIN)/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_FLAGS)

world: setup ## rebuild the local world (override DAYS= PER_DAY= SEED= END=YYYY-MM-DD TRUTH=default|interactions)
	$(BIN)/smartrouter world build --days $(DAYS) --per-day $(PER_DAY) --seed $(SEED) --truth $(TRUTH) $(if $(END),--end $(END),)

serve: setup ## start the routing service on the promoted model (rules if none); SMARTROUTER_STATE_STORE=redis://127.0.0.1:PORT/0 starts a local Redis
	@case "$${SMARTROUTER_STATE_STORE:-local}" in \
	  redis://127.0.0.1:*|redis://localhost:*) \
	    bash tests/ensure_redis.sh; \
	    port=$$(echo "$$SMARTROUTER_STATE_STORE" | sed -E 's#redis://[^:]+:([0-9]+).*#\1#'); \
	    redis-cli -p $$port ping >/dev/null 2>&1 || { mkdir -p data/state/redis && \
	      redis-server --port $$port --bind 127.0.0.1 --save "" --appendonly no --dir data/state/redis --daemonize yes \
	        --logfile redis.log && echo "started redis-server on port $$port (data/state/redis)"; } ;; \
	esac
	$(BIN)/smartrouter serve

bench-world: setup ## world generation time, peak memory, approval and headroom
	$(BIN)/python bench/bench_world.py

bench-serve: setup ## HTTP load test of the routing service (wrk) + in-process decision latency
	@command -v wrk >/dev/null || { echo "installing wrk (Debian)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/bench_serve.py

bench-failover: setup ## kill -9 one service worker under the bench-serve load: throughput back within 10 % in 10 s
	@command -v wrk >/dev/null || { echo "installing wrk (Debian)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/bench_failover.py

bench-features: setup ## default-world feature build time + encoder latency
	$(BIN)/python bench/bench_features.py

bench-models: setup ## model training time per family, serving latency p50/p99, load time
	$(BIN)/python bench/bench_models.py

bench-run: setup ## the whole daily run on the default world vs the 10-minute budget
	$(BIN)/python bench/bench_run.py

bench-live: setup ## one simulated day of the default world through HTTP (<= 60 s), on a copy; BENCH_LIVE_FLAGS=--loop adds the whole loop (<= 45 min)
	$(BIN)/python bench/bench_live.py $(BENCH_LIVE_FLAGS)

bench-retry: setup ## retry advice (POST /v1/retry) in process on the newest run's retry model: p99 <= 1 ms
	$(BIN)/python bench/bench_retry.py

bench-messages: setup ## in-process decide with every (processor, message configuration) pair scored: p99 <= 1 ms
	$(BIN)/python bench/bench_messages.py

bench-abtest: setup ## simulated A/B experiments read daily: always-valid coverage >= 95 %, false winners <= 5 %, SRM flagged
	$(BIN)/python bench/bench_abtest.py

# SCALES=1 for a quick check (~9 min); the default 1 2 10 builds a 10x world and takes ~1 h or more,
# so bench-scale is not part of `make bench`; SCALE_FLAGS adds options (--work DIR keeps the worlds)
SCALES ?= 1 2 10
SCALE_FLAGS ?=
bench-scale: setup ## the daily run on 1x, 2x, 10x worlds: peak RSS of the whole tree and wall time per stage (SCALES="1 2 10"; not in `make bench`: ~1 h)
	$(BIN)/python bench/bench_scale.py --scales $(SCALES) $(SCALE_FLAGS)

bench: bench-world bench-features bench-models bench-serve bench-failover bench-run bench-live bench-abtest bench-retry bench-messages ## every benchmark

clean: ## remove the virtualenv, local world, runs, reports and registry
	rm -rf $(VENV) data runs/[0-9]* reports/[0-9]* reports/index.html models .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
