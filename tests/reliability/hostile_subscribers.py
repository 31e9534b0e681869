"""Hostile subscribers: what a subscriber can do to the relay by how it answers.

A subscriber that never answers, one that answers one byte a second (from its status line, or
after its head), one that answers with a 1 GiB body, one that redirects to the cloud metadata
address (or to loopback), and one whose DNS name moves to 127.0.0.1 after registration. The
relay must end each attempt within ``RELAY_DELIVERY_TIMEOUT``, keep its memory bounded, send
nothing to a private address, and deliver to a good subscriber registered beside them as fast
as when it is alone.

The hostile subscribers are real servers on loopback (``tests/edge.py``). Linux routes all of
127/8 to ``lo``: the subscribers listen on 127.0.0.2 and up, the relay's
``RELAY_TARGET_ALLOWLIST`` is exactly their /32s, and a canary on 127.0.0.1, which stays
forbidden, counts every connection it receives. The relay is a real ``relay serve`` subprocess
(its own memory, read from ``/proc``), except for DNS rebinding: DNS is the edge we do not own,
and the only honest way to move a name is to answer the relay's lookups ourselves, so that
relay runs in this process with ``socket.getaddrinfo`` answered from a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx

from service.app import create_app
from tests.conftest import (
    ADMIN_TOKEN,
    EVOLINK_COMPLETED,
    ServerThread,
    bound_socket,
    make_settings,
)
from tests.edge import EdgeLoop, HostileServer, TinyServer, fake_dns
from tests.relay_process import ADMIN, RelayProcess
from tests.reliability import Context, Row, free_port
from tests.subscriber_server import SubscriberServer

SECTION = "Hostile subscribers"

#: Forbidden (loopback); the canary listens here.
CANARY = "127.0.0.1"
#: Allowed, one /32 each: the good subscriber, then the hostile ones.
GOOD = "127.0.0.2"
SILENT = "127.0.0.3"
DRIBBLE_HEAD = "127.0.0.4"
DRIBBLE_BODY = "127.0.0.5"
HUGE = "127.0.0.6"
REDIRECT = "127.0.0.7"
#: Where a re-pointed name may legitimately go (the rebinding scenario's control).
MOVED = "127.0.0.8"
#: A public address (example.com's) the names resolve to at registration; never connected to.
PUBLIC = "93.184.216.34"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"

#: Seconds an attempt may outlive the delivery timeout: event-loop turns on a noisy machine.
SLACK = 1.0
#: Longest a good subscriber's delivery may take beside hostile ones (they hang for seconds).
GOOD_MAX_LATENCY = 1.0
#: Largest growth of the relay's peak memory while the hostile subscribers are served.
RSS_GROWTH_MB = 50
#: A 1 GiB answer that got this far into the relay was being read, not dropped.
HUGE_SENT_LIMIT = 64 << 20
#: RELAY_RETRY_DELAYS of the relays under test: the first attempt and three retries.
RETRY_DELAYS = (1.0, 2.0, 4.0)
RETRIES = "/".join(f"{delay:g}" for delay in RETRY_DELAYS) + " s"
#: Callbacks per second while measuring.
RATE = 10.0


class Admin:
    """The relay's HTTP API as an operator's script uses it."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=15
        )

    def close(self) -> None:
        self.client.close()

    def register(self, url: str) -> httpx.Response:
        return self.client.post("/v1/subscribers", json={"url": url})

    def add_subscriber(self, url: str) -> dict[str, Any]:
        """Register ``url`` for every event; the answer carries its id and signing secret."""
        response = self.register(url)
        if response.status_code != 201:
            raise AssertionError(f"registering {url}: {response.status_code} {response.text}")
        answer: dict[str, Any] = response.json()
        return answer

    def mint(self) -> str:
        response = self.client.post(
            "/v1/callback-urls", json={"provider": "evolink", "reusable": True}
        )
        response.raise_for_status()
        return str(response.json()["url"])

    def deliveries(self, **params: Any) -> list[dict[str, Any]]:
        """Every delivery matching ``params``, all pages."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 500, **params}
        while True:
            response = self.client.get("/v1/deliveries", params=query)
            response.raise_for_status()
            page = response.json()
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            query["cursor"] = page["next_cursor"]

    def attempts(self, subscriber_id: str) -> list[list[dict[str, Any]]]:
        """The recorded attempts of each delivery to ``subscriber_id``."""
        found = []
        for delivery in self.deliveries(subscriber_id=subscriber_id):
            response = self.client.get(f"/v1/deliveries/{delivery['id']}")
            response.raise_for_status()
            found.append(response.json()["attempts"])
        return found

    def send(self, callback_url: str, count: int, prefix: str) -> dict[str, float]:
        """Post ``count`` callbacks (one task each) at ``RATE`` per second.

        Returns each event id with the time its 2xx arrived.
        """
        acked: dict[str, float] = {}
        started = time.monotonic()
        for n in range(count):
            delay = started + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            payload = {**EVOLINK_COMPLETED, "id": f"task-{prefix}-{n}"}
            response = self.client.post(callback_url, json=payload)
            response.raise_for_status()
            acked[response.json()["event_id"]] = time.time()
        return acked


def _wait(
    condition: Callable[[], bool], timeout: float, what: str, *, required: bool = True
) -> bool:
    """Poll ``condition``; past ``timeout``, raise (or return False when not ``required``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if not required:
                return False
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return True


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in kB, and its open file descriptors."""
    figures = {"fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


def _latencies(acked: dict[str, float], good: SubscriberServer) -> list[float]:
    """Seconds from each callback's 2xx to the good subscriber's receipt of its event."""
    with good.lock:
        received = {r.event_id: r.at for r in good.receipts if r.status < 300}
    return [received[event_id] - at for event_id, at in acked.items() if event_id in received]


def _ms(seconds: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(seconds) * 1000:.0f} ms" if seconds else "n/a"


def _kind(attempt: dict[str, Any]) -> str:
    """An attempt's outcome in a few words: ``HTTP 503``, ``timed out``, ``not allowed``..."""
    parts = []
    if attempt["status_code"] is not None:
        parts.append(f"HTTP {attempt['status_code']}")
    error = attempt["error"] or ""
    if error.startswith("timed out"):
        parts.append("timed out")
    elif "not allowed" in error:
        parts.append("target not allowed")
    elif error:
        parts.append(error.split(":", 1)[0])
    return ", ".join(parts)


def _span(attempt: dict[str, Any]) -> tuple[float, float]:
    """An attempt's start and end, epoch seconds (``attempted_at`` is to the millisecond)."""
    start = dt.datetime.fromisoformat(attempt["attempted_at"]).timestamp()
    return start, start + attempt["latency_ms"] / 1000


def _peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = open_now = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def _retry_gaps(deliveries: list[list[dict[str, Any]]]) -> list[list[float]]:
    """Per retry (first, second...), the seconds from an attempt's end to the next's start."""
    gaps: list[list[float]] = []
    for attempts in deliveries:
        spans = [_span(a) for a in attempts]
        for index, (previous, following) in enumerate(itertools.pairwise(spans)):
            if len(gaps) <= index:
                gaps.append([])
            gaps[index].append(following[0] - previous[1])
    return gaps


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key or 'none'} x{count}" for key, count in counter.most_common())


