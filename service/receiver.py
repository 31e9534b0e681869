"""``POST /callbacks/{provider}/{token}``: where providers deliver their callbacks.

``POST /callbacks/{provider}`` (no token) is for providers whose webhooks are registered once per
account and signed (Rivya, with ``RELAY_RIVYA_WEBHOOK_SECRET``); anyone else gets 401.
A terminal callback that must be confirmed (Evolink, see ``service.watches``) is held, not
emitted: it is answered 2xx once the hold is committed.

Order of checks, cheapest first and nothing parsed before it is authenticated: provider,
source address, URL token, body size, the provider's signature over the raw body, JSON,
payload shape. The answer is 2xx only once the update is committed to the store.
"""

from __future__ import annotations

import ipaddress
import time

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from service.errors import Forbidden, InvalidInput, RelayError
from service.http import JSONResponse, client_ip, error_response, read_body
from service.providers import Provider, get_provider
from service.relay import Relay
from service.watches import hold_callback, needs_confirmation

log = structlog.get_logger("service.receiver")


class SourceNotAllowed(Forbidden):
    """Callbacks for this provider are not accepted from this address."""

    code = "source_not_allowed"


def _check_source(relay: Relay, provider: str, request: Request) -> None:
    allowed = relay.settings.allowed_ips.get(provider)
    if not allowed:
        return
    address = client_ip(request, relay.settings.trusted_proxies)
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        raise SourceNotAllowed() from None
    if not any(ip in network for network in allowed):
        raise SourceNotAllowed()


def _url_id(relay: Relay, provider: Provider, request: Request) -> str | None:
    """The URL token's ``url_id``; None at ``/callbacks/<provider>`` (no token) for a provider
    whose signature then authenticates the callback (checked next, on the raw body)."""
    token = request.path_params.get("token")
    if token is None and provider.accepts_tokenless(relay.settings):
        return None
    return relay.tokens.verify(provider.name, token or "", time.time())


async def receive_callback(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    provider_name = request.path_params["provider"]
    try:
        provider = get_provider(provider_name)
        _check_source(relay, provider_name, request)
        url_id = _url_id(relay, provider, request)
        body = await read_body(request, relay.settings.max_body_bytes)
        provider.verify(request.headers, body, relay.settings)
        try:
            # orjson is strict: no NaN or Infinity, valid UTF-8 only, nesting depth bounded.
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput(
                "The callback body is not valid JSON.", code="invalid_json"
            ) from None
        normalized = provider.normalize(payload)
        if normalized.unknown_status:
            log.warning(
                "unknown_status",
                provider=provider_name,
                task_id=normalized.task_id,
                raw_status=normalized.raw_status,
            )
        # A terminal callback that must be confirmed is held (committed) instead of emitted.
        held = (
            await hold_callback(relay, provider_name, normalized, body, url_id)
            if needs_confirmation(relay.settings, provider_name, normalized)
            else None
        )
        if held is None:
            result = await relay.accept(
                provider_name,
                normalized,
                raw=payload,
                raw_body=body,
                url_id=url_id,
                raw_is_body=True,
            )
    except RelayError as exc:
        # The access log line of this request carries these (one line per callback).
        structlog.contextvars.bind_contextvars(provider=provider_name, error_code=exc.code)
        return error_response(exc)
    if held is not None:
        structlog.contextvars.bind_contextvars(
            provider=provider_name,
            task_id=normalized.task_id,
            outcome="held",
            generation_status=normalized.status,
        )
        return JSONResponse(
            {
                "received": True,
                "event_id": None,
                "duplicate": False,
                "held": True,
                "watch_id": held.id,
            }
        )
    structlog.contextvars.bind_contextvars(
        provider=provider_name,
        task_id=normalized.task_id,
        event_id=result.event_id,
        outcome=result.outcome,
        generation_status=normalized.status,
    )
    answer = {
        "received": True,
        "event_id": result.event_id,
        "duplicate": result.outcome == "duplicate",
    }
    if result.outcome == "superseded":
        answer["superseded"] = True
    return JSONResponse(answer)
