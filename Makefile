# Every target runs inside .venv, created on first use with the system python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers; CI has 2 cores.
WORKERS ?= 2

.PHONY: install test test-slow benchmark train clean

# make train WORKDIR=...: rerunning with a workdir that has a checkpoint resumes.
WORKDIR ?= workdir/default

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# loadgroup: tests marked xdist_group share one worker (and its fixtures).
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n $(WORKERS) --dist loadgroup tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow tests

train: $(STAMP)
	$(PY) -m experiments.main --config=experiments/configs/default.py --workdir=$(WORKDIR)

# The README benchmark table; see experiments/benchmark.py for the flags.
benchmark: $(STAMP)
	$(PY) -m experiments.benchmark --output=benchmark.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
