# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and
# installs what it needs, pinned by constraints.txt (the versions CI last passed with).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# TensorFlow's CPU-only wheel is smaller but exists only for Linux x86_64.
TF_EXTRA := $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),tensorflow-cpu,tensorflow)

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e ".[$(TF_EXTRA)]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e ".[$(TF_EXTRA),jax,onnx,dicom,serve,download,tensorboard,dev]"
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/cxr demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks

# Two test processes: most of the slow tests' time is single-threaded graph building and compilation,
# so two of them share a 2-core machine well (CI: 24.8 min in one process, 17.2 min in two).
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
