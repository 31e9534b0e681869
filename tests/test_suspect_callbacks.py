"""Held and suspect callbacks an operator can see and decide about, through a real relay.

A real relay (SQLite file or PostgreSQL schema) confirms Evolink callbacks with the loopback
emulator of ``tests/provider_emulators.py``. What an operator sees (``GET /v1/watches?held=``,
``?suspect=undecided``: the callback as received, the API's last answer, the reason) and what
releasing or dismissing does (exactly one event, or none; recorded; counted), plus a watch
whose provider answers a status word the relay does not know.
"""

# ruff: noqa: F811 (pytest fixtures imported from other test modules, used as parameters)
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_attribution import database  # noqa: F401 (a fixture)
from tests.test_confirmation_rivya_simulate import forged
from tests.test_forged_flood import watches
from tests.test_health_metrics import scrape, value
from tests.test_ops_console import browser, csrf_of, sign_in
from tests.test_watches import _cli, get_watch, post_watch, subscribe, wait_watch

#: Polls 0.1 s apart, then 0.2 s: a task the API does not know ends suspect in about 0.3 s.
QUICK = {"watch_backoff": (0.1, 0.2), "provider_timeout": 0.5, "hold_deadline": 30.0}


def decide(relay: RelayServer, watch_id: str, action: str) -> httpx.Response:
    return relay.client.post(f"/v1/watches/{watch_id}/{action}", headers=relay.admin)


