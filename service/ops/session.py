"""The ops console's session: a signed cookie, CSRF tokens, and slowed-down failed sign-ins.

The cookie never holds the admin token. It holds a random CSRF token and, once signed in, a
random session id, signed (itsdangerous, HMAC-SHA256, timestamped) with a key derived from the
relay's signing key *and* the admin token: changing either signs everyone out. It is
HttpOnly, SameSite=Strict, scoped to ``/ops``, and Secure when the relay's public URL is
https. Every form carries the session's CSRF token; a POST also has to come from the
console's own origin when the browser says where it comes from.

A signed cookie alone cannot be taken back, so the session id names a row in the store
(``ops_sessions``), read on every console request (``verify``): signing out revokes it, and
from that moment the old cookie opens nothing, on any replica. The row also holds the scope
the session was signed in with (the admin token's is ``admin``; an API key's its own,
``service.api_keys``) and the key, whose revocation ends the session the same way.

Time comes from the ``clock`` each function is given (the relay's): the cookie's signature
carries it, and it decides when a session has expired, here and in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Any

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from service.clock import Clock, system_clock
from service.settings import Settings
from service.store.base import Store

COOKIE = "relay_ops"
COOKIE_PATH = "/ops"
#: A signed-in session lasts this long; then the operator signs in again.
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    csrf: str
    signed_in: bool
    issued_at: float
    #: The store's ``ops_sessions`` id of a signed-in session (None before sign-in).
    sid: str | None = None
    #: The scope it was signed in with, as the store says (``verify``); None until verified.
    scope: str | None = None

    @classmethod
    def fresh(cls, *, signed_in: bool, now: float) -> Session:
        sid = secrets.token_urlsafe(24) if signed_in else None
        return cls(secrets.token_urlsafe(24), signed_in, now, sid)


class _ClockedSigner(TimestampSigner):
    """itsdangerous's timestamped signer, reading the time from a ``Clock``: the cookie's age,
    and so its expiry, follows the relay's clock (a fake one in unit tests)."""

    def __init__(self, *args: Any, clock: Clock = system_clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock())


def _serializer(settings: Settings, clock: Clock) -> URLSafeTimedSerializer:
    key = str(settings.secret_keys[0]).encode() if settings.secret_keys else b""
    admin = str(settings.admin_token or "").encode()
    derived = hmac.new(key, b"relay-ops-session\x00" + admin, hashlib.sha256).digest()
    return URLSafeTimedSerializer(
        derived, salt="ops-session", signer=_ClockedSigner, signer_kwargs={"clock": clock}
    )


def load(request: Request, settings: Settings, clock: Clock) -> Session | None:
    """The request's valid session, or None (absent, forged, expired or from an old key)."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data: Any = _serializer(settings, clock).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    sid = data.get("sid") if isinstance(data.get("sid"), str) else None
    return Session(data["csrf"], data.get("in") is True, float(data.get("at", 0)), sid)


async def verify(
    request: Request, settings: Settings, store: Store, clock: Clock
) -> Session | None:
    """``load``, then a signed-in session counts only while its store record is live: after
    sign-out (or a cookie from before session records) it is a signed-out one, keeping its
    CSRF token for the sign-in form. Raises ``StorageUnavailable`` if the store cannot say."""
    session = load(request, settings, clock)
    if session is None or not session.signed_in:
        return session
    scope = None if session.sid is None else await store.ops_session_live(session.sid, clock())
    if scope is not None:
        return replace(session, scope=scope)
    return replace(session, signed_in=False, sid=None)


async def start(
    store: Store, clock: Clock, *, scope: str = "admin", key_id: str | None = None
) -> Session:
    """A new signed-in session of ``scope``, by the API key ``key_id`` (None: the admin token),
    recorded in the store (call it at sign-in)."""
    session = replace(Session.fresh(signed_in=True, now=clock()), scope=scope)
    assert session.sid is not None  # noqa: S101 - narrows the type: a fresh session has an id
    await store.create_ops_session(
        session.sid,
        session.issued_at,
        session.issued_at + SESSION_SECONDS,
        scope=scope,
        key_id=key_id,
    )
    return session


async def end(store: Store, session: Session, clock: Clock) -> None:
    """Sign-out: the session's record is revoked, so its cookie opens nothing any more."""
    if session.sid is not None:
        await store.revoke_ops_session(session.sid, clock())


def store(response: Response, session: Session, settings: Settings, clock: Clock) -> None:
    """Set the session's cookie on ``response``, signed at ``clock()``."""
    value = _serializer(settings, clock).dumps(
        {"csrf": session.csrf, "in": session.signed_in, "at": session.issued_at, "sid": session.sid}
    )
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https://"),
    )


def clear(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https://"),
    )


def csrf_ok(request: Request, session: Session | None, presented: object) -> bool:
    """The form's token matches the session's, and the request comes from this origin."""
    if session is None or not isinstance(presented, str):
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            return False
    return hmac.compare_digest(presented.encode(), session.csrf.encode())


class SignInThrottle:
    """Slows down guessing: after ``free`` failed sign-ins from one address, each further
    attempt must wait (1 s, then 2, 4, ... up to ``longest``) after the last failure.

    The admin token and API keys are long and random, so this is not what keeps them safe; it
    keeps a script from trying tokens as fast as the relay answers, and keeps the log quiet. In
    memory, per process; a success clears the address. At most ``max_tracked`` addresses are
    kept.
    """

    def __init__(
        self,
        free: int = 3,
        longest: float = 300.0,
        max_tracked: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        self.free = free
        self.longest = longest
        self.max_tracked = max_tracked
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def wait(self, address: str) -> float:
        """Seconds this address must still wait before its next attempt (0: go ahead)."""
        count, last = self._failures.get(address, (0, 0.0))
        if count < self.free:
            return 0.0
        lockout = min(self.longest, 2.0 ** (count - self.free))
        return max(0.0, last + lockout - self.clock())

    def failed(self, address: str) -> None:
        count, _ = self._failures.pop(address, (0, 0.0))
        self._failures[address] = (count + 1, self.clock())
        if len(self._failures) > self.max_tracked:
            # Forget the address that failed longest ago (dicts keep insertion order).
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
