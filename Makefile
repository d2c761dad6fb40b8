# The two commands of the README. Each creates .venv (once) and installs xrdist into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/xrdist demo $(ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check xrdist tests notebooks
	$(BIN)/ruff format --check xrdist tests notebooks
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
