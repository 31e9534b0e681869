"""Signing in to the ops console with the admin token, and signing out.

The sign-in form is the one form anyone may post: it is read with a small limit, needs the
CSRF token of the cookie the form came with, and failed attempts from one address are slowed
down (``throttle``). A success starts a new session (and CSRF token), recorded in the store.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service.errors import RelayError
from service.http import client_ip
from service.ops import session as sessions
from service.ops.guards import SIGN_IN_FORM_BYTES, form_value, read_form
from service.ops.rendering import redirect, relay_of, render, safe_back, unavailable

log = structlog.get_logger("service.ops")

#: Failed sign-ins by address, in this process (tests put in one with a fake clock).
throttle = sessions.SignInThrottle()


async def sign_in_page(request: Request) -> Response:
    relay = relay_of(request)
    try:
        session = await sessions.verify(request, relay.settings, relay.store, relay.clock)
    except RelayError as exc:
        return unavailable(request, exc)
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
    if not sessions.token_ok(settings, form_value(form, "token")):
        throttle.failed(address)
        log.warning("ops_sign_in_failed", client=address)
        return again("That is not the admin token.", 401)
    throttle.succeeded(address)
    try:
        # A new session (and CSRF token) at sign-in: nothing from before carries over.
        fresh = await sessions.start(relay.store, relay.clock)
    except RelayError as exc:  # the store cannot record it: no session without its record
        return again(exc.message, exc.status_code)
    log.info("ops_signed_in", client=address)
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
