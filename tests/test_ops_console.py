"""The ops console over plain HTTP: sign-in, the session cookie, CSRF, throttling, every page.

The browser test (``test_ops_browser.py``) clicks through it in Chromium; these check what a
browser does not show: cookie attributes, refusals, headers, redirects.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.datastructures import Secret

from service.clock import system_clock
from service.ops import session as sessions
from service.ops.session import SignInThrottle
from tests.conftest import ADMIN_TOKEN, EVOLINK_COMPLETED, RelayServer
from tests.fakes import FakeClock


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def browser(relay: RelayServer) -> httpx.Client:
    """A cookie-keeping client, like a browser (redirects not followed, to look at them)."""
    return httpx.Client(base_url=relay.base_url, timeout=10, follow_redirects=False)


def sign_in(
    client: httpx.Client, token: str = ADMIN_TOKEN, next_path: str = "/ops"
) -> httpx.Response:
    page = client.get("/ops/sign-in", params={"next": next_path})
    assert page.status_code == 200
    return client.post(
        "/ops/sign-in", data={"csrf": csrf_of(page.text), "token": token, "next": next_path}
    )


@pytest.fixture(autouse=True)
def throttle_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """Each test starts with no failed sign-ins on record (the throttle is per process), on a
    clock the test moves: a lockout ends when the test says so, not after a sleep."""
    from service.ops import sign_in as sign_in_module

    clock = FakeClock()
    monkeypatch.setattr(sign_in_module, "throttle", SignInThrottle(clock=clock))
    yield clock


def test_pages_need_a_session(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        for path in (
            "/ops",
            "/ops/deliveries?status=failed",
            "/ops/subscribers",
            "/ops/events",
            "/ops/archive",
        ):
            response = client.get(path)
            assert response.status_code == 303, path
            location = response.headers["location"]
            assert location.startswith("/ops/sign-in?next=")
            assert httpx.URL(location).params["next"] == path
        # The admin API's bearer token is not a console session.
        assert client.get("/ops", headers=relay_server.admin).status_code == 303
        for action in ("/ops/deliveries/replay", "/ops/archive/evt_x/retry"):
            refused = client.post(action, data={"ids": "dlv_x"})
            assert refused.status_code == 403
            assert "sign in again" in refused.text


def test_sign_in_sets_a_strict_http_only_cookie_without_the_token(
    relay_server: RelayServer,
) -> None:
    with browser(relay_server) as client:
        answer = sign_in(client, next_path="/ops/subscribers")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ops/subscribers"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{sessions.COOKIE}=")
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/ops"} <= attributes
        assert "secure" not in attributes  # the public URL is http here
        value = cookie.split(";", 1)[0].split("=", 1)[1]
        payload = value.split(".", 1)[0]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        assert ADMIN_TOKEN.encode() not in decoded
        assert ADMIN_TOKEN not in value
        overview = client.get("/ops")
        assert overview.status_code == 200
        assert "Overview" in overview.text
        # Signing out ends it.
        out = client.post("/ops/sign-out", data={"csrf": csrf_of(overview.text)})
        assert out.status_code == 303
        assert client.get("/ops").status_code == 303


def test_secure_cookie_when_public_url_is_https(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(public_url="https://relay.example.com")
    with browser(relay) as client:
        page = client.get("/ops/sign-in")
        attributes = {part.strip().lower() for part in page.headers["set-cookie"].split(";")}
        assert "secure" in attributes  # so a browser never sends it over plain http


def test_wrong_token_and_forged_forms_are_refused(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        wrong = sign_in(client, token="not-the-token")
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text
        # A sign-in without the form's CSRF token (a cross-site POST) is refused.
        forged = client.post("/ops/sign-in", data={"token": ADMIN_TOKEN, "csrf": "guess"})
        assert forged.status_code == 403
        assert sign_in(client).status_code == 303
        page = client.get("/ops/deliveries")
        csrf = csrf_of(page.text)
        assert client.post("/ops/deliveries/replay", data={"ids": "x"}).status_code == 403
        stale = client.post("/ops/deliveries/replay", data={"ids": "x", "csrf": csrf + "x"})
        assert stale.status_code == 403
        other_site = client.post(
            "/ops/deliveries/replay",
            data={"ids": "x", "csrf": csrf},
            headers={"origin": "https://evil.example"},
        )
        assert other_site.status_code == 403
        same_site = client.post(
            "/ops/deliveries/replay",
            data={"ids": "dlv_unknown", "csrf": csrf, "back": "/ops/deliveries"},
            headers={"origin": relay_server.base_url},
        )
        assert same_site.status_code == 303
        assert same_site.headers["location"] == "/ops/deliveries"


def test_failed_sign_ins_are_slowed_down(
    relay_server: RelayServer, throttle_clock: FakeClock
) -> None:
    """After three failures an address must wait (1 s, then 2, 4...), even with the right
    token; a success clears it."""
    with browser(relay_server) as client:
        for _ in range(3):
            assert sign_in(client, token="wrong").status_code == 401
        locked = sign_in(client)
        assert locked.status_code == 429
        assert locked.headers["retry-after"] == "1"
        assert "Too many failed sign-ins" in locked.text
        throttle_clock.advance(0.9)
        assert sign_in(client).status_code == 429  # not yet
        throttle_clock.advance(0.1)
        assert sign_in(client).status_code == 303
        client.cookies.clear()
        assert sign_in(client, token="wrong").status_code == 401  # counting starts over
        assert sign_in(client).status_code == 303


def test_throttle_backs_off_exponentially() -> None:
    clock = FakeClock()
    throttle = SignInThrottle(free=3, longest=10, clock=clock)
    for _ in range(3):
        assert throttle.wait("a") == 0
        throttle.failed("a")
    assert throttle.wait("a") == 1
    throttle.failed("a")
    assert throttle.wait("a") == 2
    clock.advance(0.5)
    assert throttle.wait("a") == 1.5  # counted from the last failure
    for _ in range(10):
        throttle.failed("a")
    assert throttle.wait("a") == 10
    clock.advance(10)
    assert throttle.wait("a") == 0
    throttle.failed("a")  # one more failure after the lockout: locked out again at once
    assert throttle.wait("a") == 10
    assert throttle.wait("b") == 0
    throttle.succeeded("a")
    assert throttle.wait("a") == 0
    small = SignInThrottle(max_tracked=2, clock=clock)
    for address in ("x", "y", "z"):
        small.failed(address)
    assert "x" not in small._failures and len(small._failures) == 2


def test_session_does_not_survive_a_new_admin_token(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        sign_in(client)
        cookie = client.cookies[sessions.COOKIE]
    request = httpx.Request(
        "GET", "http://x/ops", headers={"cookie": f"{sessions.COOKIE}={cookie}"}
    )
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/ops",
        "headers": [(b"cookie", request.headers["cookie"].encode())],
    }
    settings = relay_server.relay.settings
    assert sessions.load(Request(scope), settings, system_clock) is not None
    rotated = settings.with_changes(admin_token=Secret("another-token"))
    assert sessions.load(Request(scope), rotated, system_clock) is None


def test_no_open_redirect_after_sign_in(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        for target in ("https://evil.example/", "//evil.example", "/v1/events", "/ops\\@x"):
            answer = sign_in(client, next_path=target)
            assert answer.headers["location"] == "/ops", target
            client.cookies.clear()


def test_every_page_renders_with_security_headers(relay_server: RelayServer) -> None:
    subscriber = relay_server.add_subscriber("http://127.0.0.1:9/hook")
    url = relay_server.mint(metadata={"user": "u-1"})
    event_id = relay_server.post_callback(url, evolink("t-pages")).json()["event_id"]
    (delivery,) = relay_server.wait_deliveries(1, "pending")
    with browser(relay_server) as client:
        sign_in(client)
        pages = {
            "/ops": "Failed deliveries",
            "/ops/deliveries": "Failed deliveries",
            "/ops/deliveries?status=any&provider=evolink&since=1h": delivery["id"],
            f"/ops/deliveries/{delivery['id']}": subscriber["id"],
            "/ops/events": event_id,
            f"/ops/events?q={event_id}": "",
            "/ops/events?q=t-pages": event_id,
            f"/ops/events/{event_id}": "t-pages",
            "/ops/subscribers": subscriber["id"],
            "/ops/watches": "No suspect callbacks.",
            "/ops/archive": "No failed archive job waits for you.",
        }
        for path, expected in pages.items():
            response = client.get(path, follow_redirects=True)
            assert response.status_code == 200, (path, response.text[:500])
            assert expected in response.text, path
            headers = response.headers
            assert headers["cache-control"] == "no-store"
            assert "default-src 'none'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
        event_page = client.get(f"/ops/events/{event_id}").text
        assert "u-1" in event_page  # metadata
        assert "&#34;status&#34;: &#34;completed&#34;" in event_page  # the raw payload
        # Bad filters are explained, not a 500.
        bad = client.get("/ops/deliveries?since=yesterday-ish")
        assert bad.status_code == 400 and "since must be" in bad.text
        assert client.get("/ops/deliveries?provider=acme").status_code == 400
        assert client.get("/ops/events?status=nope").status_code == 400
        assert client.get("/ops/events/evt_nope").status_code == 404
        assert client.get("/ops/deliveries/dlv_nope").status_code == 404


def test_subscriber_actions(relay_server: RelayServer) -> None:
    subscriber = relay_server.add_subscriber("http://127.0.0.1:9/hook")
    sub_id = subscriber["id"]
    with browser(relay_server) as client:
        sign_in(client)
        csrf = csrf_of(client.get("/ops/subscribers").text)

        def state() -> dict[str, object]:
            answer = relay_server.client.get(
                f"/v1/subscribers/{sub_id}", headers=relay_server.admin
            )
            return answer.json()  # type: ignore[no-any-return]

        done = client.post(f"/ops/subscribers/{sub_id}", data={"csrf": csrf, "action": "disable"})
        assert done.status_code == 303
        assert state()["enabled"] is False
        notice = client.get(done.headers["location"])
        assert f"{sub_id}: disabled." in notice.text
        assert f"{sub_id}: disabled." not in client.get("/ops/subscribers").text  # shown once
        client.post(f"/ops/subscribers/{sub_id}", data={"csrf": csrf, "action": "enable"})
        assert state()["enabled"] is True
        client.post(
            f"/ops/subscribers/{sub_id}",
            data={
                "csrf": csrf,
                "action": "filters",
                "providers": ["apiframe"],
                "event_types": ["generation.succeeded", "generation.failed"],
            },
        )
        assert state()["providers"] == ["apiframe"]
        assert state()["event_types"] == ["generation.succeeded", "generation.failed"]
        client.post(f"/ops/subscribers/{sub_id}", data={"csrf": csrf, "action": "filters"})
        assert (state()["providers"], state()["event_types"]) == (None, None)
        rotated = client.post(f"/ops/subscribers/{sub_id}/rotate-secret", data={"csrf": csrf})
        assert rotated.status_code == 200
        assert rotated.headers["cache-control"] == "no-store"
        secret = re.search(r'id="secret">(whsec_[^<]+)<', rotated.text)
        assert secret and secret.group(1) != subscriber["secret"]
        added = client.post(
            "/ops/subscribers",
            data={"csrf": csrf, "url": "http://127.0.0.1:9/other", "providers": "evolink"},
        )
        assert added.status_code == 200 and "whsec_" in added.text
        refused = client.post(
            "/ops/subscribers", data={"csrf": csrf, "url": "ftp://x", "back": "/ops/subscribers"}
        )
        assert refused.status_code == 303
        assert "notice error" in client.get(refused.headers["location"]).text


def test_pages_explain_a_store_that_cannot_answer(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        sign_in(client)
        relay_server.in_loop(relay_server.relay.store.close())
        page = client.get("/ops")
        assert page.status_code == 503
        assert "The store is not open." in page.text
        assert page.headers["content-type"].startswith("text/html")


def test_times_on_a_page_are_seen_from_the_relays_clock() -> None:
    from service.ops.rendering import when

    clock = FakeClock(1_795_230_000.0)  # 2026-11-21 03:00:00 UTC
    assert when(clock.now - 75, clock.now) == "2026-11-21 02:58:45 UTC (1 min 15 s ago)"
    assert when("2026-11-21T05:00:00Z", clock.now) == "2026-11-21 05:00:00 UTC (in 2 h 0 min)"
    assert when(None, clock.now) == when("", clock.now) == "-"
    assert when("not a time", clock.now) == "not a time"


def test_the_deliveries_time_filter() -> None:
    from service.errors import InvalidInput
    from service.ops.deliveries import time_filter

    clock = FakeClock()
    assert time_filter("2h", "since", clock) == clock.now - 7200
    assert time_filter(" 30 m ", "since", clock) == clock.now - 1800
    assert time_filter("", "since", clock) is None
    assert time_filter("2026-11-21T03:00", "since", clock) == 1_795_230_000.0  # datetime-local
    assert time_filter("2026-11-21T03:00:00Z", "since", clock) == 1_795_230_000.0
    assert time_filter("90", "since", clock) == 90.0  # a bare number is Unix seconds here
    with pytest.raises(InvalidInput) as refused:
        time_filter("yesterday", "since", clock)
    # The error names every format that works, the one the placeholder shows first.
    assert refused.value.message == (
        "since must be a duration ago (30m, 2h, 7d), a UTC time (2026-11-21T03:00), an RFC"
        " 3339 time (2026-11-21T03:00:00Z) or Unix seconds; got 'yesterday'."
    )
    with pytest.raises(InvalidInput, match=r"got '9{40}\.\.\.'"):
        time_filter("9" * 5000, "since", clock)  # echoed cut short


def test_failed_deliveries_name_their_subscriber_and_say_what_retries_after_a_replay(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """One line per delivery with the subscriber's description and URL, its attempts folded;
    after "Replay all shown" the page lists what is retrying now, not "nothing waits"."""
    from tests.subscriber_server import SubscriberServer

    relay = relay_factory(retry_delays=())  # one attempt per cycle
    slow = {"value": False}
    # 503 at once; after the replay, 503 after 4 s: the replayed delivery is in flight.
    sink = SubscriberServer(script=lambda n: (503, 4.0 if slow["value"] else 0.0)).start()
    try:
        subscriber = relay.add_subscriber(sink.url, description="billing service")
        relay.post_callback(relay.mint(reusable=True), evolink("t-replay"))
        (failed,) = relay.wait_deliveries(1, "failed")
        with browser(relay) as client:
            sign_in(client)
            page = client.get("/ops/deliveries").text
            assert "billing service" in page and sink.url in page and subscriber["id"] in page
            assert '<details class="expand"><summary>1 attempt</summary></details>' in page
            assert "<details open" not in page  # attempts folded: one line per delivery
            assert 'class="attempts-of"' in page  # ...and unfolded on demand
            assert "Retrying now" not in page

            slow["value"] = True
            ids = re.findall(r'name="ids" value="([^"]+)"', page)
            assert ids == [failed["id"]]
            replayed = client.post(
                "/ops/deliveries/replay",
                data={"csrf": csrf_of(page), "back": "/ops/deliveries", "ids": ids},
            )
            assert replayed.headers["location"] == "/ops/deliveries"
            page = client.get("/ops/deliveries").text
            assert "Replayed 1 of 1 shown. They are retrying now" in page
            assert "no failed delivery waits for you" not in page
            assert "Nothing failed matches: 1 retrying now, below." in page
            retrying = page.split('<h2 id="retrying">', 1)[1]
            assert retrying.startswith("Retrying now (1)")
            assert failed["id"] in retrying and "billing service" in retrying

            relay.wait_deliveries(1, "failed", timeout=30)  # failing again, listed again
            page = client.get("/ops/deliveries").text
            assert "2 attempts" in page and "Retrying now" not in page

            gone = relay.client.delete(f"/v1/subscribers/{subscriber['id']}", headers=relay.admin)
            assert gone.status_code == 204, gone.text
            page = client.get("/ops/deliveries").text
            assert failed["id"] in page and "(deleted)" in page and "billing service" not in page
    finally:
        sink.stop()
