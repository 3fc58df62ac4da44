# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Store servers that `make test` starts; set EMULATORS= to run without them.
EMULATORS ?= dynamodb firestore mongodb cassandra

.PHONY: demo test install bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml examples/jsondir-backend/pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test,demo,emulators,bench]'
	$(PY) -m pip install --quiet -e examples/jsondir-backend
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mltrail demo

test: $(STAMP)
	EMULATORS="$(EMULATORS)" PY="$(PY)" bash scripts/run-tests

bench: $(STAMP)
	$(PY) -m benchmarks.run --full

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) build *.egg-info
