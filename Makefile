# Two commands on a fresh machine:  `make demo`  and  `make test`.
# torch==2.13.0 is installed first and on its own: that CPU wheel lies on this machine's disk,
# while an unpinned torch would pull several GB of CUDA wheels.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test bootstrap bootstrap-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/pip install -q -e '.[test,app,bench]'
	touch $@

bootstrap: $(VENV)/.base
bootstrap-test: $(VENV)/.test

demo: $(VENV)/.base
	$(BIN)/rlhfkit demo --output-dir $(DEMO_DIR)

test: $(VENV)/.test
	bash scripts/run_tests.sh $(BIN)/python

clean:
	rm -rf $(VENV) runs .pytest_cache
