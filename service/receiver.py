"""``POST /callbacks/{provider}/{token}``: where providers deliver their callbacks.

``POST /callbacks/{provider}`` (no token) is for providers whose webhooks are registered once per
account and signed (Rivya, with ``RELAY_RIVYA_WEBHOOK_SECRET``); anyone else gets 401.
What becomes of a callback (accepted, duplicate, superseded, or held for confirmation) is
decided by ``Relay.receive``; this endpoint checks, parses, hands over and answers.

Order of checks, cheapest first and nothing parsed before it is authenticated: provider,
source address, URL token, body size, the provider's signature over the raw body, JSON,
payload shape. The answer is 2xx only once the update is committed to the store.

This is the relay's hot path, so the endpoint is a plain ASGI app that answers every outcome
itself, errors included: ``service.app`` runs it behind the access log alone, without
Starlette's generic request, response and exception layers (see ``RelayApp``).
"""

from __future__ import annotations

import ipaddress
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
from service.events import Normalized
from service.http import error_response, forwarded_client, receive_body
from service.intake import Duplicate, Held, Received, Superseded
from service.providers import PROVIDERS, Provider, get_provider
from service.relay import Relay
from service.tokens import InvalidToken
from service.tracing import TraceContext

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
    return relay.tokens.verify(provider.name, token, relay.clock())


async def _receive(
    relay: Relay,
    provider_name: str,
    token: str | None,
    scope: Scope,
    receive: Receive,
    trace: TraceContext,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check, read and hand over one callback: (the 2xx answer, its log fields).

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
            return await _hand_over(relay, provider_name, provider, headers, body, url_id, trace)
        async with budget.large_turn:  # one at a time: see service.body_budget
            return await _hand_over(relay, provider_name, provider, headers, body, url_id, trace)
    finally:
        budget.release(len(body))


async def _hand_over(
    relay: Relay,
    provider_name: str,
    provider: Provider,
    headers: Headers,
    body: bytes,
    url_id: str | None,
    trace: TraceContext,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and parse a received callback, hand it to ``Relay.receive``: (the 2xx answer,
    its log fields). ``trace``: the callback's span (``service.tracing``)."""
    provider.verify(headers, body, relay.settings, now=relay.clock())
    payload = parse_callback(body)
    normalized = provider.normalize(payload)
    received = await relay.receive(
        provider_name, normalized, payload=payload, body=body, url_id=url_id, trace=trace
    )
    return _answer(received), _log_fields(received, normalized)


def _answer(received: Received) -> dict[str, Any]:
    """The 2xx body: ``event_id`` (None while held), ``duplicate``, and ``superseded`` or
    ``held`` (with ``watch_id``) when they apply."""
    if isinstance(received, Held):
        return {
            "received": True,
            "event_id": None,
            "duplicate": False,
            "held": True,
            "watch_id": received.watch_id,
        }
    answer: dict[str, Any] = {
        "received": True,
        "event_id": received.event_id,
        "duplicate": isinstance(received, Duplicate),
    }
    if isinstance(received, Superseded) or (
        isinstance(received, Duplicate) and received.superseded
    ):
        answer["superseded"] = True
    return answer


def _log_fields(received: Received, normalized: Normalized) -> dict[str, Any]:
    """What the callback's access log line says about it."""
    if isinstance(received, Held):
        return {
            "task_id": normalized.task_id,
            "outcome": received.outcome,
            "generation_status": normalized.status,
        }
    return {
        "task_id": normalized.task_id,
        "event_id": received.event_id,
        "outcome": received.outcome,
        "generation_status": normalized.status,
    }


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
        # A name that is no provider's may be a misplaced token (``/callbacks/<token>``): not
        # shown (in the log line and the span).
        shown = provider_name if provider_name in PROVIDERS else "unknown"
        # The callback's span: the trace the provider sent continues here, or one starts.
        span = relay.tracer.callback(shown, scope["headers"])
        failed: RelayError | None
        try:
            token = params.get("token")
            answer, fields = await _receive(
                relay, provider_name, token, scope, receive, span.context
            )
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
        # The access log line of this request carries these (one line per callback).
        add_access_fields(scope, provider=shown, trace_id=span.context.trace_id, **fields)
        span.set(**fields)
        if failed is not None:
            await error_response(failed)(scope, receive, send)
            span.end(failed.status_code, failed.code)
            return
        # The 2xx, the common case, is sent as it is, without a Response object.
        body = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        span.end(200)
