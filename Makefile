# Two commands do all the set-up on a fresh machine:
#   make demo   -> .venv + slimstep demo
#   make test   -> .venv + the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp is remade whenever the package metadata changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,diffusers]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/slimstep demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
