"""The admin API's authentication step (``AdminAuth``, in front of its mount) and the check of
``/metrics``: a bearer token that is ``RELAY_ADMIN_TOKEN`` or a live scoped API key
(``service.api_keys``), else 401. What the credential's scope allows is decided per operation
(``service.operations``), from the credential this step leaves in the request's scope."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service import api_keys
from service.api_keys import Credential
from service.errors import InvalidInput, Unauthorized

#: Where ``AdminAuth`` leaves the request's ``Credential`` (in the ASGI scope).
CREDENTIAL = "relay.credential"


async def authenticate(request: Request) -> Credential:
    """The request's credential; refuses (401) a request without a bearer token that is the
    admin token or a live API key. A NUL character in the path or the query is refused next
    (400)."""
    relay = request.app.state.relay
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    credential = (
        await api_keys.authenticate(relay, presented) if scheme.lower() == "bearer" else None
    )
    if credential is None:
        raise Unauthorized(
            "A valid bearer token (the admin token or an API key) is required.",
            code="unauthorized",
        )
    refuse_nul(request)
    return credential


async def require_scope(request: Request, needed: api_keys.Scope) -> Credential:
    """``authenticate``, then refuse (403 ``insufficient_scope``) a scope below ``needed``."""
    credential = await authenticate(request)
    api_keys.require(credential, needed)
    return credential


def credential_of(request: Request) -> Credential:
    """The credential ``AdminAuth`` authenticated this request with."""
    credential = request.scope[CREDENTIAL]
    assert isinstance(credential, Credential)  # noqa: S101 - narrows the type: AdminAuth sets it
    return credential


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
            scope[CREDENTIAL] = await authenticate(Request(scope))
        await self.app(scope, receive, send)
