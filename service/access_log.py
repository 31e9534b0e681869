"""An access log that never shows callback tokens (uvicorn's own is switched off)."""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import ids, metrics
from service.logs import mask_callback_path

log = structlog.get_logger("service.access")


class AccessLogMiddleware:
    """One ``request`` line per HTTP request, with a ``request_id`` bound while it runs.

    Callbacks are also counted here (``service.metrics``), from the same facts as their line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = ids.new_id("req")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                path = scope["path"]
                if path.startswith("/callbacks/"):
                    _count_callback(path, status)
                log.info(
                    "request",
                    method=scope["method"],
                    path=mask_callback_path(path),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )


def _count_callback(path: str, status: int) -> None:
    """Count a callback in the metrics from what the receiver bound for this access line, so
    the metrics and the log always agree."""
    context = structlog.contextvars.get_contextvars()
    provider = context.get("provider") or path.split("/", 3)[2]
    metrics.count_callback(str(provider), metrics.callback_outcome(status, context))
