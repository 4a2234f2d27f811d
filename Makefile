# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use (torch and the rest from the package registry; the ui extra, gradio, for the
# tests of `ipl ui`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test env clean
$(BIN)/ipl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,ui]'
	touch $(BIN)/ipl

env: $(BIN)/ipl

demo: env
	$(BIN)/ipl adapt --source toy --target "on a dark background" --out runs/toy-demo --force
	$(BIN)/ipl eval runs/toy-demo

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
