"""The ops console in a real browser: sign in, find a failed delivery, replay it, see it arrive.

Drives Debian's Chromium (``/usr/bin/chromium``; ``make test`` installs it when it runs as
root) through Playwright, which never downloads a browser of its own here. Without Chromium
the test is skipped with the reason, or fails when ``CI`` is set. Screenshots of every page,
at a desktop's width and a phone's (420 px), go to ``tests/artifacts/`` (git-ignored) for a
person to look at.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.subscriber_server import SubscriberServer

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = (
        f"Debian's Chromium is not installed ({CHROMIUM}); `make test` installs it when run as"
        " root (apt-get install chromium)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def page() -> Iterator[Any]:
    """A Chromium page on a fresh profile; console errors (a CSP refusal...) fail the test."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="relay-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            tab = context.new_page()
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
        finally:
            context.close()
    # 401/403 answers the test provokes are logged as failed resources; nothing else may be.
    assert [e for e in errors if "status of 40" not in e] == []


def shot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"ops-{name}.png"), full_page=True)


@pytest.fixture
def sinks() -> Iterator[Callable[..., SubscriberServer]]:
    started: list[SubscriberServer] = []

    def start(**kwargs: Any) -> SubscriberServer:
        server = SubscriberServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_sign_in_find_a_failed_delivery_replay_it(
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
    page: Any,
) -> None:
    from playwright.sync_api import expect

    relay = relay_factory(retry_delays=(0.2, 0.2))
    reply = {"value": (503, 0.0)}  # (status, seconds before answering)
    flaky = sinks(script=lambda n: reply["value"])
    steady = sinks()
    ids = {}
    for sink, description in ((flaky, "billing service"), (steady, "media indexer")):
        answer = relay.add_subscriber(sink.url, description=description)
        sink.secrets.append(answer["secret"])
        ids[description] = answer["id"]
    url = relay.mint(metadata={"user_id": "u-42"}, reusable=True)
    first = relay.post_callback(url, evolink("task-video-1")).json()["event_id"]
    relay.post_callback(url, evolink("task-video-2", "processing", 40))
    relay.post_callback(url, evolink("task-video-2", "processing", 40))  # duplicate
    relay.post_callback(url + "tampered", evolink("task-video-3"))  # refused
    failed = relay.wait_deliveries(2, "failed", subscriber_id=ids["billing service"])
    steady.wait_for(2)
    (target,) = [d for d in failed if d["event_id"] == first]

    base = relay.base_url
    tab = page
    tab.goto(f"{base}/ops")
    expect(tab).to_have_url(f"{base}/ops/sign-in?next=%2Fops")
    shot(tab, "1-sign-in")
    tab.fill("#token", "not the token")
    tab.click("button:has-text('Sign in')")
    expect(tab.get_by_role("alert")).to_contain_text("not the admin token")
    tab.fill("#token", ADMIN_TOKEN)
    tab.click("button:has-text('Sign in')")
    expect(tab).to_have_url(f"{base}/ops")
    expect(tab.locator("h1")).to_have_text("Overview")
    expect(tab.locator(".stat").first).to_contain_text("2")  # two failed deliveries
    shot(tab, "2-overview")

    tab.click("nav >> text=Deliveries")
    expect(tab.locator("h1")).to_have_text("Failed deliveries")
    row = tab.locator("tr.line", has=tab.locator(f"a:has-text('{target['id']}')"))
    expect(row).to_contain_text("HTTP 503")
    expect(row).to_contain_text("billing service")  # the subscriber's description
    expect(row).to_contain_text(flaky.url)  # ...and URL, not only its id
    attempts = row.locator("xpath=following-sibling::tr[1]")  # the row its attempts open in
    expect(attempts).to_have_class("attempts-of")
    expect(attempts).to_be_hidden()  # one line per delivery: its attempts folded
    row.locator("details.expand summary").click()
    expect(attempts).to_be_visible()
    expect(attempts).to_contain_text("answer")  # response excerpt
    shot(tab, "3-failed-deliveries")

    tab.fill("input[name=since]", "yesterday")
    tab.click("button:has-text('Filter')")
    expect(tab.get_by_role("alert")).to_contain_text(
        "since must be a duration ago (30m, 2h, 7d), a UTC time (2026-11-21T03:00)"
    )
    tab.fill("input[name=since]", "2h")  # as the placeholder says
    tab.click("button:has-text('Filter')")
    expect(tab).to_have_url(re.compile(r"since=2h"))
    expect(tab.locator("tr.line")).to_have_count(2)

    reply["value"] = (204, 0.0)
    before = len(flaky.receipts)
    tab.click(f"button[aria-label='Replay {target['id']}']")
    expect(tab.get_by_role("status")).to_contain_text(f"Replaying {target['id']}")
    receipts = flaky.wait_for(before + 1)
    assert any(r.event_id == first and r.status == 204 for r in receipts[before:])
    assert not flaky.errors  # signed and a valid CloudEvent, as every delivery
    deadline = time.time() + 30  # ends as soon as it succeeds; generous for a busy machine
    while relay.delivery(target["id"])["status"] != "succeeded":
        assert time.time() < deadline, "the replayed delivery did not succeed"
        time.sleep(0.05)
    tab.goto(f"{base}/ops/deliveries/{target['id']}")
    expect(tab.locator("h1 .badge")).to_have_text("succeeded")
    expect(tab.locator("table.attempts")).to_contain_text("replay")
    shot(tab, "4-delivery-replayed")

    reply["value"] = (204, 3.0)  # the next replay stays in flight for a while
    tab.goto(f"{base}/ops/deliveries")
    tab.click("button:has-text('Replay all shown')")
    expect(tab.get_by_role("status")).to_contain_text("Replayed 1 of 1 shown")
    # Not "nothing waits for you": what was replayed is listed as retrying.
    expect(tab.locator("table.data").first).to_contain_text("1 retrying now, below")
    expect(tab.locator("#retrying")).to_have_text("Retrying now (1)")
    expect(tab.locator("table.data").nth(1)).to_contain_text("billing service")
    shot(tab, "4b-retrying-after-replay")
    relay.wait_deliveries(4, "succeeded")
    tab.goto(f"{base}/ops/deliveries")
    expect(tab.locator("table.data")).to_contain_text("no failed delivery waits for you")

    tab.goto(f"{base}/ops/events/{first}")
    expect(tab.locator("h1")).to_contain_text(first)
    expect(tab.locator("body")).to_contain_text("u-42")
    expect(tab.locator("body")).to_contain_text('"status": "completed"')  # the raw payload
    shot(tab, "5-event")
    tab.click("nav >> text=Events")
    expect(tab.locator("table.data")).to_contain_text("task-video-2")
    shot(tab, "6-events")

    tab.click("nav >> text=Subscribers")
    expect(tab.locator("table.data")).to_contain_text("billing service")
    tab.locator("details summary:has-text('Filters')").first.click()
    shot(tab, "7-subscribers")
    tab.locator("button:has-text('Rotate secret')").first.click()
    expect(tab.locator("#secret")).to_contain_text("whsec_")
    shot(tab, "8-secret-rotated")
    tab.click("nav >> text=Subscribers")
    tab.locator("button:has-text('Disable')").first.click()
    expect(tab.get_by_role("status")).to_contain_text("disabled")
    expect(tab.locator(".badge.off")).to_have_count(1)

    tab.goto(f"{base}/ops")
    shot(tab, "9-overview-after")
    tab.click("button:has-text('Sign out')")
    expect(tab).to_have_url(f"{base}/ops/sign-in")
    tab.goto(f"{base}/ops/subscribers")
    expect(tab.locator("h1")).to_have_text("Sign in")


