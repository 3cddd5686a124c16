# voiceproject: `make run` serves the embedded default, `make test` runs every check.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 8765
RECEIVER_PORT ?= 5001
# Prometheus multiprocess files of this host's processes (daphne, the receiver's
# helpers, workers): wiped once here, before the services start, never by a process.
METRICS_DIR ?= run/metrics

.PHONY: install install-dev run ports-free demo-reset test lint migrate clean

# What running needs; `make test` and `make lint` add the dev extras (install-dev).
install: $(STAMP)

# A failed `venv` (Debian without python3-venv) leaves a .venv without pip: remove it,
# so that the next try starts clean.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' \
	  || { echo "make: voiceproject needs Python 3.11 to 3.13; $(PYTHON) is $$($(PYTHON) -V 2>&1) (choose one: make PYTHON=python3.12 …)" >&2; exit 1; }
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(DEV_STAMP)

# A local .env (mode 0600) with a random development DJANGO_SECRET_KEY, so that
# `make run` and every manage.py command work on a fresh machine. Production sets its
# own key. ensure_demo keeps the demo login and token here too.
.env:
	@umask 077 && echo "DJANGO_SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" > .env
	@echo "make: wrote .env with a development DJANGO_SECRET_KEY (set your own in production)"

migrate: install .env
	$(PY) manage.py migrate --noinput

# Before anything changes (no install, no migration, no new demo login): are the ports
# free? The probe binds as daphne and the receiver do (SO_REUSEADDR), so a port that a
# stopped server left in TIME_WAIT counts as free.
define PORT_CHECK
import socket, sys
host = sys.argv[1]
for arg in sys.argv[2:]:
    name, port = arg.split("=")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            what = "is in use (another make run?): stop it" if exc.errno == 98 else f"cannot be used ({exc.strerror})"
            sys.exit(f"make run: port {port} on {host} {what}, or choose another port: make run {name}={int(port) + 1}")
endef
export PORT_CHECK
# The demo receiver's port only matters when make run starts it.
PORTS := PORT=$(PORT) $(if $(RECEIVER_HOST)$(RECEIVER_URL),,RECEIVER_PORT=$(RECEIVER_PORT))

ports-free:
	@$(PYTHON) -c "$$PORT_CHECK" $(HOST) $(PORTS)

# ports-free first: make builds prerequisites in order (not with -j).
run: ports-free migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_demo --url http://$(HOST):$(PORT)/
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	@# daphne and (unless a receiver is configured) the demo receiver, under one
	@# process that Ctrl-C or SIGTERM stops with both (transcription/.../run_local.py).
	@PROMETHEUS_MULTIPROC_DIR=$(abspath $(METRICS_DIR)) exec $(PY) manage.py run_local \
	  --host $(HOST) --port $(PORT) --receiver-port $(RECEIVER_PORT)

# A new demo password and token on purpose (browsers logged in as demo are logged out).
demo-reset: migrate
	$(PY) manage.py ensure_demo --rotate --url http://$(HOST):$(PORT)/

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The second run repeats the tests marked `services` on real PostgreSQL and Redis.
SERVICES_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/voiceproject REDIS_URL=redis://127.0.0.1:6379/1

test: lint
	$(VENV)/bin/pytest
	$(SERVICES_ENV) $(VENV)/bin/pytest -m services

# The database and the installed environment; .env (the secret key, the demo login) stays.
clean:
	rm -rf $(VENV) staticfiles db.sqlite3
