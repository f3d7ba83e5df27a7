# Quick start:  make demo       (set-up included: a virtualenv in .venv, the package, the demo run)
#               make test       (set-up included: the test, compare, eval, wandb and notebooks extras; the default test suite)
#               make test-slow, make test-faults   (the opt-in suites: long runs; fault injection, tests/faults/)
#               make notebooks  (set-up for notebooks/: the notebooks extra)
# Each set-up step leaves a stamp in .venv, so `make demo` then `make test` installs only the extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-faults lint notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,compare,eval,wandb]'
	touch $@

$(VENV)/.installed-notebooks: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[notebooks]'
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/gpt3-jax train configs/demo.yaml

test: $(VENV)/.installed-test $(VENV)/.installed-notebooks
	$(BIN)/python -m pytest -q

# pytest exits 5 when a marker selects no test: not a failure here
test-slow: $(VENV)/.installed-test $(VENV)/.installed-notebooks
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

# -s: the kill -9 trials print one line each (seed, where each kill landed, the outcome)
test-faults: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -s -m faults tests/faults || [ $$? -eq 5 ]

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gpt3_jax tests benchmarks
	$(BIN)/ruff format --check gpt3_jax tests benchmarks

notebooks: $(VENV)/.installed-notebooks
	@echo "notebooks/ is ready to run with $(BIN)/python (kernel: ipykernel in $(VENV))"

clean:
	rm -rf $(VENV) runs notebooks/runs
