# Two entry points (see README): `make demo` runs the demo shop, `make test` runs the tests.
# Both create the virtual environment from scratch when it is missing or pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test install lint worker clean-db

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[drf,clip,offline,shop,dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(VENV)/.installed
	bash shop/demo.sh $(HOST) $(PORT)

worker: $(VENV)/.installed
	$(VENV)/bin/celery -A shop worker --loglevel=info --concurrency=1

clean-db:
	rm -rf .pgdata