@contextlib.contextmanager
def _closing(admin: Admin) -> Iterator[Admin]:
    try:
        yield admin
    finally:
        admin.close()


def _hostile_row(
    scenario: str,
    deliveries: list[list[dict[str, Any]]],
    statuses: Counter[str],
    ctx: Context,
    timeout: float,
    attempts_each: int,
    method: str,
) -> Row:
    """A row for one hostile subscriber from its deliveries' recorded attempts."""
    attempts = [a for d in deliveries for a in d]
    longest = max((a["latency_ms"] for a in attempts), default=0.0) / 1000
    row = Row(
        SECTION,
        scenario,
        {
            "deliveries": len(deliveries),
            "attempts recorded": len(attempts),
            "attempts": _counts(Counter(_kind(a) for a in attempts)),
            "longest attempt": f"{longest:.2f} s (timeout {timeout:g} s)",
        },
        method,
    )
    row.expect(bool(deliveries), "no delivery was made to this subscriber")
    row.expect(all(deliveries), "a delivery has no recorded attempt")
    row.expect(
        longest <= timeout + SLACK,
        f"an attempt took {longest:.2f} s, beyond the {timeout:g} s timeout",
    )
    gaps = _retry_gaps(deliveries)
    if gaps:
        row.figures["retry gaps p50"] = " / ".join(f"{statistics.median(g):.2f}" for g in gaps)
        for index, (delay, found) in enumerate(zip(RETRY_DELAYS, gaps, strict=False)):
            row.expect(
                min(found) >= delay - 0.01,
                f"retry {index + 1} came {min(found):.2f} s after its attempt, not {delay:g} s",
            )
    if ctx.full:
        row.figures["deliveries by status"] = _counts(statuses)
        row.expect(set(statuses) <= {"failed", "succeeded"}, f"still pending: {statuses}")
        if statuses.get("failed") == len(deliveries):
            row.expect(
                all(len(d) == attempts_each for d in deliveries),
                f"a failed delivery does not have {attempts_each} attempts",
            )
    return row


