# Atoll's two commands: `make demo` and `make test`. Everything else here serves them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
ATOLL_CACHE ?= $(HOME)/.cache/atoll
UV_VERSION := 0.13.8
UV_HOME := $(ATOLL_CACHE)/tools/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export ATOLL_CACHE
# Package directories: their mtimes change only when files are added or removed, which
# is when the editable link tree under build/ has to be rebuilt.
PACKAGE_DIRS := $(shell find core trainer operator -type d -not -name __pycache__ 2>/dev/null)
PYTEST_ARGS ?=
AUTOSCALER ?=
ISLANDS ?= 0
# Every extra: the training stages (torch, diffusers, …) and the tools. `pip install atoll`
# alone is the operator install (see docs/testing.md).
EXTRAS := --extra train --extra dev

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(UV):
	@echo "bootstrapping uv $(UV_VERSION) into $(UV_HOME)"
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock setup.py | $(UV)
	$(UV) sync --locked $(EXTRAS) --python $(PYTHON)
	@touch $@

$(VENV)/.linked: $(VENV)/.synced $(PACKAGE_DIRS)
	$(UV) sync --locked $(EXTRAS) --python $(PYTHON) --reinstall-package atoll --quiet
	@touch $@

.PHONY: install
install: $(VENV)/.linked ## create or update the virtualenv from pyproject.toml / uv.lock

uv.lock: pyproject.toml | $(UV)
	$(UV) lock --python $(PYTHON)

.PHONY: lock
lock: | $(UV) ## re-resolve uv.lock after changing dependencies
	$(UV) lock --python $(PYTHON)

.PHONY: lint
lint: install ## ruff, import layering and mypy (strict on atoll)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

.PHONY: testenv
testenv: install ## build (or reuse) the pinned control plane, kwok, MinIO and helm binaries
	$(PY) -m tests.env.build

.PHONY: images
images: install ## build the operator and trainer images; OCI archives in build/images/
	$(PY) -m images.build operator trainer

.PHONY: image-operator
image-operator: install ## build the operator image only (build/images/atoll-operator.oci.tar)
	$(PY) -m images.build operator

.PHONY: demo
demo: install ## train a 4-expert DDM on handwritten digits here (CPU, 4–10 min on 2 idle cores, as the README says); prints metrics and grids
	$(VENV)/bin/atoll run manifests/examples/quickstart.yaml --local --workdir .atoll
	@echo "sample grid: .atoll/runs/digits-quickstart/eval/grid-top-2.png"

.PHONY: demo-video
demo-video: install ## train a 2-expert video DDM on moving digits here (CPU, about 10 min on 2 idle cores); prints metrics and the GIF
	$(VENV)/bin/atoll run manifests/examples/video-quickstart.yaml --local --workdir .atoll
	@echo "animated sample grid: .atoll/runs/moving-digits-quickstart/eval/grid-top-1.gif"

.PHONY: test
test: lint testenv ## install, build the test environment, lint and run every test
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## only the tests that need no control plane or MinIO
	$(PY) -m pytest -m "not cluster and not minio" $(PYTEST_ARGS)

.PHONY: dev-up
dev-up: testenv ## start control plane, GPU fleet, MinIO and pod runtime in the background (.dev/); AUTOSCALER=karpenter: a small fleet Karpenter grows; ISLANDS=N: N compute islands too
	$(PY) -m tests.env.devenv up $(if $(AUTOSCALER),--autoscaler $(AUTOSCALER)) --islands $(ISLANDS)

.PHONY: dev-down
dev-down: ## stop everything dev-up started
	@if [ -x $(PY) ]; then $(PY) -m tests.env.devenv down; else echo "nothing to stop"; fi

.PHONY: clean
clean: ## remove the virtualenv and build outputs (keeps ~/.cache/atoll)
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache
