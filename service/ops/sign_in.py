"""Signing in to the ops console with the admin token or an API key, and signing out.

The sign-in form is the one form anyone may post: it is read with a small limit, needs the
CSRF token of the cookie the form came with, and failed attempts from one address are slowed
down (``throttle``). The console is for the people on call: it takes the admin token or a key
of scope ``operate`` or ``admin`` (``service.api_keys.CONSOLE_SCOPES``), and refuses a
``read`` or ``mint`` key saying so. A success starts a new session (and CSRF token) of that
scope, recorded in the store; the pages then show what the scope allows (``guards``).
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import api_keys
from service.errors import RelayError
from service.http import client_ip
from service.ops import session as sessions
from service.ops.guards import SIGN_IN_FORM_BYTES, form_value, read_form, verified_session
from service.ops.rendering import redirect, relay_of, render, safe_back, unavailable

log = structlog.get_logger("service.ops")

#: Failed sign-ins by address, in this process (tests put in one with a fake clock).
throttle = sessions.SignInThrottle()


async def sign_in_page(request: Request) -> Response:
    try:
        session = await verified_session(request)
    except RelayError as exc:
        return unavailable(request, exc)
    relay = relay_of(request)
    next_path = safe_back(request.query_params.get("next"))
    if session is not None and session.signed_in:
        return redirect(next_path)
    session = session or sessions.Session.fresh(signed_in=False, now=relay.clock())
    response = render(request, "sign_in.html", {"next": next_path, "error": None}, session=session)
    sessions.store(response, session, relay.settings, relay.clock)
    return response


async def sign_in(request: Request) -> Response:
    relay = relay_of(request)
    settings = relay.settings
    form = await read_form(request, SIGN_IN_FORM_BYTES)
    session = sessions.load(request, settings, relay.clock)
    next_path = safe_back(form_value(form, "next"))
    address = client_ip(request, settings.trusted_proxies) or "unknown"

    def again(error: str, status: int, headers: dict[str, str] | None = None) -> Response:
        fresh = session or sessions.Session.fresh(signed_in=False, now=relay.clock())
        response = render(
            request,
            "sign_in.html",
            {"next": next_path, "error": error},
            status_code=status,
            session=fresh,
        )
        response.headers.update(headers or {})
        sessions.store(response, fresh, settings, relay.clock)
        return response

    if not sessions.csrf_ok(request, session, form_value(form, "csrf", "")):
        return again("The sign-in form expired; please try again.", 403)
    wait = throttle.wait(address)
    if wait > 0:
        seconds = max(1, round(wait))
        return again(
            f"Too many failed sign-ins: wait {seconds} s before trying again.",
            429,
            {"retry-after": str(seconds)},
        )
    try:
        credential = await api_keys.authenticate(relay, form_value(form, "token").strip())
    except RelayError as exc:  # the store cannot say whether the key is live
        return again(exc.message, exc.status_code)
    if credential is None:
        throttle.failed(address)
        log.warning("ops_sign_in_failed", client=address)
        return again("That is not the admin token, nor a live API key.", 401)
    throttle.succeeded(address)  # a real key, even of a scope the console does not take
    if credential.scope not in api_keys.CONSOLE_SCOPES:
        log.warning("ops_sign_in_refused", client=address, scope=credential.scope)
        return again(
            f"This key's scope is {credential.scope}: the console signs in with a key of "
            "scope operate or admin (or the admin token).",
            403,
        )
    try:
        # A new session (and CSRF token) at sign-in: nothing from before carries over.
        fresh = await sessions.start(
            relay.store, relay.clock, scope=credential.scope, key_id=credential.key_id
        )
    except RelayError as exc:  # the store cannot record it: no session without its record
        return again(exc.message, exc.status_code)
    log.info("ops_signed_in", client=address, scope=credential.scope)
    response = redirect(next_path)
    sessions.store(response, fresh, settings, relay.clock)
    return response


async def sign_out(request: Request, session: sessions.Session, _form: Any) -> Response:
    relay = relay_of(request)
    # The cookie, wherever a copy is, opens nothing now.
    await sessions.end(relay.store, session, relay.clock)
    log.info("ops_signed_out")
    response = redirect("/ops/sign-in")
    sessions.clear(response, relay.settings)
    return response
