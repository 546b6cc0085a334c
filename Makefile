# Set-up, tests and demo. Every target builds .venv from nothing when it is missing.
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,train]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup Testing

demo: $(STAMP)
	$(PY) Testing/demo.py $(if $(CASE),--case "$(CASE)")

bench: $(STAMP)
	$(PY) Testing/Benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) demo_output
