# Every target runs inside .venv, created on first use with the system python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers; CI has 2 cores.
WORKERS ?= 2

.PHONY: install test test-slow notebooks docs benchmark train clean constraints

# make train WORKDIR=...: rerunning with a workdir that has a checkpoint resumes.
WORKDIR ?= workdir/default

# constraints.txt pins the versions CI tests (setup.cfg's lower bounds).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# loadgroup: tests marked xdist_group share one worker (and its fixtures).
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n $(WORKERS) --dist loadgroup tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow tests

# Every notebook in notebooks/, top to bottom in smoke mode, after checking
# each .ipynb is what its paired .py gives (experiments/notebooks.py).
notebooks: $(STAMP)
	$(PY) -m efficient_attention.experiments.notebooks --check --run

# The docs/ pages and the API reference from the docstrings, with Sphinx;
# any warning fails the build. The HTML is left in docs/_build/html.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

train: $(STAMP)
	$(PY) -m efficient_attention.experiments.main --workdir=$(WORKDIR)

# The README benchmark table; see experiments/benchmark.py for the flags.
benchmark: $(STAMP)
	$(PY) -m efficient_attention.experiments.benchmark --output=benchmark.json

# After upgrading .venv's packages and passing the suite: pin what passed.
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^efficient'; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache docs/_build
