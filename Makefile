# voiceproject: `make run` serves the embedded default, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8765
RECEIVER_PORT ?= 5001
# Prometheus multiprocess files of this host's processes (daphne, the receiver's
# helpers, workers): wiped once here, before the services start, never by a process.
METRICS_DIR ?= run/metrics

.PHONY: install run test lint migrate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# A local .env with a random development DJANGO_SECRET_KEY, so that `make run` and every
# manage.py command work on a fresh machine. Production sets its own key.
.env:
	@echo "DJANGO_SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')" > .env
	@echo "make: wrote .env with a development DJANGO_SECRET_KEY (set your own in production)"

migrate: install .env
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_demo --url http://$(HOST):$(PORT)/
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	@# The demo receiver answers beside daphne unless a receiver is configured.
	@export PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/$(METRICS_DIR); \
	if [ -z "$$RECEIVER_HOST$$RECEIVER_URL" ]; then \
	  $(PY) manage.py run_receiver --host 127.0.0.1 --port $(RECEIVER_PORT) & \
	  trap "kill $$! 2>/dev/null" EXIT; \
	  export RECEIVER_HOST=127.0.0.1 RECEIVER_PORT=$(RECEIVER_PORT); \
	fi; \
	$(VENV)/bin/daphne --bind $(HOST) --port $(PORT) voiceproject.asgi:application

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The second run repeats the tests marked `services` on real PostgreSQL and Redis.
SERVICES_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/voiceproject REDIS_URL=redis://127.0.0.1:6379/1

test: lint
	$(VENV)/bin/pytest
	$(SERVICES_ENV) $(VENV)/bin/pytest -m services

clean:
	rm -rf $(VENV) staticfiles db.sqlite3
