"""Signing out of the ops console ends the session on the server: a copy of the old cookie,
with its CSRF token, opens no page and submits no form, on any replica.

Real relays (uvicorn) on SQLite and PostgreSQL, and two relays sharing one PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service.ops import session as sessions
from tests.conftest import ADMIN_TOKEN, RelayServer
from tests.test_ops_console import csrf_of, sign_in
from tests.test_store_contract import fresh_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def relay(request: pytest.FixtureRequest, relay_factory: Callable[..., RelayServer]) -> Any:
    if request.param == "sqlite":
        yield relay_factory()
        return
    with fresh_schema() as url:
        server = relay_factory(database_url=url)
        yield server
        server.stop()  # before the schema is dropped


def signed_in(relay: RelayServer) -> tuple[httpx.Client, str, str]:
    """A browser signed in to ``relay``: (client, its session cookie, a page's CSRF token)."""
    client = httpx.Client(base_url=relay.base_url, timeout=10, follow_redirects=False)
    assert sign_in(client).status_code == 303
    page = client.get("/ops/deliveries")
    assert page.status_code == 200
    cookie = client.cookies.get(sessions.COOKIE)
    assert cookie
    return client, cookie, csrf_of(page.text)


def assert_refused(relay: RelayServer, cookie: str, csrf: str) -> None:
    """The copied cookie is sent to sign in for pages, and its forms are refused."""
    with httpx.Client(
        base_url=relay.base_url, timeout=10, cookies={sessions.COOKIE: cookie}
    ) as copy:
        page = copy.get("/ops/deliveries")
        assert page.status_code == 303, page.text
        assert page.headers["location"].startswith("/ops/sign-in?next=")
        replay = copy.post(
            "/ops/deliveries/replay",
            data={"csrf": csrf, "ids": ["dlv_any"], "back": "/ops/deliveries"},
        )
        assert replay.status_code == 403
        assert "sign in again" in replay.text
        # The sign-in page does not take it for a live session either (no redirect loop).
        assert copy.get("/ops/sign-in").status_code == 200


def test_sign_out_revokes_the_session(relay: RelayServer) -> None:
    """Before sign-out a copy of the cookie works; after it, pages and forms refuse it."""
    client, cookie, csrf = signed_in(relay)
    with httpx.Client(
        base_url=relay.base_url, timeout=10, cookies={sessions.COOKIE: cookie}
    ) as copy:
        assert copy.get("/ops/deliveries").status_code == 200  # the copy is as good as the original
    out = client.post("/ops/sign-out", data={"csrf": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/ops/sign-in")
    client.close()
    assert_refused(relay, cookie, csrf)


@pytest.mark.postgres
def test_sign_out_on_one_replica_ends_the_session_on_the_other(
    pg_url: str, relay_factory: Callable[..., RelayServer]
) -> None:
    """Two relays on one PostgreSQL: a session signed in on the first opens pages on the
    second until it signs out on the first; then the second refuses it."""
    first = relay_factory(database_url=pg_url)
    second = relay_factory(database_url=pg_url)
    client, cookie, csrf = signed_in(first)
    with httpx.Client(
        base_url=second.base_url, timeout=10, cookies={sessions.COOKIE: cookie}
    ) as other:
        assert other.get("/ops/deliveries").status_code == 200
    assert client.post("/ops/sign-out", data={"csrf": csrf}).status_code == 303
    client.close()
    assert_refused(second, cookie, csrf)
    assert_refused(first, cookie, csrf)


def test_no_session_without_its_record(relay_server: RelayServer) -> None:
    """A sign-in the store cannot record is refused (503, said in the page), not half-made."""
    with httpx.Client(base_url=relay_server.base_url, timeout=10) as client:
        page = client.get("/ops/sign-in")
        relay_server.in_loop(relay_server.relay.store.close())
        answer = client.post(
            "/ops/sign-in", data={"csrf": csrf_of(page.text), "token": ADMIN_TOKEN, "next": "/ops"}
        )
        assert answer.status_code == 503
        assert "The store is not open." in answer.text
        assert answer.headers["content-type"].startswith("text/html")
