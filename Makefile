# Two entry points (see README): `make demo` runs the demo shop, `make test` runs the tests.
# Both create the virtual environment from scratch when it is missing or pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# Debian's Chromium and its WebDriver, which the browser tests drive (tests/browser.py).
BROWSER_PACKAGES := chromium chromium-driver fonts-liberation
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.PHONY: demo test test-oscar test-faults install browsers lint worker clean-db docs \
	package-check django-versions lib-django60

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[drf,clip,offline,shop,dev]"
	touch $@

install: $(VENV)/.installed

# Installs the browsers only when one is missing; `apt-get update` only if a first try fails.
# Without apt-get (not Debian) it says so and the browser tests skip (they fail when CI is set).
browsers:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
		echo "make browsers: no apt-get; install chromium and chromedriver under /usr/bin yourself"; \
	else \
		$(APT_INSTALL) $(BROWSER_PACKAGES) \
		|| { $(SUDO) apt-get update && $(APT_INSTALL) $(BROWSER_PACKAGES); }; \
	fi

# The docs build, the wheel, the Oscar adopter and Django 6.0's library tests first, so that
# the main suite's summary (Django 5.2, everything) closes the run.
test: $(VENV)/.installed browsers
	$(MAKE) docs
	$(MAKE) package-check
	$(MAKE) test-oscar
	$(MAKE) lib-django60
	$(VENV)/bin/pytest

# The django-oscar adopter (examples/oscar): Oscar's own catalogue models, unmodified, with
# visualsearch's side table, a real Celery worker, Redis and the embedded Postgres.
test-oscar: $(VENV)/.installed
	cd examples/oscar && ../../$(VENV)/bin/pytest

# The documentation site (mkdocs.yml, docs/): warnings are errors. docs/settings.md is
# regenerated from visualsearch/conf.py on every build; a stale committed copy fails it.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# The sdist and wheel: build, twine check --strict, the wheel with only the image extra in a
# fresh venv (manage.py check in a generated project, one photo encoded without torch).
package-check: $(VENV)/.installed
	$(VENV)/bin/pytest tests/packaging

# The library tests on Django 6.0 (Python 3.12 from pyenv, no torch: noxfile.py).
lib-django60: $(VENV)/.installed
	$(VENV)/bin/nox -s lib-django60

# Both Django legs: 5.2 (Python 3.11, everything) and 6.0 (Python 3.12, no torch).
django-versions: $(VENV)/.installed
	$(VENV)/bin/nox --report .nox/report.json

# Fault injection with real processes (Redis stopped, workers killed, Postgres restarted).
test-faults: $(VENV)/.installed
	$(VENV)/bin/pytest -m faults tests/infra/test_faults.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(VENV)/.installed
	bash shop/demo.sh $(HOST) $(PORT)

worker: $(VENV)/.installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(VENV)/bin/celery -A shop worker --loglevel=info --concurrency=1

clean-db:
	rm -rf .pgdata

# Inference off the web host (docs/scaling.md): an encoder worker on the embedding queue only
# (solo pool, the model loaded once), and the KServe v2 model server of the configured encoder.
.PHONY: encoder-worker kserve
KSERVE_PORT ?= 8080
encoder-worker: $(VENV)/.installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py visualsearch_worker --pool solo

kserve: $(VENV)/.installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) -m visualsearch.contrib.kserve_model \
		--http_port $(KSERVE_PORT) --enable_grpc false