def suspect_watch(
    emulator: ProviderEmulator, relay: RelayServer, url: str, task_id: str
) -> tuple[dict[str, Any], bytes]:
    """A forged ``completed`` for a task the API does not know, held then ended suspect: the
    watch, and the callback's body as sent."""
    body = json.dumps(forged(task_id), separators=(",", ":")).encode()
    answer = relay.client.post(url, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and answer.json()["held"] is True, answer.text
    return wait_watch(relay, answer.json()["watch_id"], "rejected"), body


def test_a_suspect_callback_is_shown_and_released_exactly_once(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """The operator sees the callback as received, the API's answer and the reason; two
    releases at once forward it exactly once, with its URL's metadata, and record who and
    when; a later dismiss is 409."""
    relay = relay_factory(**emulator.relay_settings(**QUICK, **database))
    subscribe(relay, sink)
    before = scrape(relay)
    url = relay.mint("evolink", metadata={"user_id": "u-7"})
    task_id = "task-unified-1700000000-suspect01"
    ended, body = suspect_watch(emulator, relay, url, task_id)
    assert relay.events() == [] and sink.receipts == []

    [listed] = watches(relay, suspect="undecided")
    assert listed["id"] == ended["id"]
    waiting = scrape(relay)
    assert value(waiting, "relay_callbacks_waiting", state="suspect") == 1
    assert value(waiting, "relay_callbacks_waiting", state="held") == 0
    assert listed["held_callback"].encode() == body  # as received, byte for byte
    assert json.loads(listed["last_answer"]) == {"error": "not found"}  # the API's
    assert listed["suspect"]["reason"] == "task_not_found"
    assert listed["suspect"]["decision"] is None

    start = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def release() -> None:
        with httpx.Client(base_url=relay.base_url, timeout=10) as client:
            start.wait()
            answers.append(client.post(f"/v1/watches/{ended['id']}/release", headers=relay.admin))

    threads = [threading.Thread(target=release) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    won = next(a for a in answers if a.status_code == 200).json()
    lost = next(a for a in answers if a.status_code == 409).json()
    assert lost["error"]["code"] == "already_decided"
    assert won["outcome"] == "accepted" and won["event_id"]
    assert won["watch"]["suspect"]["decision"] == "released"
    assert won["watch"]["suspect"]["decided_by"] == "admin_api"
    datetime.fromisoformat(won["watch"]["suspect"]["decided_at"].replace("Z", "+00:00"))

    [receipt] = sink.wait_for(1)
    assert receipt.event_id == won["event_id"]
    assert receipt.data["status"] == "succeeded" and receipt.data["metadata"] == {"user_id": "u-7"}
    raw = relay.client.get(f"/v1/events/{won['event_id']}/raw", headers=relay.admin)
    assert raw.content == body  # forwarded as received
    assert [e["id"] for e in relay.events()] == [won["event_id"]]

    again = decide(relay, ended["id"], "dismiss")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"
    assert watches(relay, suspect="undecided") == []
    assert [w["id"] for w in watches(relay, suspect="true")] == [ended["id"]]
    after = scrape(relay)
    decisions = ("relay_suspect_decisions_total", {"provider": "evolink", "decision": "released"})
    assert (
        value(after, decisions[0], **decisions[1]) - value(before, decisions[0], **decisions[1])
        == 1
    )
    held = ("relay_held_callbacks_total", {"provider": "evolink"})
    assert value(after, held[0], **held[1]) - value(before, held[0], **held[1]) == 1
    assert value(after, "relay_callbacks_waiting", state="suspect") == 0


def test_a_dismissed_callback_emits_nothing_and_only_suspects_are_decided(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """Dismissing records the choice and emits nothing; a callback still awaiting
    confirmation (listed ``?held=true``) and a confirmed one cannot be decided (409), an
    unknown watch is 404."""
    relay = relay_factory(**emulator.relay_settings(**QUICK, **database))
    subscribe(relay, sink)
    url = relay.mint("evolink", reusable=True)
    ended, _ = suspect_watch(emulator, relay, url, "task-unified-1700000000-suspect02")
    dismissed = decide(relay, ended["id"], "dismiss")
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["watch"]["suspect"]["decision"] == "dismissed"
    again = decide(relay, ended["id"], "release")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"

    # The API fails: the callback stays held, listed as such, and is not the operator's yet.
    # A listing shows the first 16 KiB of a held callback, the watch itself all of it.
    waiting = emulator.add_task("evolink", always=Fault(503))
    big = json.dumps(forged(waiting, note="x" * 20_000)).encode()
    answer = relay.client.post(url, content=big, headers={"content-type": "application/json"})
    [listed] = watches(relay, held="true")
    assert (listed["id"], listed["state"]) == (answer.json()["watch_id"], "active")
    assert listed["held_callback"].encode() == big[:16_384]
    assert listed["held_callback_bytes"] == len(big)
    assert value(scrape(relay), "relay_callbacks_waiting", state="held") == 1
    assert get_watch(relay, listed["id"])["held_callback"].encode() == big
    refused = decide(relay, listed["id"], "release")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_suspect"

    missing = decide(relay, "wch_missing", "release")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert relay.events() == [] and sink.receipts == []


def test_an_unknown_status_word_polls_at_the_slowest_interval_and_is_flagged(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    database: dict[str, Any],
) -> None:
    """A task whose status word the relay does not know is polled at the back-off's maximum
    (the old relay polled it every few seconds for 24 hours) and flagged for the operator;
    a known word clears the flag."""
    relay = relay_factory(
        **emulator.relay_settings(watch_backoff=(0.1, 30.0), provider_timeout=0.5, **database)
    )
    task_id = emulator.add_task(
        "evolink", timeline=((0.0, "running"),), words={"running": "pondering"}
    )
    watch = post_watch(relay, provider="evolink", task_id=task_id)
    shown = _wait_polled(relay, watch["id"])
    assert (shown["flag"], shown["unknown_status"]) == ("unknown_status", "pondering")
    gap = _seconds(shown["next_poll_at"]) - _seconds(shown["last_polled_at"])
    assert gap == pytest.approx(30.0, abs=0.5)  # the back-off's maximum, not 0.2 s
    [flagged] = [w for w in watches(relay) if w["id"] == watch["id"]]
    assert flagged["flag"] == "unknown_status"


def _wait_polled(relay: RelayServer, watch_id: str) -> dict[str, Any]:
    for _ in range(200):
        shown = get_watch(relay, watch_id)
        if shown["polls"] >= 1:
            return shown
        threading.Event().wait(0.05)
    raise AssertionError("the watch was never polled")


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_console_lists_suspect_callbacks_and_releases_one(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """Signed in, an operator sees the suspect callback, the API's answer and the reason, and
    the watches flagged for an unknown word; a release needs the form's CSRF token, forwards
    the callback once and is then shown as decided (a second release is refused)."""
    relay = relay_factory(**emulator.relay_settings(**QUICK, **database))
    subscribe(relay, sink)
    url = relay.mint("evolink", metadata={"user_id": "u-9"})
    suspect_task = "task-unified-1700000000-console1"
    ended, _ = suspect_watch(emulator, relay, url, suspect_task)
    strange = emulator.add_task(
        "evolink", timeline=((0.0, "running"),), words={"running": "pondering"}
    )
    flagged = post_watch(relay, provider="evolink", task_id=strange)
    _wait_polled(relay, flagged["id"])
    with browser(relay) as client:
        sign_in(client)
        page = client.get("/ops/watches")
        assert page.status_code == 200, page.text[:500]
        assert ended["id"] in page.text and "task_not_found" in page.text
        assert "task-unified-1700000000-console1" in page.text  # the callback as received
        assert "not found" in page.text  # the API's answer
        assert flagged["id"] in page.text and "pondering" in page.text
        action = f"/ops/watches/{ended['id']}/release"
        assert f'action="{action}"' in page.text
        forged_form = client.post(action, data={"csrf": "guess", "back": "/ops/watches"})
        assert forged_form.status_code == 403 and relay.events(task_id=suspect_task) == []

        done = client.post(action, data={"csrf": csrf_of(page.text), "back": "/ops/watches"})
        assert (done.status_code, done.headers["location"]) == (303, "/ops/watches")
        notice = client.get("/ops/watches")
        assert "Released the suspect callback" in notice.text
        assert f'action="{action}"' not in notice.text and "console" in notice.text
        again = client.post(action, data={"csrf": csrf_of(page.text), "back": "/ops/watches"})
        assert again.status_code == 303
        assert "already released" in client.get("/ops/watches").text
    [event] = relay.events(task_id=suspect_task)
    assert event["data"]["metadata"] == {"user_id": "u-9"}
    assert get_watch(relay, ended["id"])["suspect"]["decided_by"] == "console"


def test_the_cli_lists_releases_and_dismisses_suspect_callbacks(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """``relay watches list --suspect`` shows what waits for a decision; ``release`` forwards
    it once (a second is refused), ``dismiss`` emits nothing; both recorded as ``cli``."""
    relay = relay_factory(**emulator.relay_settings(**QUICK, **database))
    subscribe(relay, sink)
    url = relay.mint("evolink", reusable=True, metadata={"user_id": "u-3"})
    kept, _ = suspect_watch(emulator, relay, url, "task-unified-1700000000-cli00001")
    dropped, _ = suspect_watch(emulator, relay, url, "task-unified-1700000000-cli00002")
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": relay.settings.database_url,
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_SECRET_KEY": "test-signing-key",
        "RELAY_LOG_LEVEL": "warning",
    }
    listed = _cli("watches", "list", "--suspect", env=env)
    assert listed.returncode == 0, listed.stderr
    assert kept["id"] in listed.stdout and dropped["id"] in listed.stdout
    assert "suspect: task_not_found, claimed succeeded (undecided)" in listed.stdout

    released = _cli("watches", "release", kept["id"], env=env)
    assert released.returncode == 0, released.stderr
    assert "released" in released.stdout and "accepted" in released.stdout
    twice = _cli("watches", "release", kept["id"], env=env)
    assert twice.returncode == 2 and "already_decided" in twice.stderr
    dismissed = _cli("watches", "dismiss", dropped["id"], env=env)
    assert dismissed.returncode == 0, dismissed.stderr
    assert _cli("watches", "list", "--suspect", env=env).stdout.startswith("ID")
    assert kept["id"] not in _cli("watches", "list", "--suspect", env=env).stdout

    [receipt] = sink.wait_for(1)
    assert receipt.data["task_id"] == "task-unified-1700000000-cli00001"
    assert receipt.data["metadata"] == {"user_id": "u-3"}
    assert [e["data"]["task_id"] for e in relay.events()] == [receipt.data["task_id"]]
    assert get_watch(relay, dropped["id"])["suspect"]["decided_by"] == "cli"
