# The two commands a new machine needs: `make run` and `make test`.
# Both create (or reuse) the virtual environment in .venv from the hashed lock.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint install clean browser nginx floors lock

# The lock (`make lock` writes it from pyproject.toml): every package at one version, each with
# its hashes. dev.txt is what `make install` installs (runtime, postgres, test and bench extras,
# the build backend); runtime.txt (the image's) and build.txt hold the same versions.
LOCK = requirements/dev.txt

# Dependencies from the lock only, hash-checked; then the project itself, editable, built with
# the locked backend (no isolated build fetching an unlocked one). A changed lock re-runs this
# in place: pip moves each package to its locked version.
$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

# `make run PORT=8080` serves on another port (the default public URL follows it).
run: $(BIN)/.installed
	$(BIN)/relay serve$(if $(PORT), --port $(PORT))

# The ops console's browser test drives Debian's Chromium. Installed here when missing and
# root (the machines are Debian); otherwise that test skips with the reason (fails on CI).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the ops console's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      || echo "could not install chromium: the browser test will say so"; \
	  else \
	    echo "no $(CHROMIUM) and not root: the browser test will skip (and fail on CI)"; \
	  fi; \
	fi

# The deploy test runs Debian's nginx (deploy/nginx.conf) in front of real relays. Installed here
# when missing and root; otherwise that test skips with the reason (fails on CI). Debian's package
# would start a server on port 80: policy-rc.d (present in Debian's images) or no init keeps it
# from running; the test starts its own nginx on loopback.
NGINX ?= /usr/sbin/nginx
nginx:
	@if [ ! -x $(NGINX) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's nginx for the deploy test (tests/test_proxy.py)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) \
	      || echo "could not install nginx: the proxy test will say so"; \
	  else \
	    echo "no $(NGINX) and not root: the proxy test will skip (and fail on CI)"; \
	  fi; \
	fi

# Lint, formatting and strict typing first (seconds), then the suite under coverage: pytest-cov
# prints the figure per module and fails below [tool.coverage.report] fail_under. The relays the
# tests start as subprocesses are measured too ([tool.coverage.run] patch = subprocess).
test: lint floors browser nginx
	rm -f .coverage .coverage.*
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Refresh the lock after changing a dependency in pyproject.toml: versions already locked are
# kept where they still fit (`make lock LOCK_ARGS=--upgrade` moves everything to the newest).
COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(LOCK_ARGS)
lock: $(BIN)/.installed
	$(COMPILE) --extra test --extra bench --extra postgres pyproject.toml requirements/build.in \
	  -o requirements/dev.txt
	$(COMPILE) --extra postgres pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt
	$(COMPILE) requirements/build.in -c requirements/dev.txt -o requirements/build.txt

# The floors: the lowest version of each dependency pyproject.toml allows (uv's lowest-direct
# resolution), in a venv of their own made anew, and the fast tests of the code that leans on
# each dependency's behaviour: uvicorn (http_protocol, receiver), orjson (callback_json,
# watches), aiohttp (delivery, targets), psycopg (postgres_pipeline), msgspec (shapes),
# prometheus-client (health_metrics), structlog (logs), httpx (watches), OpenTelemetry
# (tracing_otel: the spans a relay exports, decoded at a loopback receiver). About three
# minutes, most of it the tests' waiting. A floor that does not install or pass is raised
# in pyproject.toml.
FLOORS = .venv-floors
FLOORS_TESTS ?= tests/test_http_protocol.py tests/test_receiver.py \
	tests/test_callback_json.py tests/test_delivery.py tests/test_targets.py \
	tests/test_postgres_pipeline.py tests/test_shapes.py tests/test_health_metrics.py \
	tests/test_logs.py tests/test_watches.py \
	tests/test_settings_and_policy.py tests/test_secret_files.py tests/test_postgres_extra.py \
	tests/test_tracing_otel.py
floors: $(BIN)/.installed
	rm -rf $(FLOORS)
	$(PYTHON) -m venv --without-pip $(FLOORS)
	$(BIN)/uv pip install --quiet --python $(FLOORS)/bin/python --resolution lowest-direct \
	  -e '.[test,postgres]'
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider -m 'not slow and not reliability' \
	  $(FLOORS_TESTS)

clean:
	rm -rf $(VENV) $(FLOORS) relay.db relay.db-wal relay.db-shm .coverage .coverage.*
