"""The HTTP layer's pieces, one module each: responses, error handlers, body reading, query
parsing, the client's address and the admin authentication step.

Import from the module that holds a piece; the names below are re-exported so that callers
written before the split keep working.
"""

from __future__ import annotations

from service.http.auth import require_scope
from service.http.body import read_body, read_json_object, receive_body
from service.http.client_ip import client_ip, forwarded_client
from service.http.error_handlers import http_error_handler, internal_error, relay_error_handler
from service.http.query import parse_time, read_query
from service.http.responses import JSONResponse, error_response

__all__ = [
    "JSONResponse",
    "client_ip",
    "error_response",
    "forwarded_client",
    "http_error_handler",
    "internal_error",
    "parse_time",
    "read_body",
    "read_json_object",
    "read_query",
    "receive_body",
    "relay_error_handler",
    "require_scope",
]
