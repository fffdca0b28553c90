VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install test lint demo gen bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(wildcard framework scaffold examples tests benchmarks)

demo: $(VENV)/.installed
	$(VENV)/bin/python -m examples.greeter.demo

bench: $(VENV)/.installed  # every scenario of docs/benchmarks.md; BENCH_ARGS=--quick for a smoke run
	$(VENV)/bin/python -m benchmarks $(BENCH_ARGS)

gen: $(VENV)/.installed
	PYTHON=$(VENV)/bin/python bash examples/greeter/gen.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
