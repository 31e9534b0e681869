"""An access log that never shows callback tokens (uvicorn's own is switched off)."""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import ids, metrics
from service.logs import mask_callback_path
from service.providers import PROVIDERS

log = structlog.get_logger("service.access")

#: The scope key where an endpoint leaves what its request's line should also say (the
#: callback endpoint: ``provider``, ``task_id``, ``event_id``, ``outcome`` or ``error_code``).
ACCESS_FIELDS = "relay.access_fields"


def add_access_fields(scope: Scope, **fields: Any) -> None:
    """Have this request's access line carry ``fields`` too."""
    scope.setdefault(ACCESS_FIELDS, {}).update(fields)


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
        request_id = ids.new_request_id()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
            path = scope["path"]
            fields = scope.get(ACCESS_FIELDS) or {}
            if path.startswith("/callbacks/"):
                _count_callback(path, status, fields)
            log.info(
                "request",
                method=scope["method"],
                path=_logged_path(scope, path),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                request_id=request_id,
                **fields,
            )


_CALLBACKS = "/callbacks/"
_ARCHIVE = "/archive/"


def _logged_path(scope: Scope, path: str) -> str:
    """The path as the line shows it: a callback URL's token segment is ``***`` whole (the
    route's parameters say where it is: no pattern to run); on any other path, every segment
    after ``/callbacks/`` that is not a provider's name is ``***``, since a token may sit
    anywhere in a misrouted path (``/callbacks/<token>``, ``/callbacks/evolink/x/<token>``).
    An archived output's path (``/archive/<signed key>``) is ``/archive/***``."""
    params = scope.get("path_params")
    if params is not None and "token" in params and path.startswith(_CALLBACKS):
        return f"/callbacks/{params['provider']}/***"
    if path.startswith(_ARCHIVE):  # an archived output's signed key opens it: not logged
        return _ARCHIVE + "***"
    start = path.find(_CALLBACKS)
    if start < 0:
        return mask_callback_path(path)
    head = path[: start + len(_CALLBACKS)]
    segments = path[len(head) :].split("/")
    return head + "/".join(s if not s or s in PROVIDERS else "***" for s in segments)


def _count_callback(path: str, status: int, fields: dict[str, Any]) -> None:
    """Count a callback in the metrics from the facts of its access line, so the metrics and
    the log always agree."""
    provider = fields.get("provider") or path.split("/", 3)[2]
    metrics.count_callback(str(provider), metrics.callback_outcome(status, fields))
