"""Starlette's exception handlers: every failure answers the relay's JSON error shape."""

from __future__ import annotations

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import InternalError, RelayError
from service.http.responses import JSONResponse, error_response

log = structlog.get_logger("service.app")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def relay_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)  # noqa: S101 - narrows the type: registered for RelayError only
    return error_response(exc)


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (the routing table's), as the relay's JSON error."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - narrows the type: registered for HTTPException only
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def internal_error(_request: Request, exc: Exception) -> Response:
    """Anything unexpected: logged with its traceback, answered 500 without details."""
    log.exception("unhandled_error", exc_info=exc)
    failure = InternalError()
    return JSONResponse(failure.as_json(), status_code=failure.status_code)
