# The few obvious targets (STYLE.md 12). `make main` and `make test` are the README's two commands.
VENV := .venv/bin

.PHONY: setup main test test-slow test-cluster lint format bench

setup:
	@bash scripts/setup.sh

main: setup  ## the main job (README): quickstart training + run record
	$(VENV)/dropens train data=mnist1d model=cnn1d method=dropout dropout.p=0.1 seed=0 study=quickstart

test: setup  ## lint + the default (fast) test suite
	$(VENV)/ruff check .
	$(VENV)/pytest -q

test-slow: setup  ## long tests: real trainings to reference accuracy, every study config
	$(VENV)/pytest -q -m slow

test-cluster: setup  ## the SLURM tests (start a local single-node cluster)
	$(VENV)/pytest -q -m cluster

lint: setup
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format: setup
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

bench: setup  ## performance ratios, printed side by side
	@for f in benchmarks/bench_*.py; do $(VENV)/python $$f; done
