# hyper2kvm — one entry point for setting up, testing and demonstrating the project.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PYTHON      := $(VENV)/bin/python
export HYPER2KVM_CACHE ?= $(HOME)/.cache/hyper2kvm
# Two cores on the reference machine: keep test parallelism modest.
PYTEST_ARGS ?=

.PHONY: help setup packages venv test test-unit test-worker test-cluster lint bench demo crds clean
.PHONY: kubevirt-checker

include hack/cluster.mk
include hack/ops.mk

help: ## list the targets
	@awk -F':.*## ' '/^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: packages venv ## install apt packages and the virtualenv (idempotent)

packages:
	@hack/install-packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[operator,dev]'
	@touch $@

test: setup lint cluster-binaries chart-tools kubevirt-checker vcsim ## run the whole test suite
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: setup ## only the pure-logic tests (seconds)
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

test-worker: setup ## the worker against real qemu-img and nbdkit
	$(PYTHON) -m pytest tests/worker $(PYTEST_ARGS)

test-cluster: setup cluster-binaries chart-tools vcsim ## against a real control plane, or the cluster of KUBECONFIG
	$(PYTHON) -m pytest tests/cluster $(PYTEST_ARGS)

lint: venv chart-tools ## ruff, mypy (strict), import-layer contracts, hadolint, helm lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy worker/hyper2kvm_worker operator/hyper2kvm_operator tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile.worker Dockerfile.operator
	"$$(hack/tools/build.sh)/bin/helm" lint --strict --quiet charts/hyper2kvm

kubevirt-checker: ## build the checker of VirtualMachines against kubevirt.io/api's Go types once (cached)
	@hack/kubevirt/build.sh >/dev/null

crds: venv ## regenerate crds/ (and the chart's copy) from the API models; tests catch stale ones
	$(PYTHON) -m hyper2kvm_operator.crd crds
	cp crds/*.yaml charts/hyper2kvm/crds/

bench: setup cluster-binaries ## benchmarks: conversion against qemu-img and cp, over a shaped link; the operator under load
	$(PYTHON) bench/convert_bench.py
	$(PYTHON) bench/remote_bench.py
	$(PYTHON) bench/operator_bench.py
	$(PYTHON) bench/operator_bench.py --case latency
	$(PYTHON) bench/operator_bench.py --case queued

demo: setup cluster-binaries chart-tools ## convert a generated VMDK end to end, then through the chart-installed operator
	@hack/demo.sh

clean: ## remove the virtualenv and caches inside the clone
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info worker/*.egg-info
