# The two commands a new machine needs: `make run` and `make test`.
# Both create (or reuse) the virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint install clean browser nginx

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/relay serve

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
test: lint browser nginx
	rm -f .coverage .coverage.*
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) relay.db relay.db-wal relay.db-shm .coverage .coverage.*
