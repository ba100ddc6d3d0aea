# The two commands of the README:
#   make demo   set everything up, run the pipeline on the embedded demo data
#   make test   set everything up and run lint + the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.asap-installed

.PHONY: setup test test-fast lint bench demo serve browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull gigabytes of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	# the demo's pretrained face DCGAN; its declared dependencies (wandb, ...) are not needed
	$(BIN)/python -m pip install -q --no-deps gan-face-generate==1.1.1
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's chromium for the browser tests (Playwright drives it; never `playwright install`)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

browser: $(CHROMIUM)

test: setup lint browser
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The demo: build the embedded data set (data/build_demo.py), run the pipeline (maps, layout,
# patterns) with the committed demo encoder (data/demo-encoder.pt, made by
# data/make_demo_encoder.py: the same figures on every machine) and serve the explorer on it.
# TRAIN=1 trains the encoder here instead, with the committed one's recipe (DEMO_TRAIN: about 30
# minutes on 2 cores; figures then vary by CPU) into runs/demo-trained. Re-running reuses the data, the encoder and every finished partition.
# SERVE=0 stops before serving (CI, scripts).
DEMO_N ?= 2000
SERVE ?= 1
PORT ?= 5006
TRAIN ?= 0
DEMO_ENCODER ?= data/demo-encoder.pt
DEMO_TRAIN ?= --epochs 150 --patience 30 --stem patch
DEMO_RUN := $(if $(filter 1,$(TRAIN)),runs/demo-trained,runs/demo)
demo: setup
	$(BIN)/python data/build_demo.py --n $(DEMO_N) --out data/demo --seed 0
	$(BIN)/asap run data/demo --out $(DEMO_RUN) $(if $(filter 1,$(TRAIN)),$(DEMO_TRAIN),--encoder $(DEMO_ENCODER))
	$(BIN)/asap info $(DEMO_RUN)
	if [ "$(SERVE)" = 1 ]; then $(BIN)/asap serve $(DEMO_RUN) --port $(PORT); fi

serve: setup
	$(BIN)/asap serve runs/demo --port $(PORT)

bench: setup
	$(BIN)/python benchmarks/pipeline.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
