"""The composition root: ``create_app`` builds the ASGI application and everything it uses."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import admin, admin_deliveries, admin_watches, health, metrics, openapi, ops
from service.access_log import AccessLogMiddleware
from service.errors import RelayError
from service.http import JSONResponse, http_error_handler, relay_error_handler
from service.http_protocol import BoundedHttpToolsProtocol
from service.receiver import receive_callback
from service.relay import Relay
from service.settings import Settings
from service.worker import BackgroundWork

log = structlog.get_logger("service.app")

#: How uvicorn must run the relay, wherever it is started (CLI, tests, benchmarks).
UVICORN_OPTIONS = {
    "access_log": False,  # service.access_log writes one with callback tokens masked
    "log_config": None,  # keep the structlog configuration
    "proxy_headers": False,  # X-Forwarded-For is believed only from RELAY_TRUSTED_PROXIES
    "server_header": False,
    "http": BoundedHttpToolsProtocol,  # a bounded request head; JSON for malformed requests
}


async def internal_error(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", exc_info=exc)
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "The relay failed; nothing was accepted."}},
        status_code=500,
    )


def create_app(settings: Settings, *, run_worker: bool = True) -> Starlette:
    """The relay as an ASGI app; the store and the delivery worker live with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay = await Relay.start(settings)
        app.state.relay = relay
        if relay.generated_admin_token:
            # Shown once, on the terminal, never in a log line; `relay admin-token` shows it again.
            print(
                f"Admin token (generated, kept in the store): {relay.generated_admin_token}",
                file=sys.stderr,
                flush=True,
            )
        background = BackgroundWork(relay) if run_worker else None
        if background is not None:
            await background.start()
        app.state.worker = background.worker if background is not None else None
        log.info(
            "relay_started",
            database=settings.database_url.split("://", 1)[0],
            public_url=settings.public_url,
            worker=run_worker,
        )
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # reach, so full collections stay short (they showed up as 25-50 ms latency spikes).
        gc.freeze()
        try:
            yield
        finally:
            if background is not None:
                await background.stop()
            await relay.close()
            log.info("relay_stopped")

    routes = [
        Route("/callbacks/{provider}/{token}", receive_callback, methods=["POST"]),
        # Account-level webhooks (Rivya): no token; the provider's signature is the check.
        Route("/callbacks/{provider}", receive_callback, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_endpoint, methods=["GET"]),
        *admin.routes,
        *admin_deliveries.routes,
        *admin_watches.routes,
        *ops.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AccessLogMiddleware)],
        exception_handlers={
            RelayError: relay_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error,
        },
        lifespan=lifespan,
    )
    # A path with a stray trailing slash is a 404 JSON error like any unknown path, not an
    # empty 307 to a URL built from the request's Host header.
    app.router.redirect_slashes = False
    return app
