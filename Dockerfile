# syntax=docker/dockerfile:1
# callback-relay: build a wheel in one stage, install it into a slim, non-root runtime image.
# Configured only by RELAY_* variables; SQLite at /data/relay.db unless RELAY_DATABASE_URL says
# otherwise (postgresql://... for several replicas: the image has the postgres extra).
#
# Reproducible: every Python package comes from the hashed lock (requirements/, `make lock`).
# The base image is named by tag only: pin it by digest before building images you ship, with
#   docker buildx imagetools inspect python:3.11-slim    (the "Digest: sha256:..." line)
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
# and write that default below. The digest is not written here because it was never read from
# the registry where this file was made (no registry reachable there); an invented one would
# fail the build or, worse, name another image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# The build backend, locked too: the wheel is built without fetching anything unhashed.
COPY requirements/build.txt requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_DATABASE_URL=sqlite:////data/relay.db \
    RELAY_PORT=8000
RUN useradd --system --uid 10001 --home-dir /data --create-home relay
# The dependencies in a layer of their own, before the code: rebuilt only when the lock changes.
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /data
EXPOSE 8000
# Follows RELAY_PORT, the port `relay serve` listens on (set it, rather than --port, to move it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RELAY_PORT') or '8000'; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
# `relay` is the entry point; the default command serves on all interfaces, on RELAY_PORT. Run a
# delivery-only process with `docker run IMAGE worker`.
ENTRYPOINT ["relay"]
CMD ["serve", "--host", "0.0.0.0"]
