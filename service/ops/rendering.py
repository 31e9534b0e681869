"""How the ops console answers: pages from Jinja templates, with strict security headers, and
redirects carrying a one-time notice.

Every answer carries ``SECURITY_HEADERS``: a content security policy that allows the base
template's one inline stylesheet and nothing else (no script at all), no caching, no referrer,
no framing. Times on a page are shown by the ``when`` filter, relative to the relay's clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from service.errors import RelayError
from service.ops import session as sessions
from service.overview import human_age
from service.relay import Relay
from service.subscriber_options import masked

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


# -- formatting (Jinja filters) -------------------------------------------------------------


def _parse_rfc3339(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def when(value: str | float | None, now: float) -> str:
    """``2026-11-21 17:37:26 UTC (3 min ago)``, seen from ``now``."""
    if value is None or value == "":
        return "-"
    stamp = value if isinstance(value, float | int) else _parse_rfc3339(value)
    if stamp is None:
        return str(value)
    text = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = now - stamp
    if delta >= 0:
        return f"{text} ({human_age(delta)} ago)"
    return f"{text} (in {human_age(-delta)})"


@jinja2.pass_context
def _when_filter(context: jinja2.runtime.Context, value: str | float | None) -> str:
    """``{{ t | when }}``: ``when`` seen from the page's ``now`` (see ``render``)."""
    return when(value, context["now"])


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def file_size(value: int | None) -> str:
    """``1.5 MiB``: a size in bytes for people (``-`` when unknown)."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    size = float(value)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


templates.env.filters["when"] = _when_filter
templates.env.filters["pretty_json"] = pretty_json
templates.env.filters["age"] = human_age
templates.env.filters["file_size"] = file_size
templates.env.filters["masked"] = masked


# -- answers --------------------------------------------------------------------------------


def relay_of(request: Request) -> Relay:
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
    """The template ``name`` as a page, with the notice a redirect left (then cleared)."""
    relay = relay_of(request)
    flash = _take_flash(request, relay)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf": session.csrf if session else "",
            "signed_in": bool(session and session.signed_in),
            # What the navigation offers: the session's scope (``service.api_keys``).
            "scope": session.scope if session and session.signed_in else None,
            "flash": flash,
            "path": request.url.path,
            "now": relay.clock(),
            "archiving": relay.archive is not None,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=sessions.COOKIE_PATH)
    return response


def render_list(
    request: Request,
    name: str,
    rows: tuple[str, list[dict[str, Any]]],
    filters: dict[str, str],
    error: str | None,
    context: dict[str, Any],
    session: sessions.Session,
) -> Response:
    """A list page filtered by what the operator typed: ``rows`` (its key in the template and
    the newest ``PAGE_ROWS`` at most, ``more`` when there may be older ones), the ``filters``
    as typed, and ``error``, a 400 page, when one of them is wrong."""
    key, items = rows
    return render(
        request,
        name,
        {
            key: items,
            "filters": filters,
            "error": error,
            "more": len(items) == PAGE_ROWS,
            "page_rows": PAGE_ROWS,
            **context,
        },
        status_code=400 if error else 200,
        session=session,
    )


def message(
    request: Request,
    title: str,
    text: str,
    status_code: int,
    session: sessions.Session | None = None,
) -> Response:
    """A page that only says something: not found, not available, refused."""
    return render(
        request,
        "message.html",
        {"title": title, "message": text},
        status_code=status_code,
        session=session,
    )


def unavailable(
    request: Request, exc: RelayError, session: sessions.Session | None = None
) -> Response:
    return message(request, "Not available", exc.message, exc.status_code, session)


def redirect_back(request: Request, target: str, text: str, kind: str = "ok") -> RedirectResponse:
    """303 to ``target`` (a console path) with a one-time notice."""
    relay = relay_of(request)
    response = RedirectResponse(safe_back(target), status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        FLASH_COOKIE,
        _flash_serializer(relay).dumps({"text": text, "kind": kind}),
        max_age=120,
        path=sessions.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=relay.settings.public_url.startswith("https://"),
    )
    return response


def redirect(target: str) -> RedirectResponse:
    """303 to ``target``, a path the console chose."""
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def safe_back(target: object, default: str = "/ops") -> str:
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
