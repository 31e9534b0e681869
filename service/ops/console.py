"""The ops console at ``/ops``: server-rendered pages for the on-call person.

Sign in with the admin token; then the overview, failed deliveries (with their attempts, a
Replay button per row and "Replay all shown"), events, and subscribers (enable, disable,
filters, secret rotation). Plain HTML forms, no JavaScript: every change is a POST carrying
the session's CSRF token, answered with a redirect back and a one-time notice (or, for a new
secret, a page shown once and never cached).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import structlog
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from service import overview as overview_module
from service import replays, suspects
from service import subscribers as subscriber_rules
from service import watches as watches_module
from service.errors import RelayError
from service.events import EVENT_TYPES, STATUSES
from service.http import client_ip, parse_time, read_body
from service.metrics import RECENT_CALLBACKS, recent_callbacks
from service.ops import session as sessions
from service.provider_api import polling_configured
from service.providers import PROVIDERS
from service.relay import Relay
from service.store.base import DeliveryFilter, EventFilter
from service.store.budget import ApiBudget
from service.store.watch_model import WatchFilter
from service.targets import TargetPolicy

log = structlog.get_logger("service.ops")

TEMPLATES_DIR = Path(__file__).parent / "templates"
#: Most rows a list page shows; the page says so when there may be more.
PAGE_ROWS = 100
FLASH_COOKIE = "relay_ops_notice"

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)


def _style_hash() -> str:
    """CSP hash of the base template's inline stylesheet (the only style the pages use)."""
    import base64
    import hashlib

    source = (TEMPLATES_DIR / "base.html").read_text()
    match = re.search(r"<style>(.*?)</style>", source, re.DOTALL)
    assert match is not None, "base.html has an inline <style>"  # noqa: S101 - a packaging error, seen at import
    digest = hashlib.sha256(match.group(1).encode()).digest()
    return "sha256-" + base64.b64encode(digest).decode()


