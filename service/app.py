"""The composition root: ``create_app`` builds the ASGI application and everything it uses."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from service import admin, health, memory, metrics, openapi, ops, served_policy, tracing
from service.access_log import AccessLogMiddleware
from service.archive_route import archived_output
from service.errors import RelayError
from service.http.error_handlers import http_error_handler, internal_error, relay_error_handler
from service.http.paths import route_path
from service.http_protocol import BoundedHttpToolsProtocol, ConnectionLimits
from service.listeners import PublicSurface
from service.receiver import CallbackEndpoint
from service.relay import Relay
from service.settings import Settings
from service.worker import BackgroundWork

log = structlog.get_logger("service.app")


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn must run the relay, wherever it is started (CLI, tests, benchmarks)."""
    limits = ConnectionLimits.from_settings(settings)
    return {
        "access_log": False,  # service.access_log writes one with callback tokens masked
        "log_config": None,  # keep the structlog configuration
        "proxy_headers": False,  # X-Forwarded-For is believed only from RELAY_TRUSTED_PROXIES
        "server_header": False,
        # The relay serves no WebSocket: uvicorn need not load an implementation (whose
        # websockets.legacy use warns under uvicorn's older releases with websockets 14+).
        "ws": "none",
        # Bounded request heads, slow clients and connections; JSON for malformed requests.
        # A partial (not a subclass made here) so that worker processes can unpickle it.
        "http": functools.partial(BoundedHttpToolsProtocol, limits=limits),
    }


class RelayApp(Starlette):
    """Starlette, except that callbacks go straight to their endpoint behind the access log.

    Callbacks are the relay's hot path: every provider update is one. Starlette's generic
    layers (its error middleware, exception handlers, the router's scan, Request and Response
    objects) cost about a tenth of a callback's time, and the callback endpoint needs none of
    them: it answers every outcome itself, errors included. Requests of another shape or
    method take the usual way, so the routing table (and its 404 and 405) stays the truth.
    """

    def __init__(self, *, callbacks: CallbackEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._callbacks = AccessLogMiddleware(callbacks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            params = callback_path_params(route_path(scope))
            if params is not None:
                scope["app"] = self
                scope["path_params"] = params
                await self._callbacks(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def callback_path_params(path: str) -> dict[str, str] | None:
    """``/callbacks/{provider}/{token}`` or ``/callbacks/{provider}`` -> its parameters, as the
    routes below would match them; None for any other path."""
    if not path.startswith("/callbacks/"):
        return None
    provider, slash, token = path[len("/callbacks/") :].partition("/")
    if not provider:
        return None
    if not slash:
        return {"provider": provider}
    if not token or "/" in token:
        return None
    return {"provider": provider, "token": token}


def _announce_admin_token(token: str) -> None:
    """Say that an admin token was generated; show it only to a person at a terminal.

    Logs (stderr, JSON) end up in container and log collectors, so the log line says where to
    get the token, never the token: ``relay admin-token`` prints it from the store.
    """
    log.warning(
        "admin_token_generated",
        hint="print it with `relay admin-token` (it is kept in the store)",
    )
    if sys.stderr.isatty():
        print(f"Admin token (generated, kept in the store): {token}", file=sys.stderr, flush=True)


def create_app(settings: Settings, *, run_worker: bool = True) -> RelayApp:
    """The relay as an ASGI app; the store and the delivery worker live with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay = await Relay.start(settings)
        relay.tracer = tracing.configure()  # OTEL_*: spans exported, or headers only
        app.state.relay = relay
        await served_policy.record(relay.store, relay.settings, relay.clock)
        if relay.generated_admin_token:
            _announce_admin_token(relay.generated_admin_token)
        background = BackgroundWork(relay) if run_worker else None
        if background is not None:
            await background.start()
        app.state.worker = background.worker if background is not None else None
        trimming = asyncio.ensure_future(memory.trim_after_large_bodies(relay.body_budget))
        log.info(
            "relay_started",
            database=settings.database_url.split("://", 1)[0],
            public_url=settings.public_url,
            worker=run_worker,
        )
        try:
            yield
        finally:
            trimming.cancel()
            if background is not None:
                await background.stop()
            await relay.close()
            log.info("relay_stopped")

    callbacks = CallbackEndpoint()
    routes = [
        Route("/callbacks/{provider}/{token}", callbacks, methods=["POST"]),
        # Account-level webhooks (Rivya): no token; the provider's signature is the check.
        Route("/callbacks/{provider}", callbacks, methods=["POST"]),
        Route("/archive/{token}", archived_output, methods=["GET", "HEAD"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_endpoint, methods=["GET"]),
        admin.mount(),
        *ops.routes,
    ]
    middleware = [Middleware(AccessLogMiddleware)]
    if settings.admin_listen is not None:  # the admin surface is on its own listener
        middleware.append(Middleware(PublicSurface, admin_port=settings.admin_listen.port))
    app = RelayApp(
        callbacks=callbacks,
        routes=routes,
        middleware=middleware,
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


def route_table(app: Starlette) -> list[tuple[str, str]]:
    """``(method, path)`` of every route ``app`` serves, the admin mount's included."""

    def walk(routes: list[BaseRoute], prefix: str) -> list[tuple[str, str]]:
        found = []
        for route in routes:
            if isinstance(route, Mount):
                found += walk(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                found += [(method, prefix + route.path) for method in sorted(route.methods or ())]
            else:
                raise TypeError(f"{route!r}: not a route the relay knows how to list")
        return found

    return walk(app.routes, "")