#: A phone held upright, and a laptop.
PHONE, DESKTOP = {"width": 420, "height": 900}, {"width": 1360, "height": 900}

#: Whether anything on the page is wider than the window: the page itself (a sideways scroll),
#: the header, or a table (a wide one scrolls inside its own box, which must fit).
OVERFLOW = """() => {
  const width = window.innerWidth;
  const wide = [];
  const page = document.documentElement.scrollWidth;
  if (page > width) wide.push("page " + page);
  const bar = document.querySelector("header .bar");
  if (bar.scrollWidth > bar.clientWidth) wide.push("header " + bar.scrollWidth);
  for (const table of document.querySelectorAll("table")) {
    const right = table.getBoundingClientRect().right;
    if (right > width + 0.5) wide.push("table " + table.className + " " + right);
  }
  return wide;
}"""


def test_every_page_fits_a_phone_and_a_desktop(
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
    page: Any,
) -> None:
    """Each console page at 420 px and 1360 px: nothing wider than the window (header, tables,
    the page), with long subscriber URLs, errors and ids on it; a screenshot of each."""
    from playwright.sync_api import expect

    relay = relay_factory(retry_delays=())
    failing = sinks(script=lambda n: (503, 0.0))
    failing.secrets.append(
        relay.add_subscriber(
            failing.url + "?tenant=acme-production-eu-west-1&route=generation-callbacks",
            description="billing service, production (EU west), generation callbacks",
        )["secret"]
    )
    relay.add_subscriber("https://subscriber-that-is-gone.invalid/hooks/generation/completed")
    closed = bound_socket()  # bound, never listening: connections are refused
    closed_port = closed.getsockname()[1]
    relay.add_subscriber(f"http://127.0.0.1:{closed_port}/hook", description="archive mirror")
    url = relay.mint(metadata={"user_id": "u-42", "project": "a-rather-long-project-name"})
    event_id = relay.post_callback(url, evolink("task-video-with-a-long-identifier-1")).json()[
        "event_id"
    ]
    failed = relay.wait_deliveries(3, "failed")
    closed.close()

    base = relay.base_url
    tab = page
    tab.set_viewport_size(PHONE)
    tab.goto(f"{base}/ops")
    assert tab.evaluate(OVERFLOW) == []
    shot(tab, "phone-sign-in")
    tab.fill("#token", ADMIN_TOKEN)
    tab.click("button:has-text('Sign in')")
    expect(tab.locator("h1")).to_have_text("Overview")
    expect(tab.locator(".stat", has_text="Refused · this process")).to_be_visible()
    tab.goto(f"{base}/ops/deliveries")
    # Each failure called what it was, in the words the API and the CLI use.
    expect(tab.locator("table.data")).to_contain_text(
        f"connection refused: 127.0.0.1:{closed_port}"
    )
    expect(tab.locator("table.data")).to_contain_text(
        "DNS lookup failed: subscriber-that-is-gone.invalid"
    )
    expect(tab.locator("table.data")).to_contain_text("HTTP 503")
    pages = {
        "overview": "/ops",
        "failed-deliveries": "/ops/deliveries",
        "all-deliveries": "/ops/deliveries?status=any",
        "delivery": f"/ops/deliveries/{failed[0]['id']}",
        "events": "/ops/events",
        "event": f"/ops/events/{event_id}",
        "subscribers": "/ops/subscribers",
        "suspect-callbacks": "/ops/watches",
        "archive": "/ops/archive",
        "bad-filter": "/ops/deliveries?since=yesterday",
    }
    for viewport, width in ((PHONE, "phone"), (DESKTOP, "desktop")):
        tab.set_viewport_size(viewport)
        for name, path in pages.items():
            tab.goto(f"{base}{path}")
            if name == "failed-deliveries":  # the attempts unfolded are part of the page
                for summary in tab.locator("details.expand summary").all():
                    summary.click()
                expect(tab.locator("tr.attempts-of").first).to_be_visible()
            assert tab.evaluate(OVERFLOW) == [], (width, path)
            shot(tab, f"{width}-{name}")
