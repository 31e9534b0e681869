"""The admin bearer token: one check, compared in constant time, for the admin API's mount
(``AdminAuth``) and ``/metrics``."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import InvalidInput, Unauthorized


def require_admin(request: Request) -> None:
    """Refuse (401) a request without the admin bearer token; the comparison is constant-time.
    A NUL character in the path or the query is refused next (400)."""
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
    one, and PostgreSQL cannot even compare text with it. The path is the decoded one, so this
    holds before routing has split it into parameters."""
    if "\x00" in request.scope["path"] or any(
        "\x00" in value for value in request.query_params.values()
    ):
        raise InvalidInput("Parameters must not contain NUL characters.", code="invalid_query")


class AdminAuth:
    """The admin API's one authentication step, in front of everything under its mount."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            require_admin(Request(scope))
        await self.app(scope, receive, send)
