# make install   virtual environment + torch (tested version, installed first) + requirements
# make demo      generate demo data and tiny models, run every task, print one results table
# make test      lint + the whole test-suite: the unit, slow and multiprocess tiers (what CI runs, .ci/run)
# make test-fast lint + the unit tier and the doctests (under a minute); a plain `pytest` runs the same tier
# make serve     after make demo: the demo's chat model on http://127.0.0.1:8000 (API + web page)
# make style     format and auto-fix;  make quality  check only

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
DEEPSPEED_VERSION ?= 0.19.8
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# pytest-xdist processes, each taking the next test when idle (make test: 8 min 40 s on 2 cores, 2026-12-02, 742
# tests; whole files per process was slower: two files hold most of the long runs); 0 runs in one process
TEST_WORKERS ?= 2

.PHONY: install install-dev demo serve test test-fast style quality clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch goes first and pinned: anything that merely depends on "torch" would otherwise pull
# the newest CUDA build (gigabytes). Skipped when the venv already has a torch.
# deepspeed builds against that torch: without --no-build-isolation pip would fetch another (CUDA) torch
# into a build environment. Its ops compile on first use (g++ and ninja), so the install is pure Python.
$(STAMP): requirements.txt | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -c "import deepspeed" 2>/dev/null || ( $(PY) -m pip install -q setuptools wheel && \
		$(PY) -m pip install -q --no-build-isolation deepspeed==$(DEEPSPEED_VERSION) )
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(PY) scripts/make_demo_data.py --output_dir demo
	$(PY) scripts/run_demo.py

serve: install
	@test -d outputs/seq2seq_demo || { echo "outputs/seq2seq_demo is missing: run make demo first"; exit 1; }
	$(PY) serve.py outputs/seq2seq_demo

# pyproject.toml's addopts select the unit tier (`-m unit`); a later -m wins, so `make test` names every tier
ALL_TIERS := unit or slow or multiprocess

test: install-dev quality
	$(PY) -m pytest -m "$(ALL_TIERS)" -n $(TEST_WORKERS) --dist worksteal

test-fast: install-dev quality
	$(PY) -m pytest -m unit -n $(TEST_WORKERS) --dist worksteal

style: install-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

quality: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf outputs demo .pytest_cache
