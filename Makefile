# Quick start:  make demo   (set-up included: a virtualenv in .venv, the package, the demo run)
#               make test   (set-up included; the default, fast test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,compare]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/gpt3-jax train configs/demo.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check gpt3_jax tests benchmarks
	$(BIN)/ruff format --check gpt3_jax tests benchmarks

clean:
	rm -rf $(VENV) runs
