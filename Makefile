# The two commands of the README:
#   make demo   set everything up, run the pipeline on the embedded demo data
#   make test   set everything up and run lint + the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.asap-installed

.PHONY: setup test test-fast lint bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull gigabytes of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Interim demo: a generated planted-artifact set (the photo/DCGAN demo set and the explorer are
# open issues). Re-running reuses the data and resumes the run.
demo: setup
	$(BIN)/python data/build_planted.py --n 1000 --out data/planted
	$(BIN)/asap run data/planted --out runs/planted

bench: setup
	$(BIN)/python benchmarks/pipeline.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
