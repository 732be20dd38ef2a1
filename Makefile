# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install torch 2.13.0 first: on these machines that takes the
# CPU wheel from disk, and the package's torch range is then already satisfied.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmtlab demo

lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

test: $(STAMP) lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs data
