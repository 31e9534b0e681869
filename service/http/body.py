"""Reading request bodies: bounded in size, held against the body budget, strict JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope

from service.body_budget import BodyBudget
from service.errors import InvalidInput, PayloadTooLarge, RequestTimeout, ServerBusy
from service.http_protocol import BODY_TIMED_OUT


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


#: The largest admin request body.
JSON_LIMIT = 65_536


async def read_json_object(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """An admin request's JSON object body (empty body = ``{}``), see ``parse_json_object``."""
    return parse_json_object(await read_body(request, limit))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from an admin request's body (empty body = ``{}``).

    Refused with 400 ``invalid_json``: anything that is not strict JSON (NaN and Infinity
    included), and JSON the relay could not store as given (nested deeper than 254 levels,
    integers beyond 64 bits, lone surrogates), which would otherwise fail later as a 500.
    """
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
