"""Who may see a console page or send a console form.

``page`` wraps a GET handler: a signed-in session (``service.ops.session``) or a redirect to
sign in. ``action`` wraps a POST handler: a signed-in session, decided from the cookie before
the body is read, and the form's CSRF token. Each names the least scope its session must have
been signed in with (``operate``, the console's own; ``admin`` for subscribers); a session of
a smaller scope is shown a 403 page saying which is needed. Both turn a ``RelayError`` into a
page (or a redirect back with the error as the notice) rather than a stack trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlencode

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import api_keys
from service.errors import RelayError
from service.http import read_body
from service.ops import session as sessions
from service.ops.rendering import message, redirect, redirect_back, relay_of, unavailable

log = structlog.get_logger("service.ops")

#: The largest sign-in form read (CSRF token, admin token, a return path): anyone can post
#: it, so it is read with a small limit; 413 past it.
SIGN_IN_FORM_BYTES = 8 * 1024
#: The largest form of a signed-in operator (a page of delivery ids to replay, at most).
FORM_BYTES = 64 * 1024

Form = dict[str, list[str]]
PageHandler = Callable[[Request, sessions.Session], Awaitable[Response]]
FormHandler = Callable[[Request, sessions.Session, Form], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


async def read_form(request: Request, limit: int = FORM_BYTES) -> Form:
    """An ``application/x-www-form-urlencoded`` body (the console's forms send nothing else)."""
    body = await read_body(request, limit)
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        return {}


def form_value(form: Form, key: str, default: str = "") -> str:
    """The first value of ``key`` in the form, or ``default``."""
    values = form.get(key)
    return values[0] if values else default


async def verified_session(request: Request) -> sessions.Session | None:
    """The console session the request's cookie carries, checked against the store with the
    relay's settings and clock (``session.verify``); raises ``RelayError`` if the store cannot
    say."""
    relay = relay_of(request)
    return await sessions.verify(request, relay.settings, relay.store, relay.clock)


def _refused(request: Request, session: sessions.Session, needed: api_keys.Scope) -> Response:
    """The page for a signed-in session whose scope is below ``needed``."""
    return message(
        request,
        "Not allowed",
        f"This needs a key of scope {needed}; you signed in with one of scope {session.scope}.",
        403,
        session,
    )


def page(handler: PageHandler, scope: api_keys.Scope = "operate") -> Endpoint:
    """A GET page for operators signed in with ``scope`` or above; others are sent to sign in
    (or, signed in with less, refused)."""

    async def endpoint(request: Request) -> Response:
        try:
            session = await verified_session(request)
        except RelayError as exc:  # the store cannot say whether the session is live
            return unavailable(request, exc)
        if session is None or not session.signed_in:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return redirect("/ops/sign-in?" + urlencode({"next": target}))
        if not api_keys.allows(session.scope or "", scope):
            return _refused(request, session, scope)
        try:
            return await handler(request, session)
        except RelayError as exc:  # the store is down, a filter is wrong...: say so, in a page
            return unavailable(request, exc, session)

    return endpoint


def action(handler: FormHandler, scope: api_keys.Scope = "operate") -> Endpoint:
    """A POST from a console form: a session signed in with ``scope`` or above, and its CSRF
    token, are required."""

    async def endpoint(request: Request) -> Response:
        try:
            session = await verified_session(request)
        except RelayError as exc:
            return unavailable(request, exc)
        if session is None or not session.signed_in:
            # Refused from the cookie alone: the body of a stranger's post is never read (and
            # the connection is closed rather than left to carry it).
            refused = message(request, "Signed out", "Your session ended: sign in again.", 403)
            refused.headers["connection"] = "close"
            return refused
        if not api_keys.allows(session.scope or "", scope):
            refused = _refused(request, session, scope)
            refused.headers["connection"] = "close"  # the body is not read either
            return refused
        form = await read_form(request)
        if not sessions.csrf_ok(request, session, form_value(form, "csrf", "")):
            log.warning("ops_csrf_refused", path=request.url.path)
            return message(
                request,
                "Refused",
                "This form is stale or did not come from the console. "
                "Go back, reload the page and try again.",
                403,
                session,
            )
        try:
            return await handler(request, session, form)
        except RelayError as exc:
            return redirect_back(request, form_value(form, "back"), exc.message, "error")

    return endpoint
