"""``POST /callbacks/{provider}/{token}``: where providers deliver their callbacks.

``POST /callbacks/{provider}`` (no token) is for providers whose webhooks are registered once per
account and signed (Rivya, with ``RELAY_RIVYA_WEBHOOK_SECRET``); anyone else gets 401.
A terminal callback that must be confirmed (Evolink, see ``service.holds``) is held, not
emitted: it is answered 2xx once the hold is committed.

Order of checks, cheapest first and nothing parsed before it is authenticated: provider,
source address, URL token, body size, the provider's signature over the raw body, JSON,
payload shape. The answer is 2xx only once the update is committed to the store.

This is the relay's hot path, so the endpoint is a plain ASGI app that answers every outcome
itself, errors included: ``service.app`` runs it behind the access log alone, without
Starlette's generic request, response and exception layers (see ``RelayApp``).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from service.access_log import add_access_fields
from service.body_budget import SMALL_BODY
from service.callback_json import parse_callback
from service.errors import Forbidden, InternalError, RelayError
from service.holds import confirms, hold_callback, needs_confirmation
from service.http import error_response, forwarded_client, receive_body
from service.providers import PROVIDERS, Provider, get_provider
from service.relay import Relay
from service.tokens import InvalidToken

log = structlog.get_logger("service.receiver")


class SourceNotAllowed(Forbidden):
    """Callbacks for this provider are not accepted from this address."""

    code = "source_not_allowed"


def _check_source(relay: Relay, provider: str, scope: Scope, headers: Headers) -> None:
    allowed = relay.settings.allowed_ips.get(provider)
    if not allowed:
        return
    peer = scope["client"][0] if scope.get("client") else None
    address = forwarded_client(peer, headers.get("x-forwarded-for"), relay.settings.trusted_proxies)
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        raise SourceNotAllowed() from None
    if not any(ip in network for network in allowed):
        raise SourceNotAllowed()


def _url_id(relay: Relay, provider: Provider, token: str | None) -> str | None:
    """The URL token's ``url_id``; None at ``/callbacks/<provider>`` (no token) for a provider
    whose signature then authenticates the callback (checked next, on the raw body)."""
    if token is None:
        if provider.accepts_tokenless(relay.settings):
            return None
        raise InvalidToken(provider.tokenless_refusal(relay.settings))
    return relay.tokens.verify(provider.name, token, time.time())


async def _receive(
    relay: Relay, provider_name: str, token: str | None, scope: Scope, receive: Receive
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check, parse, normalize and commit one callback: (the 2xx answer, its log fields).

    Raises ``RelayError`` for every refusal, before anything is stored.
    """
    provider = get_provider(provider_name)
    headers = Headers(scope=scope)
    _check_source(relay, provider_name, scope, headers)
    url_id = _url_id(relay, provider, token)
    content_length = headers.get("content-length")
    budget = relay.body_budget
    limit = relay.settings.max_body_bytes
    body = await receive_body(scope, receive, content_length, limit, budget)
    try:
        if len(body) <= SMALL_BODY:
            return await _accept(relay, provider_name, provider, headers, body, url_id)
        async with budget.large_turn:  # one at a time: see service.body_budget
            return await _accept(relay, provider_name, provider, headers, body, url_id)
    finally:
        budget.release(len(body))


async def _accept(
    relay: Relay,
    provider_name: str,
    provider: Provider,
    headers: Headers,
    body: bytes,
    url_id: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify, parse, normalize and commit a received callback: (the 2xx answer, its log
    fields)."""
    provider.verify(headers, body, relay.settings)
    payload = parse_callback(body)
    normalized = provider.normalize(payload)
    if normalized.unknown_status:
        log.warning(
            "unknown_status",
            provider=provider_name,
            task_id=normalized.task_id,
            raw_status=normalized.raw_status,
        )
    if normalized.outputs and not normalized.terminal and confirms(relay.settings, provider_name):
        # Unconfirmed progress is forwarded at once, but what subscribers would fetch is not:
        # only the confirmed terminal event carries outputs (anyone holding a URL could forge
        # a "processing" with links of their choosing).
        normalized.outputs = ()
    fields: dict[str, Any] = {"task_id": normalized.task_id}
    if url_id is not None:
        await relay.bind_url(url_id, normalized.task_id)
    # A terminal callback that must be confirmed is held (committed) instead of emitted,
    # unless the task already has its terminal event (then it is ingested as usual).
    held = (
        await hold_callback(relay, provider_name, normalized, body, url_id)
        if needs_confirmation(relay.settings, provider_name, normalized)
        else None
    )
    if held is not None:
        fields.update(outcome="held", generation_status=normalized.status)
        answer = {
            "received": True,
            "event_id": None,
            "duplicate": False,
            "held": True,
            "watch_id": held.id,
        }
        return answer, fields
    result = await relay.accept(
        provider_name, normalized, raw=payload, raw_body=body, url_id=url_id, raw_is_body=True
    )
    fields.update(
        event_id=result.event_id, outcome=result.outcome, generation_status=normalized.status
    )
    answer = {
        "received": True,
        "event_id": result.event_id,
        "duplicate": result.outcome == "duplicate",
    }
    if result.outcome == "superseded" or (
        # A retry of an update that was stored as superseded is still one (a rare read).
        result.outcome == "duplicate" and await relay.is_superseded(result.event_id)
    ):
        answer["superseded"] = True
    return answer, fields


class CallbackEndpoint:
    """The ASGI endpoint of both callback routes (``scope["path_params"]``: provider, token).

    A class rather than a function so that Starlette's ``Route`` takes it as an ASGI app, not
    as a request handler to wrap.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one callback request, every outcome included (errors too)."""
        relay: Relay = scope["app"].state.relay
        params: Mapping[str, str] = scope["path_params"]
        provider_name = params["provider"]
        try:
            token = params.get("token")
            answer, fields = await _receive(relay, provider_name, token, scope, receive)
        except RelayError as exc:
            failed, fields = exc, {"error_code": exc.code}
        except Exception:
            # Nothing was accepted (the store answers only after its commit), so the provider may
            # retry; the traceback goes to the log, never to the caller.
            log.exception("unhandled_error")
            failed = InternalError()
            fields = {"error_code": failed.code}
        else:
            failed = None
        # The access log line of this request carries these (one line per callback). A name
        # that is no provider's may be a misplaced token (``/callbacks/<token>``): not shown.
        shown = provider_name if provider_name in PROVIDERS else "unknown"
        add_access_fields(scope, provider=shown, **fields)
        if failed is not None:
            await error_response(failed)(scope, receive, send)
            return
        # The 2xx, the common case, is sent as it is, without a Response object.
        body = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
