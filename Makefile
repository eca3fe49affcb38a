# The few obvious targets (STYLE.md 12). `make main` and `make test` are the README's two commands.
VENV := .venv/bin

.PHONY: setup main test test-slow test-cluster lint format bench studies reports

setup:
	@bash scripts/setup.sh

main: setup  ## the main job (README): the quickstart study (12 runs) and its report
	$(VENV)/dropens study quickstart launcher.workers=2
	$(VENV)/dropens report quickstart

test: setup  ## lint + the default (fast) test suite
	$(VENV)/ruff check .
	$(VENV)/pytest -q

test-slow: setup  ## long tests: real trainings to reference accuracy, every study config
	$(VENV)/pytest -q -m slow

test-cluster: setup  ## the SLURM tests, as root: the fixture starts a local single-node cluster (scripts/slurm_cluster.sh)
	$(VENV)/pytest -q -m cluster

lint: setup
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format: setup
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

bench: setup  ## performance ratios, printed side by side
	@for f in benchmarks/bench_*.py; do $(VENV)/python $$f; done

studies: setup  ## the full studies behind reports/ (hours on a laptop; see README for SLURM)
	$(VENV)/dropens study magnitude
	$(VENV)/dropens study ensemble_view

reports: setup  ## regenerate every figure of reports/ from the run records (no training)
	@for s in quickstart magnitude ensemble_view; do $(VENV)/dropens report $$s; done