SECURITY_HEADERS = {
    "content-security-policy": (
        f"default-src 'none'; style-src '{_style_hash()}'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


# -- formatting helpers (also Jinja filters) ------------------------------------------------


def _parse_rfc3339(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def when(value: str | float | None) -> str:
    """``2026-11-21 17:37:26 UTC (3 min ago)``."""
    if value is None or value == "":
        return "-"
    stamp = value if isinstance(value, float | int) else _parse_rfc3339(value)
    if stamp is None:
        return str(value)
    text = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = time.time() - stamp
    if delta >= 0:
        return f"{text} ({overview_module.human_age(delta)} ago)"
    return f"{text} (in {overview_module.human_age(-delta)})"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


templates.env.filters["when"] = when
templates.env.filters["pretty_json"] = pretty_json
templates.env.filters["age"] = overview_module.human_age


# -- request plumbing -----------------------------------------------------------------------


def _relay(request: Request) -> Relay:
    return request.app.state.relay  # type: ignore[no-any-return]


def _flash_serializer(relay: Relay) -> URLSafeSerializer:
    key = str(relay.settings.secret_keys[0]) if relay.settings.secret_keys else ""
    return URLSafeSerializer(key, salt="ops-notice")


def _take_flash(request: Request, relay: Relay) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        value = _flash_serializer(relay).loads(raw)
    except BadSignature:
        return None
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return {"text": value["text"], "kind": str(value.get("kind", "ok"))}
    return None


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    session: sessions.Session | None = None,
) -> Response:
    relay = _relay(request)
    flash = _take_flash(request, relay)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf": session.csrf if session else "",
            "signed_in": bool(session and session.signed_in),
            "flash": flash,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=sessions.COOKIE_PATH)
    return response


def redirect_back(request: Request, target: str, text: str, kind: str = "ok") -> RedirectResponse:
    """303 to ``target`` (a console path) with a one-time notice."""
    response = RedirectResponse(_safe_back(target), status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        FLASH_COOKIE,
        _flash_serializer(_relay(request)).dumps({"text": text, "kind": kind}),
        max_age=120,
        path=sessions.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_relay(request).settings.public_url.startswith("https://"),
    )
    return response


def _safe_back(target: object, default: str = "/ops") -> str:
    """Only paths inside the console: never an open redirect."""
    if (
        isinstance(target, str)
        and target.startswith("/ops")
        and not target.startswith("//")
        and "\\" not in target
        and "\n" not in target
        and "\r" not in target
    ):
        return target
    return default


#: The largest sign-in form read (CSRF token, admin token, a return path): anyone can post
#: it, so it is read with a small limit; 413 past it.
SIGN_IN_FORM_BYTES = 8 * 1024
#: The largest form of a signed-in operator (a page of delivery ids to replay, at most).
FORM_BYTES = 64 * 1024


async def read_form(request: Request, limit: int = FORM_BYTES) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (the console's forms send nothing else)."""
    body = await read_body(request, limit)
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        return {}


def _first(form: dict[str, list[str]], key: str, default: str = "") -> str:
    values = form.get(key)
    return values[0] if values else default


Handler = Callable[[Request, sessions.Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page for signed-in operators; others are sent to sign in."""

    async def endpoint(request: Request) -> Response:
        relay = _relay(request)
        try:
            session = await sessions.verify(request, relay.settings, relay.store)
        except RelayError as exc:  # the store cannot say whether the session is live
            return _unavailable(request, exc)
        if session is None or not session.signed_in:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                "/ops/sign-in?" + urlencode({"next": target}),
                status_code=303,
                headers=SECURITY_HEADERS,
            )
        try:
            return await handler(request, session)
        except RelayError as exc:  # the store is down, a filter is wrong...: say so, in a page
            return render(
                request,
                "message.html",
                {"title": "Not available", "message": exc.message},
                status_code=exc.status_code,
                session=session,
            )

    return endpoint


def _unavailable(request: Request, exc: RelayError) -> Response:
    return render(
        request,
        "message.html",
        {"title": "Not available", "message": exc.message},
        status_code=exc.status_code,
    )


def action(handler: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A POST from a console form: a signed-in session and its CSRF token are required."""

    async def endpoint(request: Request) -> Response:
        relay = _relay(request)
        try:
            session = await sessions.verify(request, relay.settings, relay.store)
        except RelayError as exc:
            return _unavailable(request, exc)
        if session is None or not session.signed_in:
            # Refused from the cookie alone: the body of a stranger's post is never read (and
            # the connection is closed rather than left to carry it).
            refused = render(
                request,
                "message.html",
                {"title": "Signed out", "message": "Your session ended: sign in again."},
                status_code=403,
            )
            refused.headers["connection"] = "close"
            return refused
        form = await read_form(request)
        if not sessions.csrf_ok(request, session, _first(form, "csrf", "")):
            log.warning("ops_csrf_refused", path=request.url.path)
            return render(
                request,
                "message.html",
                {
                    "title": "Refused",
                    "message": "This form is stale or did not come from the console. "
                    "Go back, reload the page and try again.",
                },
                status_code=403,
                session=session,
            )
        try:
            return await handler(request, session, form)
        except RelayError as exc:
            return redirect_back(request, _first(form, "back"), exc.message, "error")

    return endpoint


def _window(value: str, name: str) -> float | None:
    """``2h`` (ago), ``2026-11-21T17:30`` (UTC, as a datetime-local field sends it), an RFC
    3339 time or Unix seconds."""
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*([smhdw])", value)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return time.time() - int(match.group(1)) * unit
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", value):
        value += "Z"
    return parse_time(value, name)


# -- sign-in --------------------------------------------------------------------------------

throttle = sessions.SignInThrottle()


async def sign_in_page(request: Request) -> Response:
    relay = _relay(request)
    try:
        session = await sessions.verify(request, relay.settings, relay.store)
    except RelayError as exc:
        return _unavailable(request, exc)
    next_path = _safe_back(request.query_params.get("next"))
    if session is not None and session.signed_in:
        return RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
    session = session or sessions.Session.fresh(signed_in=False)
    response = render(request, "sign_in.html", {"next": next_path, "error": None}, session=session)
    sessions.store(response, session, relay.settings)
    return response


async def sign_in(request: Request) -> Response:
    relay = _relay(request)
    settings = relay.settings
    form = await read_form(request, SIGN_IN_FORM_BYTES)
    session = sessions.load(request, settings)
    next_path = _safe_back(_first(form, "next"))
    address = client_ip(request, settings.trusted_proxies) or "unknown"

    def again(error: str, status: int, headers: dict[str, str] | None = None) -> Response:
        fresh = session or sessions.Session.fresh(signed_in=False)
        response = render(
            request,
            "sign_in.html",
            {"next": next_path, "error": error},
            status_code=status,
            session=fresh,
        )
        response.headers.update(headers or {})
        sessions.store(response, fresh, settings)
        return response

    if not sessions.csrf_ok(request, session, _first(form, "csrf", "")):
        return again("The sign-in form expired; please try again.", 403)
    wait = throttle.wait(address)
    if wait > 0:
        seconds = max(1, round(wait))
        return again(
            f"Too many failed sign-ins: wait {seconds} s before trying again.",
            429,
            {"retry-after": str(seconds)},
        )
    if not sessions.token_ok(settings, _first(form, "token")):
        throttle.failed(address)
        log.warning("ops_sign_in_failed", client=address)
        return again("That is not the admin token.", 401)
    throttle.succeeded(address)
    try:
        # A new session (and CSRF token) at sign-in: nothing from before carries over.
        fresh = await sessions.start(relay.store)
    except RelayError as exc:  # the store cannot record it: no session without its record
        return again(exc.message, exc.status_code)
    log.info("ops_signed_in", client=address)
    response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
    sessions.store(response, fresh, settings)
    return response


async def _sign_out(request: Request, session: sessions.Session, _form: Any) -> Response:
    relay = _relay(request)
    await sessions.end(relay.store, session)  # the cookie, wherever a copy is, opens nothing now
    log.info("ops_signed_out")
    response = RedirectResponse("/ops/sign-in", status_code=303, headers=SECURITY_HEADERS)
    sessions.clear(response, relay.settings)
    return response


# -- overview -------------------------------------------------------------------------------


async def _overview(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    settings = relay.settings
    polled = {
        provider: rate
        for provider, rate in settings.api_rates.items()
        if polling_configured(settings, provider)
    }
    summary = await overview_module.build(
        relay.store, recent_callbacks(), budget=ApiBudget(polled, settings.api_rate_window)
    )
    return render(
        request,
        "overview.html",
        {"o": summary, "tally_since": RECENT_CALLBACKS.started_at},
        session=session,
    )


# -- deliveries -----------------------------------------------------------------------------

DELIVERY_STATUSES = ("failed", "pending", "succeeded", "canceled")


async def _deliveries(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    query = request.query_params
    values = {
        "status": query.get("status", "failed"),
        "subscriber": query.get("subscriber", ""),
        "provider": query.get("provider", ""),
        "since": query.get("since", ""),
        "until": query.get("until", ""),
    }
    error = None
    items: list[dict[str, Any]] = []
    if values["status"] not in (*DELIVERY_STATUSES, "any"):
        values["status"] = "failed"
    if values["provider"] and values["provider"] not in PROVIDERS:
        error = f"Unknown provider {values['provider']!r}."
    try:
        since = _window(values["since"], "since")
        until = _window(values["until"], "until")
    except RelayError as exc:
        error, since, until = exc.message, None, None
    if error is None:
        items = await relay.store.delivery_details(
            DeliveryFilter(
                status=None if values["status"] == "any" else values["status"],  # type: ignore[arg-type]
                subscriber_id=values["subscriber"] or None,
                since=since,
                until=until,
            ),
            values["provider"] or None,
            PAGE_ROWS,
        )
    page_subscribers = await relay.store.list_subscribers(None, 500)
    return render(
        request,
        "deliveries.html",
        {
            "items": items,
            "filters": values,
            "error": error,
            "more": len(items) == PAGE_ROWS,
            "page_rows": PAGE_ROWS,
            "statuses": (*DELIVERY_STATUSES, "any"),
            "providers": sorted(PROVIDERS),
            "subscribers": page_subscribers.items,
            "back": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        },
        status_code=400 if error else 200,
        session=session,
    )


async def _delivery(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    delivery = await relay.store.get_delivery(request.path_params["delivery_id"])
    if delivery is None:
        return _not_found(request, session, "No delivery with this id.")
    subscriber = await relay.store.get_subscriber(delivery["subscriber_id"])
    newer = None
    if delivery["status"] == "failed":  # would a replay be held back? (see service.replays)
        line = await relay.store.delivery_details(
            DeliveryFilter(
                event_id=delivery["event_id"],
                subscriber_id=delivery["subscriber_id"],
                status="failed",
            ),
            None,
            PAGE_ROWS,
        )
        newer = next((d["newer_delivery_id"] for d in line if d["id"] == delivery["id"]), None)
    return render(
        request,
        "delivery.html",
        {"d": delivery, "subscriber": subscriber, "newer": newer, "back": request.url.path},
        session=session,
    )


async def _replay_one(
    request: Request, _session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    relay = _relay(request)
    delivery_id = request.path_params["delivery_id"]
    back = _first(form, "back", f"/ops/deliveries/{delivery_id}")
    force = _first(form, "force") == "1"
    delivery, count = await replays.replay_one(relay, delivery_id, force=force)
    if count:
        log.info(
            "ops_replay",
            delivery_id=delivery_id,
            subscriber_id=delivery["subscriber_id"],
            forced=force,
        )
        return redirect_back(request, back, f"Replaying {delivery_id}: a fresh retry cycle.")
    return redirect_back(
        request, back, f"{delivery_id} is {delivery['status']}, not failed: nothing to replay."
    )


async def _replay_shown(
    request: Request, _session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    relay = _relay(request)
    ids = list(dict.fromkeys(i for i in form.get("ids", []) if i))[:PAGE_ROWS]
    back = _first(form, "back", "/ops/deliveries")
    if not ids:
        return redirect_back(request, back, "Nothing shown, nothing replayed.")
    # Never forced: rows held back by a newer delivery are not in the form, and one that
    # became so since the page was shown is skipped here and named in the notice.
    result = await replays.replay_many(relay, DeliveryFilter(), ids, force=False)
    count = result.count
    log.info("ops_replay_shown", shown=len(ids), replayed=count, held=len(result.newer))
    skipped = len(ids) - count - len(result.newer)
    note = f"; {skipped} skipped (no longer failed, or subscriber disabled)" if skipped else ""
    if result.newer:
        note += (
            f"; {len(result.newer)} held back, a later event of their task already delivered:"
            f" {', '.join(result.newer)}"
        )
    return redirect_back(request, back, f"Replayed {count} of {len(ids)} shown{note}.")


# -- events ---------------------------------------------------------------------------------


async def _events(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    query = request.query_params
    wanted = query.get("q", "").strip()
    if wanted.startswith("evt_"):
        return RedirectResponse(f"/ops/events/{wanted}", status_code=303, headers=SECURITY_HEADERS)
    values = {
        "provider": query.get("provider", ""),
        "status": query.get("status", ""),
        "task_id": query.get("task_id", "") or wanted,
    }
    error = None
    events: list[dict[str, Any]] = []
    if values["provider"] and values["provider"] not in PROVIDERS:
        error = f"Unknown provider {values['provider']!r}."
    elif values["status"] and values["status"] not in STATUSES:
        error = f"Unknown status {values['status']!r}."
    else:
        found = await relay.store.list_events(
            EventFilter(
                provider=values["provider"] or None,
                task_id=values["task_id"] or None,
                status=values["status"] or None,
            ),
            None,
            PAGE_ROWS,
        )
        events = [json.loads(item) for item in found.items]
    return render(
        request,
        "events.html",
        {
            "events": events,
            "filters": values,
            "error": error,
            "more": len(events) == PAGE_ROWS,
            "page_rows": PAGE_ROWS,
            "providers": sorted(PROVIDERS),
            "statuses": STATUSES,
        },
        status_code=400 if error else 200,
        session=session,
    )


async def _event(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    event = await relay.store.get_event(request.path_params["event_id"])
    if event is None:
        return _not_found(request, session, "No event with this id.")
    found = await relay.store.list_deliveries(DeliveryFilter(event_id=event["id"]), None, 500)
    data = event.get("data") or {}
    return render(
        request,
        "event.html",
        {
            "e": event,
            "data": data,
            "raw": data.get("raw"),
            "deliveries": found.items,
            "back": request.url.path,
        },
        session=session,
    )


# -- held and suspect callbacks, flagged watches ---------------------------------------------


async def _watches(request: Request, session: sessions.Session) -> Response:
    """What waits for an operator: suspect callbacks (release or dismiss), callbacks still
    awaiting confirmation, and watches whose provider answers a word the relay does not know."""
    relay = _relay(request)

    async def listed(**wanted: bool) -> list[dict[str, Any]]:
        found = await relay.store.list_watches(WatchFilter(**wanted), None, PAGE_ROWS)
        return [watches_module.watch_json(w, whole=False) for w in found.items]

    return render(
        request,
        "watches.html",
        {
            "suspect": await listed(suspect=True),
            "held": await listed(held=True),
            "flagged": await listed(flagged=True),
            "page_rows": PAGE_ROWS,
            "back": request.url.path,
        },
        session=session,
    )


async def _decide(
    request: Request, _session: sessions.Session, form: dict[str, list[str]], decision: str
) -> Response:
    watch_id = request.path_params["watch_id"]
    decided = await suspects.decide(_relay(request), watch_id, decision, "console")
    back = _first(form, "back", "/ops/watches")
    if decided.result is None:
        return redirect_back(request, back, f"Dismissed the suspect callback of {watch_id}.")
    outcome = decided.result.outcome
    text = (
        f"Released the suspect callback of {watch_id}: event {decided.result.event_id}."
        if outcome == "accepted"
        else f"Released the suspect callback of {watch_id}; it was {outcome} (not emitted again)."
    )
    return redirect_back(request, back, text)


async def _release(
    request: Request, session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    return await _decide(request, session, form, "released")


async def _dismiss(
    request: Request, session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    return await _decide(request, session, form, "dismissed")


# -- subscribers ----------------------------------------------------------------------------

TYPE_CHOICES = (*EVENT_TYPES, "generation.*")


async def _subscribers(request: Request, session: sessions.Session) -> Response:
    relay = _relay(request)
    found = await relay.store.list_subscribers(None, 500)
    return render(
        request,
        "subscribers.html",
        {
            "subscribers": found.items,
            "more": found.next_cursor is not None,
            "providers": sorted(PROVIDERS),
            "types": TYPE_CHOICES,
        },
        session=session,
    )


def _choices(form: dict[str, list[str]], key: str, allowed: tuple[str, ...]) -> list[str] | None:
    """Ticked boxes; none ticked means no filter (all)."""
    chosen = [value for value in form.get(key, []) if value in allowed]
    return chosen or None


async def _subscriber_create(
    request: Request, session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    relay = _relay(request)
    body: dict[str, Any] = {
        "url": _first(form, "url").strip(),
        "providers": _choices(form, "providers", tuple(sorted(PROVIDERS))),
        "event_types": _choices(form, "event_types", TYPE_CHOICES),
    }
    if _first(form, "description").strip():
        body["description"] = _first(form, "description").strip()
    created = await subscriber_rules.create(
        relay.store, body, TargetPolicy.from_settings(relay.settings)
    )
    log.info("ops_subscriber_created", subscriber_id=created.id)
    return _secret_page(request, session, created, "Subscriber added")


async def _subscriber_update(
    request: Request, _session: sessions.Session, form: dict[str, list[str]]
) -> Response:
    relay = _relay(request)
    subscriber_id = request.path_params["subscriber_id"]
    what = _first(form, "action")
    if what in ("enable", "disable"):
        changes: dict[str, Any] = {"enabled": what == "enable"}
    elif what == "filters":
        changes = {
            "providers": _choices(form, "providers", tuple(sorted(PROVIDERS))),
            "event_types": _choices(form, "event_types", TYPE_CHOICES),
        }
    else:
        return redirect_back(request, "/ops/subscribers", "Unknown action.", "error")
    checked = await subscriber_rules.validate_changes(
        changes, TargetPolicy.from_settings(relay.settings), creating=False
    )
    updated = await relay.store.update_subscriber(subscriber_id, checked)
    if updated is None:
        return redirect_back(request, "/ops/subscribers", "No such subscriber.", "error")
    if checked.get("enabled"):
        relay.on_deliveries()  # deliveries that waited for it are due again
    log.info("ops_subscriber_changed", subscriber_id=subscriber_id, change=what)
    words = {"enable": "enabled", "disable": "disabled", "filters": "filters saved"}
    return redirect_back(request, "/ops/subscribers", f"{subscriber_id}: {words[what]}.")


async def _subscriber_rotate(
    request: Request, session: sessions.Session, _form: dict[str, list[str]]
) -> Response:
    relay = _relay(request)
    rotated = await subscriber_rules.rotate(relay.store, request.path_params["subscriber_id"])
    log.info("ops_secret_rotated", subscriber_id=rotated.id)
    return _secret_page(request, session, rotated, "Secret rotated")


def _secret_page(
    request: Request, session: sessions.Session, subscriber: Any, title: str
) -> Response:
    hours = subscriber_rules.ROTATION_OVERLAP_SECONDS // 3600
    return render(
        request,
        "secret.html",
        {
            "title": title,
            "s": subscriber,
            "secret": subscriber.secrets[0],
            "overlap_hours": hours,
            "rotated": title == "Secret rotated",
        },
        session=session,
    )


def _not_found(request: Request, session: sessions.Session, message: str) -> Response:
    return render(
        request,
        "message.html",
        {"title": "Not found", "message": message},
        status_code=404,
        session=session,
    )


routes = [
    Route("/ops", page(_overview), methods=["GET"]),
    Route("/ops/sign-in", sign_in_page, methods=["GET"]),
    Route("/ops/sign-in", sign_in, methods=["POST"]),
    Route("/ops/sign-out", action(_sign_out), methods=["POST"]),
    Route("/ops/deliveries", page(_deliveries), methods=["GET"]),
    Route("/ops/deliveries/replay", action(_replay_shown), methods=["POST"]),
    Route("/ops/deliveries/{delivery_id}", page(_delivery), methods=["GET"]),
    Route("/ops/deliveries/{delivery_id}/replay", action(_replay_one), methods=["POST"]),
    Route("/ops/events", page(_events), methods=["GET"]),
    Route("/ops/events/{event_id}", page(_event), methods=["GET"]),
    Route("/ops/watches", page(_watches), methods=["GET"]),
    Route("/ops/watches/{watch_id}/release", action(_release), methods=["POST"]),
    Route("/ops/watches/{watch_id}/dismiss", action(_dismiss), methods=["POST"]),
    Route("/ops/subscribers", page(_subscribers), methods=["GET"]),
    Route("/ops/subscribers", action(_subscriber_create), methods=["POST"]),
    Route("/ops/subscribers/{subscriber_id}", action(_subscriber_update), methods=["POST"]),
    Route(
        "/ops/subscribers/{subscriber_id}/rotate-secret",
        action(_subscriber_rotate),
        methods=["POST"],
    ),
]
