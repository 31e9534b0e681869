"""Admin API operations, each declared once: its route, its shapes and its documentation.

An operation is an ``async`` handler taking a ``Call``; the ``@operation`` decorator records
its method, path, summary and answers. The shapes of its query and body are the type
arguments of its ``Call`` annotation (``Call[EventQuery, NoBody]``), so the one annotation
types the handler for mypy, reads and checks the request at run time (``read_query``,
``decode``) and documents both in ``service.openapi``. Nothing is read from the request
before the admin mount's authentication step (``service.http.auth.AdminAuth``) has passed
and the credential's scope has been found to include the one the operation declares
(``scope``, ``service.api_keys``): a key of a smaller scope is refused 403 before its query
or body is looked at. An operation declared ``idempotent=True`` honours an
``Idempotency-Key`` header (``service.idempotency``): with one, it runs once per key and its
answer is kept for retries.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import idempotency
from service.api_keys import Scope, require
from service.http.auth import credential_of
from service.http.body import JSON_LIMIT, parse_json_object, read_body
from service.http.query import read_query
from service.relay import Relay
from service.shapes.base import Query, Shape, decode


class NoQuery(Query):
    """An operation without query parameters: any parameter is refused."""


class NoBody(Shape):
    """An operation without a body: none is read."""


Q = TypeVar("Q", bound=Query)
B = TypeVar("B", bound=Shape)


class Call(Generic[Q, B]):
    """One admin request, read and checked: the relay, the query, the body."""

    __slots__ = ("body", "query", "relay", "request")

    def __init__(self, request: Request, relay: Relay, query: Q, body: B) -> None:
        self.request = request
        self.relay = relay
        self.query = query
        self.body = body

    def path(self, name: str) -> str:
        """A path parameter (``{event_id}``...)."""
        return str(self.request.path_params[name])


Handler = Callable[[Call[Any, Any]], Awaitable[Response]]

#: The documented error of an operation on one resource named in its path, when there is none.
NO_SUCH: Mapping[int, str] = {404: "`not_found`."}
#: What a successful answer carries: a shape, a raw JSON Schema, or nothing (204).
Content = type[msgspec.Struct] | dict[str, Any] | None


@dataclass(frozen=True)
class Operation:
    """One method on one path of the admin API (``path`` under ``/v1``)."""

    method: str
    path: str
    handler: Handler
    tag: str
    summary: str
    #: The successful answer: (status, content, description).
    success: tuple[int, Content, str]
    #: The least scope of API key that may call it (``service.api_keys``).
    scope: Scope
    #: Refusals beyond those every operation shares: status -> the codes, for people.
    errors: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    body_required: bool = True
    #: Honours an ``Idempotency-Key`` header (``service.idempotency``).
    idempotent: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def shapes(self) -> tuple[type[Query], type[Shape]]:
        """The query and body shapes: the type arguments of the handler's ``Call``."""
        hints = typing.get_type_hints(self.handler)
        call = next(value for name, value in hints.items() if name != "return")
        query, body = typing.get_args(call)
        return query, body

    def route(self) -> Route:
        query_shape, body_shape = self.shapes
        handler, scope = self.handler, self.scope
        idempotent = self.idempotent

        async def answer(request: Request, relay: Relay, query: Query, raw: bytes) -> Response:
            body = NoBody() if body_shape is NoBody else decode(body_shape, parse_json_object(raw))
            return await handler(Call(request, relay, query, body))

        async def endpoint(request: Request) -> Response:
            require(credential_of(request), scope)
            relay = relay_of(request)
            key = idempotency.key_of(request) if idempotent else None
            if key is None:
                query = read_query(request, query_shape)
                raw = b"" if body_shape is NoBody else await read_body(request, JSON_LIMIT)
                return await answer(request, relay, query, raw)
            # The body is read whole before the key is claimed (what a request reusing the key
            # must match includes its hash); what follows runs once per key.
            raw = await read_body(request, JSON_LIMIT)

            async def run() -> Response:
                return await answer(request, relay, read_query(request, query_shape), raw)

            return await idempotency.once(request, relay.store, relay.clock, key, raw, run)

        endpoint.__name__ = self.operation_id
        return Route(self.path, endpoint, methods=[self.method], name=self.operation_id)


def relay_of(request: Request) -> Relay:
    """The relay the app was started with (``create_app``'s lifespan)."""
    relay = request.app.state.relay
    assert isinstance(relay, Relay)  # noqa: S101 - narrows the type: create_app sets it
    return relay


def operation(
    method: str,
    path: str,
    *,
    tag: str,
    scope: Scope,
    summary: str,
    success: tuple[int, Content, str],
    errors: Mapping[int, str] | None = None,
    description: str | None = None,
    body_required: bool = True,
    idempotent: bool = False,
) -> Callable[[Handler], Operation]:
    """Declare the decorated handler as an admin operation (see the module's docstring)."""

    def declare(handler: Handler) -> Operation:
        return Operation(
            method=method,
            path=path,
            handler=handler,
            tag=tag,
            summary=summary,
            success=success,
            scope=scope,
            errors=errors or {},
            description=description,
            body_required=body_required,
            idempotent=idempotent,
        )

    return declare
