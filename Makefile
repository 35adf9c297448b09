# Two commands do all the set-up on a fresh machine:
#   make demo   installs the project into .venv, trains a tiny SigLIP on the bundled digits, evaluates it
#   make test   installs the project (with test extras) into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow lint format clean

# the demo needs the runtime dependencies and scikit-learn's digits only (no peers, no test tools)
$(VENV)/.demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[demo,imagenet,test,peers,report,tensorboard]'
	$(PY) -m pip install -q --no-deps 'clip-retrieval==2.45.0'  # its ClipClient and clip-front, for the serve tests
	$(PY) -m pip install -q --no-deps 'clip-benchmark==1.6.2'  # its wds builder and metrics, for tests/test_eval_wds.py
	$(PY) -m pip install -q --no-deps 'autofaiss==2.18.0' 'embedding-reader==1.8.1' 'fire>=0.4' termcolor  # autofaiss builds our clip-retrieval export in the tests; it pins numpy<2, pandas<3 (works with 2 and 3 through its Python API)
	touch $@

demo: $(VENV)/.demo
	$(PY) training/train.py --config configs/demo_config.py --output-dir runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs data/digits .pytest_cache
