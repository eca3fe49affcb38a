# The few obvious targets (STYLE.md 12). `make main` and `make test` are the README's two commands.
VENV := .venv/bin

.PHONY: setup main test test-slow test-cluster test-cluster-slow lint format bench studies reports

setup:
	@bash scripts/setup.sh

main: setup  ## the main job (README): the quickstart study (12 runs) and its report
	$(VENV)/dropens study quickstart launcher.workers=2
	$(VENV)/dropens report quickstart

test: setup  ## lint + the default (fast) test suite
	$(VENV)/ruff check .
	$(VENV)/pytest -q

test-slow: setup  ## long tests: real trainings to reference accuracy, every study config
	$(VENV)/pytest -q -m "slow and not cluster"

test-cluster: setup  ## the SLURM tests, as root: the fixture starts a local single-node cluster (scripts/slurm_cluster.sh)
	$(VENV)/pytest -q -m "cluster and not slow"

test-cluster-slow: setup  ## every issue-6 study's tiny form as a SLURM job array (~15 min on 2 cores)
	$(VENV)/pytest -q -m "cluster and slow"

lint: setup
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format: setup
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

bench: setup  ## performance ratios, printed side by side
	@for f in benchmarks/bench_*.py; do $(VENV)/python $$f; done

STUDIES := $(basename $(notdir $(wildcard experiments/*.yaml)))

studies: setup  ## the full studies behind reports/ (hours on a laptop; see README for SLURM)
	@for s in $(STUDIES); do $(VENV)/dropens study $$s launcher.workers=2 || exit 1; done

reports: setup  ## regenerate every figure and table of reports/ (no training): from results/<study>/ where trained here, else from the committed records reports/<study>/records.jsonl
	$(VENV)/dropens report --all