def hostile_subscribers_hang_dribble_flood_redirect(ctx: Context) -> list[Row]:
    """Five hostile subscribers and a good one on one relay process; the good one alone first."""
    timeout = ctx.pick(2.0, 5.0)
    alone_events = ctx.pick(20, 100)
    beside_events = ctx.pick(30, 150)
    attempts_each = len(RETRY_DELAYS) + 1
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        edge = stack.enter_context(EdgeLoop())
        canary = edge.serve(TinyServer(CANARY))
        canary_url = f"http://{CANARY}:{canary.port}/latest/meta-data/"
        hostile: dict[str, TinyServer] = {
            "silent": edge.serve(HostileServer("silent", SILENT)),
            "dribble-head": edge.serve(HostileServer("dribble-head", DRIBBLE_HEAD)),
            "dribble-body": edge.serve(HostileServer("dribble-body", DRIBBLE_BODY)),
            "huge": edge.serve(HostileServer("huge", HUGE, status=500)),
            "to-metadata": edge.serve(TinyServer(REDIRECT, location=METADATA_URL, status=302)),
            "to-canary": edge.serve(TinyServer(REDIRECT, location=canary_url, status=307)),
        }
        good = SubscriberServer(host=GOOD).start()
        stack.callback(good.stop)
        allowlist = ",".join(
            f"{host}/32" for host in (GOOD, SILENT, DRIBBLE_HEAD, DRIBBLE_BODY, HUGE, REDIRECT)
        )
        relay = RelayProcess(
            ctx.scratch("relay"),
            free_port(),
            RELAY_ALLOW_PRIVATE_TARGETS="false",
            RELAY_TARGET_ALLOWLIST=allowlist,
            RELAY_DELIVERY_TIMEOUT=f"{timeout:g}",
            RELAY_RETRY_DELAYS=",".join(f"{d:g}" for d in RETRY_DELAYS),
        ).start()
        stack.callback(relay.stop)
        assert relay.process is not None
        pid = relay.process.pid
        admin = stack.enter_context(_closing(Admin(relay.base, ADMIN)))

        refused = {
            name: admin.register(url).status_code
            for name, url in (("127.0.0.1", canary_url), ("169.254.169.254", METADATA_URL))
        }
        # The good subscriber checks every signature, as a customer's service would.
        good.secrets.append(admin.add_subscriber(good.url)["secret"])
        callback_url = admin.mint()

        alone = admin.send(callback_url, alone_events, "alone")
        _wait(lambda: len(good.receipts) >= alone_events, 30, "the good subscriber, alone")
        before = _proc_status(pid)

        ids = {name: admin.add_subscriber(server.url)["id"] for name, server in hostile.items()}
        phase_started = time.monotonic()
        beside = admin.send(callback_url, beside_events, "beside")
        _wait(
            lambda: len(good.receipts) >= alone_events + beside_events,
            30,
            "the good subscriber, beside the hostile ones",
        )

        def settled() -> bool:
            for subscriber_id in ids.values():
                for delivery in admin.deliveries(subscriber_id=subscriber_id):
                    if ctx.full and delivery["status"] == "pending":
                        return False
                    if delivery["attempt_count"] < 1:
                        return False
            return True

        _wait(settled, ctx.pick(30, 600), "every hostile delivery's attempts")
        settled_after = time.monotonic() - phase_started
        after = _proc_status(pid)
        attempts = {name: admin.attempts(sid) for name, sid in ids.items()}
        statuses = {
            name: Counter(d["status"] for d in admin.deliveries(subscriber_id=sid))
            for name, sid in ids.items()
        }
        held = edge.call(
            lambda: {
                name: list(server.held)
                for name, server in hostile.items()
                if isinstance(server, HostileServer)
            }
        )
        huge = hostile["huge"]
        assert isinstance(huge, HostileServer)
        huge_sent, huge_sent_max = edge.call(lambda: (huge.sent, huge.sent_max))
        canary_connections = edge.call(lambda: canary.connections)

    def row(name: str, scenario: str, method: str) -> Row:
        made = _hostile_row(
            scenario, attempts[name], statuses[name], ctx, timeout, attempts_each, method
        )
        if name in held:
            longest_held = max(held[name], default=0.0)
            made.figures["longest connection (subscriber's view)"] = f"{longest_held:.2f} s"
            made.method += " Connection time: from the server's accept to the relay hanging up."
            made.expect(
                longest_held <= timeout + SLACK,
                f"the relay held a connection {longest_held:.2f} s",
            )
        return made

    common = (
        f"{beside_events} callbacks at {RATE:g}/s, each delivered to every subscriber by a "
        f"`relay serve` subprocess (RELAY_DELIVERY_TIMEOUT={timeout:g}, retries {RETRIES}, "
        "target allowlist = the subscribers' own 127.0.0.x/32s); attempt durations from "
        "`GET /v1/deliveries/{id}`"
        + (", after every delivery ended" if ctx.full else " (short form: first attempts)")
    )
    rows.append(
        row(
            "silent",
            "never answers",
            f"A server on {SILENT} that reads the request and never writes; {common}.",
        )
    )
    rows.append(
        row(
            "dribble-head",
            "answers one byte a second (status line first)",
            f"A server on {DRIBBLE_HEAD} writing `HTTP/1.1 200 OK...` one byte per second; "
            f"{common}.",
        )
    )
    rows.append(
        row(
            "dribble-body",
            "answers one byte a second (body after the head)",
            f"A server on {DRIBBLE_BODY} sending a 503 head at once, then its 3,600-byte body "
            f"one byte per second; {common}.",
        )
    )
    flood = row(
        "huge",
        "answers with a 1 GiB body",
        f"A server on {HUGE} answering 500 with Content-Length 1 GiB of zeros, streamed "
        f"as fast as read (generated, never allocated); {common}; relay memory from "
        "/proc/<pid>/status (VmRSS before the hostile phase, VmHWM peak after).",
    )
    growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    flood.figures.update(
        {
            "written before the relay hung up, one connection max": (
                f"{huge_sent_max / 2**20:.1f} MiB"
            ),
            "bytes written in all": f"{huge_sent / 2**20:.1f} MiB",
            "relay RSS before / after / peak": (
                f"{before['VmRSS'] / 1024:.0f} / {after['VmRSS'] / 1024:.0f} / "
                f"{after['VmHWM'] / 1024:.0f} MB"
            ),
            "peak growth": f"{growth_mb:.1f} MB",
            "open fds before / after": f"{before['fds']} / {after['fds']}",
        }
    )
    flood.expect(
        huge_sent_max < HUGE_SENT_LIMIT,
        f"the relay read {huge_sent_max / 2**20:.0f} MiB of one answer",
    )
    flood.expect(growth_mb < RSS_GROWTH_MB, f"relay memory grew {growth_mb:.0f} MB")
    if ctx.full:  # every attempt has ended: every hostile connection must be closed
        flood.expect(
            after["fds"] <= before["fds"] + 10,
            f"the relay kept {after['fds'] - before['fds']} more descriptors open",
        )
    rows.append(flood)
    for name, scenario, target in (
        ("to-metadata", "302 redirect to 169.254.169.254", METADATA_URL),
        ("to-canary", "307 redirect to 127.0.0.1", canary_url),
    ):
        redirect = row(
            name,
            scenario,
            f"A server on {REDIRECT} answering every POST with Location: {target}; {common}; "
            "a canary on 127.0.0.1 counts connections; direct registration of 127.0.0.1 and "
            "169.254.169.254 tried first.",
        )
        redirect.figures.update(
            {
                "canary connections": canary_connections,
                "registering 127.0.0.1 / 169.254.169.254": (
                    f"HTTP {refused['127.0.0.1']} / {refused['169.254.169.254']}"
                ),
            }
        )
        redirect.expect(canary_connections == 0, "a request reached the canary on 127.0.0.1")
        redirect.expect(
            all(
                a["status_code"] in (302, 307) and not a["error"] for d in attempts[name] for a in d
            ),
            "a redirect was followed (the attempt did not end with the 3xx)",
        )
        redirect.expect(
            set(refused.values()) == {422}, f"a private target was registered: {refused}"
        )
        rows.append(redirect)

    hostile_spans = [
        _span(a)
        for name in ("silent", "dribble-head", "dribble-body")
        for d in attempts[name]
        for a in d
    ]
    alone_latency = _latencies(alone, good)
    beside_latency = _latencies(beside, good)
    rows.append(
        good_row := Row(
            SECTION,
            "a good subscriber beside them",
            {
                "events alone / beside": f"{len(alone_latency)} / {len(beside_latency)}",
                "2xx to receipt alone, p50 / max": (
                    f"{_ms(alone_latency, statistics.median)} / {_ms(alone_latency, max)}"
                ),
                "beside the hostile ones, p50 / max": (
                    f"{_ms(beside_latency, statistics.median)} / {_ms(beside_latency, max)}"
                ),
                "hanging hostile attempts in flight, peak": _peak_overlap(hostile_spans),
                "hostile phase until every hostile delivery "
                + ("ended" if ctx.full else "had an attempt"): f"{settled_after:.1f} s",
            },
            f"A verifying subscriber on {GOOD} registered first: {alone_events} callbacks at "
            f"{RATE:g}/s with it alone, then {beside_events} more at {RATE:g}/s with the six "
            "hostile subscribers above registered; latency from the callback's 2xx at the "
            "client to the subscriber's receipt, same clock.",
        )
    )
    good_row.expect(len(beside_latency) == beside_events, "the good subscriber missed events")
    good_row.expect(not good.errors, f"the good subscriber saw bad deliveries: {good.errors}")
    good_row.expect(
        bool(beside_latency) and max(beside_latency) <= GOOD_MAX_LATENCY,
        f"a good delivery took over {GOOD_MAX_LATENCY:g} s beside the hostile subscribers",
    )
    return rows


