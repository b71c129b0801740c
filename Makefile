# One task runner; CI calls these targets verbatim.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install run test test-unit test-faults lint fmt typecheck check schema bench bench-deps bench-full chaos agent-pyz clean contract-deps console-test-deps bench-console

$(BIN)/execbus: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/execbus  ## create the venv and install execbus with its test and dev extras

run: install  ## run a worker with the embedded local agent (needs RabbitMQ)
	$(BIN)/execbus worker

test: install  ## the whole test suite (unit, agent, integration, faults)
	$(BIN)/pytest $(PYTEST_ARGS)

contract-deps:  ## the Node.js contract suite's packages (tests/system/contract, pinned by package-lock.json)
	cd tests/system/contract && npm ci --ignore-scripts --no-audit --no-fund

console-test-deps:  ## the console's browser tests: playwright-core, pinned by tests/system/console/package-lock.json (the browser is Debian's chromium)
	cd tests/system/console && npm ci --ignore-scripts --no-audit --no-fund

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-faults: install
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

lint: install  ## ruff lint + format check + the import contracts (pyproject: tool.importlinter)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: install  ## mypy --strict on src/
	$(BIN)/mypy

check: lint typecheck test

schema: install  ## regenerate docs/schema/*.json and docs/asyncapi.yaml
	$(BIN)/python -m execbus.wire.schema docs

bench-deps: install  ## the benchmark's optional tools: Celery (the baseline) and py-spy
	$(BIN)/pip install -q -e '.[dev,bench]'

bench: install  ## end-to-end benchmark (prints JSON)
	$(BIN)/python bench/e2e.py

bench-full: bench-deps  ## everything docs/performance.md reports (~5 min)
	$(BIN)/python bench/e2e.py --with-celery --profile --full --update-docs

bench-console: install  ## the console's store at 100,000 execs: memory and time (prints JSON)
	$(BIN)/python bench/console.py

chaos: install  ## 5-minute fault-injection soak on a private RabbitMQ node (prints JSON)
	$(BIN)/python bench/chaos.py

agent-pyz: install  ## the guest agent as one file for any python3 >= 3.9 (docs/guest.md)
	$(BIN)/execbus agent-bundle -o dist/execbus-agent.pyz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
