"""HTTP helpers shared by the callback and admin routes: JSON answers, errors, bodies, auth."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from service.body_budget import BodyBudget
from service.errors import (
    InvalidInput,
    PayloadTooLarge,
    RelayError,
    RequestTimeout,
    ServerBusy,
    Unauthorized,
)
from service.http_protocol import BODY_TIMED_OUT
from service.settings import IPNetwork


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def error_response(exc: RelayError) -> JSONResponse:
    headers = {}
    if exc.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    if exc.closes_connection:
        headers["connection"] = "close"
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    return JSONResponse(exc.as_json(), status_code=exc.status_code, headers=headers or None)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def relay_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)  # noqa: S101 - narrows the type: registered for RelayError only
    return error_response(exc)


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - narrows the type: registered for HTTPException only
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (without reading on) anything over ``limit`` bytes."""
    budget = request.app.state.relay.body_budget
    content_length = request.headers.get("content-length")
    body = await receive_body(request.scope, request.receive, content_length, limit, budget)
    budget.release(len(body))
    return body


async def receive_body(
    scope: Scope, receive: Receive, content_length: str | None, limit: int, budget: BodyBudget
) -> bytes:
    """The whole body from ASGI ``receive``, refusing anything over ``limit`` bytes: at once
    when ``content_length`` (the header's value) says so, else as soon as it is read.

    The body holds its size of ``budget`` from its head on (the declared length at once, a
    chunked body as it grows); 503 ``server_busy`` when that does not fit. A body returned
    still holds it: the caller gives it back (``budget.release(len(body))``) once done with it.
    """
    held = 0
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidInput("Content-Length is not a number.") from None
        if declared > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        if not budget.grow(0, declared):
            raise ServerBusy()
        held = declared
    try:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if BODY_TIMED_OUT in scope:
                    # Too slow: service.http_protocol answered it 408 and closed the
                    # connection; the access line and metrics say the same.
                    raise RequestTimeout(scope[BODY_TIMED_OUT])
                # The caller left mid-body (a Content-Length longer than what it sent, a cut
                # chunked body): nobody is there to answer, and nothing failed here, so this is
                # a 4xx in the log and metrics, not a 500 with a traceback any client could
                # trigger.
                raise InvalidInput(
                    "The client closed the connection before sending the whole body.",
                    code="incomplete_body",
                )
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
            if size > held:  # a chunked body (httptools holds others to their length)
                if not budget.grow(held, size):
                    raise ServerBusy()
                held = size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except BaseException:
        budget.release(held)
        raise


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: Request, limit: int = 65_536) -> dict[str, Any]:
    """An admin request's JSON object body (empty body = ``{}``).

    Refused with 400 ``invalid_json``: anything that is not strict JSON (NaN and Infinity
    included), and JSON the relay could not store as given (nested deeper than 254 levels,
    integers beyond 64 bits, lone surrogates), which would otherwise fail later as a 500.
    """
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
        # Whatever is stored is encoded with orjson, which is stricter than the json module.
        orjson.dumps(value)
    except (ValueError, UnicodeDecodeError, RecursionError, orjson.JSONEncodeError):
        raise InvalidInput("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidInput("The body must be a JSON object.", code="invalid_json")
    return value


def client_ip(request: Request, trusted_proxies: Sequence[IPNetwork]) -> str | None:
    """The caller's address; ``X-Forwarded-For`` counts only when the peer is a trusted proxy."""
    peer = request.client.host if request.client else None
    return forwarded_client(peer, request.headers.get("x-forwarded-for"), trusted_proxies)


def forwarded_client(
    peer: str | None, forwarded: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str | None:
    """The client behind ``peer``: ``forwarded`` (an ``X-Forwarded-For`` value) is read, from
    the nearest hop back, only while the hops are trusted proxies."""
    if peer is None or not trusted_proxies:
        return peer
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if forwarded is None or not any(address in net for net in trusted_proxies):
        return peer
    # Walk from the nearest hop back; the first address that is not a trusted proxy is the client.
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        try:
            hop_address = ipaddress.ip_address(hop)
        except ValueError:
            return hop
        if not any(hop_address in net for net in trusted_proxies):
            return hop
    return peer


def require_admin(request: Request) -> None:
    """Refuse (401) a request without the admin bearer token; the comparison is constant-time."""
    expected = request.app.state.relay.settings.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if (
        expected is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(presented.encode(), str(expected).encode())
    ):
        raise Unauthorized("A valid admin bearer token is required.", code="unauthorized")
    refuse_nul(request)


def refuse_nul(request: Request) -> None:
    """Refuse (400) a NUL character in the path or query parameters: no id or filter holds
    one, and PostgreSQL cannot even compare text with it."""
    values = (*request.path_params.values(), *request.query_params.values())
    if any("\x00" in str(value) for value in values):
        raise InvalidInput("Parameters must not contain NUL characters.", code="invalid_query")


def parse_time(value: str | None, name: str) -> float | None:
    """RFC 3339 (``2026-01-01T00:00:00Z``) or Unix seconds, as Unix seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{name} must be an RFC 3339 time or Unix seconds.", code="invalid_query"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone (e.g. Z).", code="invalid_query")
    return parsed.timestamp()


def parse_limit(value: str | None, default: int = 50, maximum: int = 500) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise InvalidInput("limit must be an integer.", code="invalid_query") from None
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be from 1 to {maximum}.", code="invalid_query")
    return limit


def page_response(items_json: Sequence[str], next_cursor: str | None) -> JSONResponse:
    """``{"items": [...], "next_cursor": ...}`` spliced from stored JSON without re-parsing it."""
    cursor = json.dumps(next_cursor)
    return JSONResponse(f'{{"items":[{",".join(items_json)}],"next_cursor":{cursor}}}'.encode())
