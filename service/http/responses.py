"""JSON answers: orjson for plain values, msgspec for declared shapes, one error shape."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from starlette.responses import Response

from service.errors import RelayError


class JSONResponse(Response):
    """``application/json`` from bytes (sent as they are), a declared shape (``service.shapes``)
    or plain JSON values."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        if isinstance(content, msgspec.Struct):
            return msgspec.json.encode(content)
        return orjson.dumps(content)


def error_response(exc: RelayError) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the headers the error calls for."""
    headers = {}
    if exc.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    if exc.closes_connection:
        headers["connection"] = "close"
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    return JSONResponse(exc.as_json(), status_code=exc.status_code, headers=headers or None)
