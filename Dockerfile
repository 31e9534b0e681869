# syntax=docker/dockerfile:1
# callback-relay: build a wheel in one stage, install it into a slim, non-root runtime image.
# Configured only by RELAY_* variables; SQLite at /data/relay.db unless RELAY_DATABASE_URL says
# otherwise (postgresql://... for several replicas).

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m build --wheel --outdir /wheels

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_DATABASE_URL=sqlite:////data/relay.db
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --create-home relay
USER 10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# `relay` is the entry point; the default command serves on all interfaces. Run a delivery-only
# process with `docker run IMAGE worker`.
ENTRYPOINT ["relay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
