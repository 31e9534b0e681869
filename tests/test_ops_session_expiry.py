"""The ops console session's time rules, on a fake clock: the cookie's lifetime, the store
record's lifetime, sign-out, and cookies dated in the future.

No server: a Starlette ``Request`` carrying the cookie, a ``Response`` receiving it, and a real
SQLite store on a temporary file (the session record's expiry is the store's rule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from starlette.datastructures import Secret
from starlette.requests import Request
from starlette.responses import Response

from service.ops import session as sessions
from service.ops.session import SESSION_SECONDS
from service.settings import Settings
from service.store.base import Store
from service.store.sqlite import SQLiteStore
from tests.fakes import FakeClock

T = TypeVar("T")

SETTINGS = Settings(admin_token=Secret("the-admin-token"), secret_keys=(Secret("signing-key"),))


def cookie_of(session: sessions.Session, clock: FakeClock) -> str:
    """The cookie value ``sessions.store`` sets for ``session`` at ``clock()``."""
    response = Response()
    sessions.store(response, session, SETTINGS, clock)
    header = response.headers["set-cookie"]
    assert header.startswith(f"{sessions.COOKIE}=")
    return header.split(";", 1)[0].split("=", 1)[1]


def request_with(cookie: str) -> Request:
    header = f"{sessions.COOKIE}={cookie}".encode()
    return Request(
        {"type": "http", "method": "GET", "path": "/ops", "headers": [(b"cookie", header)]}
    )


def with_store(tmp_path: Path, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = SQLiteStore(str(tmp_path / "relay.db"))
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def test_the_cookie_lasts_its_lifetime_and_not_a_second_more() -> None:
    clock = FakeClock()
    session = sessions.Session.fresh(signed_in=True, now=clock())
    cookie = cookie_of(session, clock)
    clock.advance(SESSION_SECONDS)
    loaded = sessions.load(request_with(cookie), SETTINGS, clock)
    assert loaded is not None
    assert (loaded.csrf, loaded.signed_in, loaded.sid) == (session.csrf, True, session.sid)
    assert loaded.issued_at == session.issued_at
    clock.advance(1)
    assert sessions.load(request_with(cookie), SETTINGS, clock) is None


def test_a_cookie_signed_in_the_future_is_refused() -> None:
    """A cookie whose signature is dated later than now (a clock stepped back, or a forgery
    with a far-future date) opens nothing."""
    clock = FakeClock()
    cookie = cookie_of(sessions.Session.fresh(signed_in=True, now=clock()), clock)
    clock.advance(-5)
    assert sessions.load(request_with(cookie), SETTINGS, clock) is None


def test_a_signed_in_session_lives_as_long_as_its_store_record(tmp_path: Path) -> None:
    """At the last second of the cookie's life the store record has already expired: the
    cookie still loads (its CSRF token serves the sign-in form) but is signed out."""
    clock = FakeClock()

    async def work(store: Store) -> list[tuple[bool, bool]]:
        session = await sessions.start(store, clock)
        cookie = cookie_of(session, clock)
        seen = []
        for step in (0, SESSION_SECONDS - 1, 1):
            clock.advance(step)
            verified = await sessions.verify(request_with(cookie), SETTINGS, store, clock)
            seen.append((verified is not None, verified is not None and verified.signed_in))
        return seen

    assert with_store(tmp_path, work) == [(True, True), (True, True), (True, False)]


def test_sign_out_ends_the_session_at_once(tmp_path: Path) -> None:
    clock = FakeClock()

    async def work(store: Store) -> tuple[bool, bool, bool]:
        session = await sessions.start(store, clock)
        cookie = cookie_of(session, clock)
        before = await sessions.verify(request_with(cookie), SETTINGS, store, clock)
        clock.advance(60)
        await sessions.end(store, session, clock)
        after = await sessions.verify(request_with(cookie), SETTINGS, store, clock)
        assert after is not None and after.sid is None and after.csrf == session.csrf
        # Another session of the same operator is untouched.
        other = await sessions.start(store, clock)
        other_ok = await sessions.verify(
            request_with(cookie_of(other, clock)), SETTINGS, store, clock
        )
        return (
            before is not None and before.signed_in,
            after.signed_in,
            other_ok is not None and other_ok.signed_in,
        )

    assert with_store(tmp_path, work) == (True, False, True)


def test_a_session_starts_at_the_clocks_time(tmp_path: Path) -> None:
    clock = FakeClock(1_900_000_000.5)

    async def work(store: Store) -> sessions.Session:
        return await sessions.start(store, clock)

    session = with_store(tmp_path, work)
    assert session.issued_at == 1_900_000_000.5
    assert sessions.Session.fresh(signed_in=False, now=clock()).issued_at == clock.now
