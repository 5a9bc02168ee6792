# The two commands of the quickstart: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Both cores: every test is safe in parallel (one throwaway embedded server per worker).
PYTEST_ARGS ?= -n 2

.PHONY: demo test venv dev clean-db bench lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The demo's operator opens the runbooks in JupyterLab afterwards: the core plus the [operator] extra.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[operator]'
	touch $@

# [dev] includes [operator]: nbval, pytest, jupytext and JupyterLab for the notebook tests.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $@

venv: $(STAMP)
dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/dbrunbook demo

test: $(DEV_STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff with the rule set and line length of pyproject.toml on the library, tests and benches; mypy on lib/.
# The layer rules (imports go down, private names stay home, modules under 400 lines) are tests/unit/test_layers.py.
lint: $(DEV_STAMP)
	$(BIN)/ruff check --output-format concise lib tests bench
	$(BIN)/mypy

bench: $(DEV_STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/counts.py
	$(BIN)/python bench/lock_stall.py
	$(BIN)/python bench/backup.py

clean-db:
	-$(BIN)/dbrunbook db stop

# Every procedure on real third-party Alembic chains (mlflow, phoenix, prefect) beside plain Alembic; not part
# of `make test` (installs take minutes; venvs are cached under bench/_work). CHAINS=mlflow,phoenix to choose.
.PHONY: acceptance
acceptance:
	$(PYTHON) bench/real_chains.py $(if $(CHAINS),--chains $(CHAINS))
