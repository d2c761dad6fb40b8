# The commands of the README. Each creates .venv (once) and installs xrdist into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test docs lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $@

# The documentation's tools (the docs extra) on top of the test install.
$(BIN)/.installed-docs: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/xrdist demo $(ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check xrdist tests notebooks
	$(BIN)/ruff format --check xrdist tests notebooks
	$(BIN)/python -m pytest $(ARGS)

# The HTML site in docs/_build/html; a warning (a broken link, a docstring that
# does not parse, a page in no toctree) fails the build. -E reads every page each time
# (a few seconds): an incremental build would not repeat a warning of an unchanged page.
docs: $(BIN)/.installed-docs
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/generated
