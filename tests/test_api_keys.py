"""Scoped API keys through the real thing: a relay on loopback, HTTP, the ``relay keys``
commands as processes, the console's sign-in.

Every scope boundary is crossed both ways: what a key may do answers as usual, one step above
is 403 ``insufficient_scope`` naming the scope needed, before the body is read. The table of
every operation against its declared scope is checked in ``test_openapi.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import api_keys
from service.relay import Relay
from service.store.sqlite import SQLiteStore
from tests.conftest import ADMIN_TOKEN, EVOLINK_COMPLETED, RelayServer, make_settings
from tests.fakes import FakeClock
from tests.test_ops_console import browser, csrf_of, sign_in


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def create_key(relay: RelayServer, scope: str, name: str | None = None) -> dict[str, Any]:
    body = {"scope": scope} | ({"name": name} if name else {})
    response = relay.client.post("/v1/keys", json=body, headers=relay.admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def keys_of(relay: RelayServer) -> dict[str, str]:
    """A key of each scope, made with the admin token over the API."""
    return {scope: create_key(relay, scope, f"{scope} key")["key"] for scope in api_keys.SCOPES}


def refused(answer: httpx.Response, needed: str) -> None:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert f"scope {needed}" in error["message"]


def test_a_key_is_shown_once_and_listed_without_it(relay_server: RelayServer) -> None:
    created = create_key(relay_server, "mint", "app server")
    key = created["key"]
    assert key.startswith("rk_mint_") and len(key) > 40
    assert created["scope"] == "mint" and created["name"] == "app server"
    assert created["last_used_at"] is None and created["revoked_at"] is None
    assert relay_server.client.get("/v1/events", headers=bearer(key)).status_code == 200
    listing = relay_server.client.get("/v1/keys", headers=relay_server.admin)
    assert listing.status_code == 200
    assert key not in listing.text and api_keys.hash_key(key) not in listing.text
    (shown,) = listing.json()["items"]
    assert shown["id"] == created["id"] and "key" not in shown
    assert shown["last_used_at"] is not None  # used once, above
    # What a key's body may hold is checked: an unknown scope, a name with a control character.
    for body, code in (
        ({"scope": "root"}, "invalid_scope"),
        ({"scope": "read", "name": "a\nb"}, "invalid_name"),
        ({}, "invalid_scope"),
        ({"scope": "read", "owner": "me"}, "invalid_key"),
    ):
        answer = relay_server.client.post("/v1/keys", json=body, headers=relay_server.admin)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["code"] == code, answer.text


def test_each_scope_does_what_it_may_and_no_more(
    relay_factory: Callable[..., RelayServer], emulator: Any
) -> None:
    # (Callbacks are not held for the provider's confirmation here: they are events at once.)
    relay = relay_factory(**emulator.relay_settings(evolink_confirm=False))
    emulator.add_task("evolink", "task-keys", timeline=((0.0, "running"),))
    key = keys_of(relay)
    client = relay.client

    # read: every GET, nothing else; refused before its body is even read.
    for path in ("/v1/events", "/v1/subscribers", "/v1/deliveries", "/v1/watches"):
        assert client.get(path, headers=bearer(key["read"])).status_code == 200, path
    refused(client.post("/v1/subscribers", content=b"{", headers=bearer(key["read"])), "admin")
    refused(
        client.post("/v1/callback-urls", json={"provider": "evolink"}, headers=bearer(key["read"])),
        "mint",
    )
    refused(client.get("/v1/keys", headers=bearer(key["read"])), "admin")

    # mint: callback URLs and watches (and reading back what it made), not replays.
    minted = client.post(
        "/v1/callback-urls", json={"provider": "evolink"}, headers=bearer(key["mint"])
    )
    assert minted.status_code == 201, minted.text
    watch = client.post(
        "/v1/watches",
        json={"provider": "evolink", "task_id": "task-keys"},
        headers=bearer(key["mint"]),
    )
    assert watch.status_code == 201, watch.text
    watch_path = f"/v1/watches/{watch.json()['id']}"
    assert client.get(watch_path, headers=bearer(key["mint"])).status_code == 200
    refused(client.post("/v1/deliveries/replay", json={}, headers=bearer(key["mint"])), "operate")
    refused(client.post(f"{watch_path}/dismiss", headers=bearer(key["mint"])), "operate")
    canceled = client.delete(watch_path, headers=bearer(key["mint"]))
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"

    # operate: replays and redeliveries (and minting), not subscribers.
    event_id = relay.post_callback(minted.json()["url"], EVOLINK_COMPLETED).json()["event_id"]
    replay = client.post("/v1/deliveries/replay", json={}, headers=bearer(key["operate"]))
    assert replay.status_code == 202, replay.text
    redeliver = client.post(
        f"/v1/events/{event_id}/redeliver", json={}, headers=bearer(key["operate"])
    )
    assert redeliver.status_code == 202, redeliver.text
    assert (
        client.post(
            "/v1/callback-urls", json={"provider": "evolink"}, headers=bearer(key["operate"])
        ).status_code
        == 201
    )
    refused(
        client.post(
            "/v1/subscribers", json={"url": "http://127.0.0.1:9/h"}, headers=bearer(key["operate"])
        ),
        "admin",
    )
    refused(
        client.post("/v1/keys", json={"scope": "read"}, headers=bearer(key["operate"])), "admin"
    )

    # admin: subscribers and keys.
    subscriber = client.post(
        "/v1/subscribers", json={"url": "http://127.0.0.1:9/h"}, headers=bearer(key["admin"])
    )
    assert subscriber.status_code == 201, subscriber.text
    made = client.post("/v1/keys", json={"scope": "read"}, headers=bearer(key["admin"]))
    assert made.status_code == 201


def test_revoked_and_unknown_keys_are_401(relay_server: RelayServer) -> None:
    created = create_key(relay_server, "read")
    key = created["key"]
    assert relay_server.client.get("/v1/events", headers=bearer(key)).status_code == 200
    revoked = relay_server.client.delete(f"/v1/keys/{created['id']}", headers=relay_server.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = relay_server.client.delete(f"/v1/keys/{created['id']}", headers=relay_server.admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    for presented in (key, key[:-1] + ("A" if key[-1] != "A" else "B"), "rk_admin_guess"):
        answer = relay_server.client.get("/v1/events", headers=bearer(presented))
        assert answer.status_code == 401, presented
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    unknown = relay_server.client.delete("/v1/keys/key_unknown", headers=relay_server.admin)
    assert unknown.status_code == 404
    # The admin token stays the bootstrap key of scope admin.
    assert relay_server.client.get("/v1/keys", headers=relay_server.admin).status_code == 200


def test_metrics_take_a_read_key(relay_server: RelayServer) -> None:
    key = create_key(relay_server, "read", "prometheus")["key"]
    scraped = relay_server.client.get("/metrics", headers=bearer(key))
    assert scraped.status_code == 200
    assert "relay_store_up" in scraped.text
    assert relay_server.client.get("/metrics").status_code == 401
    assert relay_server.client.get("/metrics", headers=bearer("rk_read_nope")).status_code == 401


def test_last_use_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    """Every request looks its key up; only the first in a minute writes ``last_used_at``."""

    async def run() -> tuple[list[float], float | None]:
        clock = FakeClock(1_000_000.0)
        store = SQLiteStore(str(tmp_path / "relay.db"))
        relay = await Relay.start(make_settings(tmp_path, 8000), store, clock=clock)
        writes: list[float] = []
        touch = store.touch_api_key

        async def counted(key_id: str, now: float, every: float) -> None:
            writes.append(now)
            await touch(key_id, now, every)

        store.touch_api_key = counted  # type: ignore[method-assign]
        try:
            record, key = await api_keys.create(relay, "read")
            for step in (0.0, 1.0, 30.0, 59.9, 60.0, 61.0, 119.0, 125.0):
                clock.now = 1_000_000.0 + step
                credential = await api_keys.authenticate(relay, key)
                assert credential == api_keys.Credential("read", record.id)
            listed = {k.id: k for k in await store.list_api_keys()}
            return writes, listed[record.id].last_used_at
        finally:
            await relay.close()

    writes, last_used = asyncio.run(run())
    assert writes == [1_000_000.0, 1_000_060.0, 1_000_125.0]
    assert last_used == 1_000_125.0


def _relay_command(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATABASE_URL=database, RELAY_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "service", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_relay_keys_create_list_revoke(relay_server: RelayServer) -> None:
    """The commands work on the store a running relay serves: a key made by one is accepted by
    the relay at once, and refused at once when revoked."""
    database = relay_server.settings.database_url
    created = _relay_command("create", "--scope", "operate", "--name", "on call", database=database)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("rk_operate_") and "\n" not in key
    assert "not shown again" in created.stderr and key not in created.stderr
    replay = relay_server.client.post("/v1/deliveries/replay", json={}, headers=bearer(key))
    assert replay.status_code == 202, replay.text
    refused(relay_server.client.get("/v1/keys", headers=bearer(key)), "admin")

    listing = _relay_command("list", database=database)
    assert listing.returncode == 0, listing.stderr
    assert key not in listing.stdout
    heading, row, total = listing.stdout.strip().splitlines()
    assert heading.split()[:3] == ["ID", "NAME", "SCOPE"]
    key_id = row.split()[0]
    assert key_id.startswith("key_") and "on call" in row and "operate" in row
    assert "1 keys (1 live)" in total

    revoked = _relay_command("revoke", key_id, database=database)
    assert revoked.returncode == 0, revoked.stderr
    assert f"{key_id}: revoked at" in revoked.stdout
    assert relay_server.client.get("/v1/events", headers=bearer(key)).status_code == 401
    assert "(0 live)" in _relay_command("list", database=database).stdout
    missing = _relay_command("revoke", "key_unknown", database=database)
    assert missing.returncode == 2 and "not_found" in missing.stderr
    wrong = _relay_command("create", "--scope", "root", database=database)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


@pytest.mark.parametrize("scope", ["read", "mint"])
def test_the_console_refuses_read_and_mint_keys(relay_server: RelayServer, scope: str) -> None:
    key = create_key(relay_server, scope)["key"]
    with browser(relay_server) as client:
        answer = sign_in(client, token=key)
        assert answer.status_code == 403
        assert f"This key&#39;s scope is {scope}" in answer.text
        assert "operate or admin" in answer.text
        assert client.get("/ops").status_code == 303  # not signed in


def test_an_operate_key_signs_in_to_the_console_without_subscribers(
    relay_server: RelayServer,
) -> None:
    created = create_key(relay_server, "operate", "on call")
    with browser(relay_server) as client:
        assert sign_in(client, token=created["key"]).status_code == 303
        overview = client.get("/ops")
        assert overview.status_code == 200
        assert 'href="/ops/deliveries"' in overview.text
        assert 'href="/ops/subscribers"' not in overview.text
        page = client.get("/ops/subscribers")
        assert page.status_code == 403
        assert "scope admin" in page.text and "scope operate" in page.text
        csrf = csrf_of(overview.text)
        form = {"csrf": csrf, "url": "http://127.0.0.1:9/h", "back": "/ops/subscribers"}
        assert client.post("/ops/subscribers", data=form).status_code == 403
        assert (
            relay_server.client.get("/v1/subscribers", headers=relay_server.admin).json()["items"]
            == []
        )
        # What the person on call does is open: a replay is answered with a redirect back.
        replay = client.post(
            "/ops/deliveries/replay",
            data={"ids": "dlv_unknown", "csrf": csrf, "back": "/ops/deliveries"},
        )
        assert replay.status_code == 303 and replay.headers["location"] == "/ops/deliveries"
        # Revoking the key ends its console session, on the next page.
        relay_server.client.delete(f"/v1/keys/{created['id']}", headers=relay_server.admin)
        ended = client.get("/ops")
        assert ended.status_code == 303
        assert ended.headers["location"].startswith("/ops/sign-in")


def test_an_admin_key_manages_subscribers_in_the_console(relay_server: RelayServer) -> None:
    key = create_key(relay_server, "admin")["key"]
    with browser(relay_server) as client:
        assert sign_in(client, token=key).status_code == 303
        overview = client.get("/ops")
        assert 'href="/ops/subscribers"' in overview.text
        assert client.get("/ops/subscribers").status_code == 200
