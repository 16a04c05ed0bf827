# EMMR scoring. `make demo` runs the job end to end; `make test` sets up what the tests need and runs them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_STREAMING_DIR ?= runs/demo-streaming
DEMO_STREAMING_ARGS ?=

.PHONY: help venv test test-fast demo demo-streaming bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): requirements/dev.txt requirements/lock.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

venv: $(STAMP) ## create .venv with the pinned environment and the `emmr` console script

test: venv ## install what the tests need, start their servers, run the whole suite
	VENV=$(VENV) bash scripts/install-test-deps.sh
	$(PY) -m pytest

test-fast: venv ## the suite without tests marked slow
	$(PY) -m pytest -m "not slow"

demo: venv ## synthetic + bad records, train a small model, score them with the Beam job, print a summary
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh $(DEMO_DIR)

demo-streaming: venv ## the streaming job on the local Pub/Sub emulator: records in, predictions and dead letters out (Ctrl-C stops)
	VENV=$(VENV) bash scripts/install-test-deps.sh
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/demo_streaming.py $(DEMO_STREAMING_DIR) $(DEMO_STREAMING_ARGS)

bench: venv ## CPU benchmarks; each prints `name: value` lines, its headline ratio last (JSON in runs/bench/)
	mkdir -p runs/bench
	$(PY) benchmarks/model_throughput.py --json runs/bench/model_throughput.json \
	    $(if $(wildcard runs/bench/paper-trained/checkpoint.json),--trained-paper runs/bench/paper-trained)  # docs/performance.md: how to train it
	$(PY) benchmarks/gpu.py --device cpu --quick --json runs/bench/gpu-cpu-quick.json
	$(PY) benchmarks/pipeline_efficiency.py --json runs/bench/pipeline_efficiency.json
	$(PY) benchmarks/io_ceiling.py --json runs/bench/io_ceiling.json
	$(PY) benchmarks/memory.py --json runs/bench/memory.json
	$(PY) benchmarks/streaming_decode.py --json runs/bench/streaming_decode.json
	VENV=$(VENV) bash scripts/install-test-deps.sh  # the Pub/Sub emulator for the next one
	$(PY) benchmarks/streaming_throughput.py --json runs/bench/streaming_throughput.json
	$(PY) benchmarks/scaling.py --json runs/bench/scaling.json
	@echo "== summary"; $(PY) benchmarks/summary.py --dir runs/bench

clean: ## remove the demo outputs and caches
	rm -rf runs .pytest_cache