def _in_process_relay(
    stack: contextlib.ExitStack, work: Path, timeout: float, *allowed: str
) -> Admin:
    """A relay under uvicorn in this process (so its lookups go through ``fake_dns``)."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = make_settings(
        work,
        port,
        allow_private_targets=False,
        target_allowlist=tuple(ip_network(f"{host}/32") for host in allowed),
        delivery_timeout=timeout,
        retry_delays=RETRY_DELAYS,
    )
    server = ServerThread(create_app(settings), sock).start()
    stack.callback(server.stop)
    return stack.enter_context(_closing(Admin(f"http://127.0.0.1:{port}", ADMIN_TOKEN)))


def hostile_subscribers_dns_never_answers(ctx: Context) -> list[Row]:
    """Subscribers whose DNS never answers, beside a good subscriber known by name."""
    timeout = ctx.pick(2.0, 5.0)
    events = ctx.pick(10, 50)
    # More than the largest shared executor asyncio makes (32 threads): each hung lookup
    # holds a thread until its resolver gives up, which no delivery timeout can shorten.
    hung_names = 36
    release = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.callback(release.set)  # let the hung lookups' threads end
        dns = stack.enter_context(fake_dns(fallback=True))
        good = SubscriberServer(host=GOOD).start()
        stack.callback(good.stop)
        names = [f"mute{n}.hostile.test" for n in range(hung_names)]
        for name in [*names, "good.hostile.test"]:
            dns[name] = [PUBLIC]
        admin = _in_process_relay(stack, ctx.scratch("mute-dns"), timeout, GOOD, MOVED)
        mute_ids = [admin.add_subscriber(f"http://{name}:9/hook")["id"] for name in names]
        good.secrets.append(
            admin.add_subscriber(f"http://good.hostile.test:{good.thread.port}/hook")["secret"]
        )

        def hang() -> list[str]:
            release.wait(120)
            return [MOVED]

        for name in names:
            dns[name] = hang
        dns["good.hostile.test"] = [GOOD]
        acked = admin.send(admin.mint(), events, "mute-dns")
        # Not fatal: a late good subscriber is what the row reports.
        _wait(lambda: len(good.receipts) >= events, 15, "the good subscriber", required=False)

        def attempted() -> bool:
            return all(
                d["attempt_count"] >= 1
                for sid in mute_ids[:3]
                for d in admin.deliveries(subscriber_id=sid)
            )

        _wait(attempted, 30, "the mute subscribers' first attempts")
        attempts = [d for sid in mute_ids[:3] for d in admin.attempts(sid)]
        hung = sum(1 for t in threading.enumerate() if t.name == "relay-dns")
        latency = _latencies(acked, good)

    row = _hostile_row(
        "DNS that never answers (36 names) beside a good subscriber",
        attempts,
        Counter(),
        dataclasses.replace(ctx, full=False),
        timeout,
        len(RETRY_DELAYS) + 1,
        f"An in-process relay (RELAY_DELIVERY_TIMEOUT={timeout:g}) with socket.getaddrinfo "
        f"answered from a table: {hung_names} subscribers whose names' lookups hang (until the "
        f"scenario ends) and a verifying subscriber whose name resolves to {GOOD}; {events} "
        f"callbacks at {RATE:g}/s; attempts of 3 of the mute subscribers from the admin API; "
        "latency from the callback's 2xx to the good subscriber's receipt.",
    )
    row.figures.update(
        {
            "lookups hanging at the end": hung,
            "good subscriber, 2xx to receipt p50 / max": (
                f"{_ms(latency, statistics.median)} / {_ms(latency, max)}"
            ),
        }
    )
    row.expect(len(latency) == events, "the good subscriber missed events")
    row.expect(
        bool(latency) and max(latency) <= GOOD_MAX_LATENCY,
        f"a good delivery took over {GOOD_MAX_LATENCY:g} s beside subscribers whose DNS hangs",
    )
    return [row]


def hostile_subscribers_dns_rebinding(ctx: Context) -> list[Row]:
    """A name that resolves to a public address at registration and to 127.0.0.1 after."""
    timeout = ctx.pick(2.0, 5.0)
    events = ctx.pick(3, 10)
    rebinding = "rebind.hostile.test"
    control = "moved.hostile.test"
    with contextlib.ExitStack() as stack:
        edge = stack.enter_context(EdgeLoop())
        canary = edge.serve(TinyServer(CANARY))
        moved = edge.serve(TinyServer(MOVED))
        dns = stack.enter_context(fake_dns(fallback=True))
        dns[rebinding] = [PUBLIC]
        dns[control] = [PUBLIC]
        admin = _in_process_relay(stack, ctx.scratch("rebinding"), timeout, MOVED)
        rebinding_id = admin.add_subscriber(f"http://{rebinding}:{canary.port}/hook")["id"]
        admin.add_subscriber(f"http://{control}:{moved.port}/hook")
        # Registration looked both names up and saw a public address: now they move.
        asked_at_registration = len(dns.lookups)
        dns[rebinding] = [CANARY]
        dns[control] = [MOVED]
        admin.send(admin.mint(), events, "rebinding")

        def settled() -> bool:
            found = admin.deliveries(subscriber_id=rebinding_id)
            done = all(
                d["status"] != "pending" if ctx.full else d["attempt_count"] >= 1 for d in found
            )
            return len(found) == events and done and edge.call(lambda: moved.connections) >= events

        _wait(settled, ctx.pick(20, 60), "the rebinding deliveries")
        attempts = admin.attempts(rebinding_id)
        statuses = Counter(d["status"] for d in admin.deliveries(subscriber_id=rebinding_id))
        asked_at_delivery = dns.lookups[asked_at_registration:].count(rebinding)
        canary_connections = edge.call(lambda: canary.connections)
        control_connections = edge.call(lambda: moved.connections)

    row = _hostile_row(
        "DNS rebinding to 127.0.0.1 after registration",
        attempts,
        statuses,
        ctx,
        timeout,
        len(RETRY_DELAYS) + 1,
        f"An in-process relay (create_app under uvicorn, RELAY_DELIVERY_TIMEOUT={timeout:g}, "
        f"allowlist {MOVED}/32 only) with socket.getaddrinfo answered from a table: "
        f"{rebinding} and {control} resolve to {PUBLIC} when registered, then to 127.0.0.1 "
        f"(a canary counting connections) and to the allowlisted {MOVED} (the control, "
        f"proving delivery-time lookups go through the table); {events} callbacks.",
    )
    row.figures.update(
        {
            "lookups of the name at delivery": asked_at_delivery,
            "canary connections": canary_connections,
            f"control ({control} to {MOVED}) connections": f"{control_connections} / {events}",
        }
    )
    row.expect(canary_connections == 0, "a request reached the canary on 127.0.0.1")
    row.expect(asked_at_delivery >= 1, "the relay did not look the name up at delivery")
    row.expect(
        all("not allowed" in (a["error"] or "") for d in attempts for a in d),
        "an attempt to the rebound name did not end as target not allowed",
    )
    row.expect(control_connections >= events, "the control subscriber missed deliveries")
    return [row]


SCENARIOS = [
    hostile_subscribers_hang_dribble_flood_redirect,
    hostile_subscribers_dns_rebinding,
    hostile_subscribers_dns_never_answers,
]
