# The README's commands call these targets. Everything runs inside .venv (created here).
#   make repro   environment + data + the pipeline on the default profile (the main job):
#                stale stages two at a time, recorded by DVC exactly as `dvc repro` would
#   make test    environment + data + the test suite (what CI runs)
#   make lab     JupyterLab with the project's kernel
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
# pip's configured local indexes print a warning for every package they lack: hide those lines.
# The braces keep pip's exit status (pipefail): grep finding nothing to print is no failure, but a
# pip that fails (no space left, no index) stops the build there.
PIPQUIET := { grep -v -E "^WARNING: Location .* is ignored" || true; }
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup data repro seeds test test-fast lab bench lint strip clean help

help:
	@echo "make repro | seeds | test | test-fast | lab | bench | lint | strip | clean"

$(BIN)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIPQUIET)
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | $(PIPQUIET)
	$(BIN)/python -m ipykernel install --sys-prefix --name advlab --display-name "Python (advlab)" >/dev/null
	$(BIN)/python -c "import torch, torchvision, advlab; print('advlab env: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

setup: $(BIN)/.stamp

# Fashion-MNIST comes from Debian's dataset-fashion-mnist offline (installed here if missing and
# we may), or from torchvision's downloader on a connected machine.
$(FMNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	  echo "could not install dataset-fashion-mnist; the fetch will try torchvision's downloader"; \
	else echo "note: 'sudo apt-get install dataset-fashion-mnist' gives Fashion-MNIST offline"; fi

data: setup $(FMNIST)
	$(BIN)/python -m advlab data fetch
	$(BIN)/python -m advlab data cache

repro: data
	$(BIN)/python -m advlab repro --jobs 2

# Seeds as queued DVC experiments (each in its own copy of the repo) and SEEDS.md over them:
#   make seeds SEEDS="1 2" STAGES="02_awp 09_aae_anomaly"   (STAGES empty: the whole pipeline)
SEEDS ?= 1 2
STAGES ?=
seeds: data
	$(BIN)/python -m advlab seeds $(SEEDS) $(if $(STAGES),--stages $(STAGES))

test: data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: data
	$(BIN)/python -m pytest -m "not notebook and not pipeline" $(PYTEST_ARGS)

# (as root, e.g. in a container, Jupyter needs --allow-root)
lab: data
	OMP_WAIT_POLICY=PASSIVE $(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

bench: data
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/load.py

lint: setup
	$(BIN)/ruff check lib tests benchmarks tools
	$(BIN)/nbstripout --verify notebooks/*.ipynb

# Strip outputs and papermill's volatile metadata from the source notebooks
strip: setup
	$(BIN)/nbstripout --extra-keys "metadata.papermill cell.metadata.papermill metadata.widgets" notebooks/*.ipynb

clean:
	rm -rf scratch .advlab_cache .pytest_cache
