"""What the crash and outage scenarios share: relays as processes, subscribers, providers.

``Providers`` plays Evolink, Apiframe v2 (HMAC-signed) and Apiframe v1 (static secret) the way
they post to a relay; ``Load`` keeps them posting from a background thread and, like the
providers, retries every callback that got no 2xx until it does. The relay under test is always
a real ``relay serve`` process (``tests.relay_process.RelayProcess``).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.datastructures import Secret

from service.settings import Settings
from service.simulate import build_callback
from tests.relay_process import RelayProcess
from tests.reliability import free_port
from tests.subscriber_server import SubscriberServer

APIFRAME_API_KEY = "reliability-apiframe-key"
APIFRAME_V1_SECRET = "reliability-apiframe-v1-secret"
#: Both Apiframe checks on: v2 callbacks must carry a valid signature, v1 ones the secret.
PROVIDER_ENV = {
    "RELAY_APIFRAME_API_KEY": APIFRAME_API_KEY,
    "RELAY_APIFRAME_WEBHOOK_SECRET": APIFRAME_V1_SECRET,
}


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def start_relay(work: Path, database_url: str, **env: str) -> RelayProcess:
    """A ``relay serve`` process on a free port, with the providers' secrets configured."""
    settings = {
        "RELAY_DATABASE_URL": database_url,
        # Short attempts keep a dead replica's leases (3 x timeout + 10 s) short.
        "RELAY_DELIVERY_TIMEOUT": "1",
        **PROVIDER_ENV,
        **env,
    }
    return RelayProcess(work, free_port(), **settings).start()


def subscribe(relay: RelayProcess, sink: SubscriberServer) -> None:
    """Register ``sink`` for every event; it verifies signatures with the secret it gets."""
    answer = httpx.post(
        f"{relay.base}/v1/subscribers", json={"url": sink.url}, headers=relay.admin, timeout=10
    )
    answer.raise_for_status()
    sink.secrets.append(answer.json()["secret"])


def mint_paths(relay: RelayProcess) -> dict[str, str]:
    """A callback URL path per provider, minted through the admin API (``/callbacks/...``)."""
    paths = {}
    for provider in ("evolink", "apiframe"):
        answer = httpx.post(
            f"{relay.base}/v1/callback-urls",
            json={"provider": provider, "metadata": {"suite": "reliability"}, "reusable": True},
            headers=relay.admin,
            timeout=10,
        )
        answer.raise_for_status()
        paths[provider] = answer.json()["url"][len(relay.base) :]
    return paths


def stored_events(relay: RelayProcess) -> dict[str, str]:
    """Every stored event: event id -> task id (subject), read page by page."""
    events: dict[str, str] = {}
    params: dict[str, Any] = {"limit": 500}
    with httpx.Client(timeout=30) as client:
        while True:
            page = client.get(f"{relay.base}/v1/events", params=params, headers=relay.admin)
            page.raise_for_status()
            body = page.json()
            events.update({item["id"]: item["subject"] for item in body["items"]})
            if body["next_cursor"] is None:
                return events
            params["cursor"] = body["next_cursor"]


def readyz(base: str) -> tuple[int, str]:
    """``/readyz``'s status and, when not ready, the reason it gives (its message)."""
    try:
        answer = httpx.get(f"{base}/readyz", timeout=10)
    except httpx.TransportError as exc:
        return 0, f"no answer: {exc!r}"
    if answer.status_code == 200:
        return 200, "ready"
    return answer.status_code, str(answer.json().get("error", {}).get("message", answer.text))


@dataclass(frozen=True)
class Callback:
    """One provider callback: which URL it goes to, its body and headers (signed)."""

    key: str
    provider: str
    task_id: str
    body: bytes
    headers: dict[str, str]


class Providers:
    """Evolink, Apiframe v2 and Apiframe v1 callbacks in turn, each task its own."""

    KINDS = ("evolink", "apiframe-v2", "apiframe-v1")
    STATUSES = ("completed", "failed", "processing")

    def __init__(self, pad: int = 0) -> None:
        self.settings = Settings(apiframe_api_key=Secret(APIFRAME_API_KEY))
        self.run = uuid.uuid4().hex[:8]
        self.pad = pad
        self.count = 0

    def next(self) -> Callback:
        n = self.count
        self.count += 1
        kind = self.KINDS[n % 3]
        status = self.STATUSES[(n // 3) % 3]
        if kind == "apiframe-v1":
            # v1 documents `processing` (percentage as a string) and `finished`.
            task_id = f"{self.run}-v1-{n:07d}"
            payload: dict[str, Any] = {"task_id": task_id, "task_type": "imagine"}
            if status == "processing":
                payload.update(status="processing", percentage="40")
            else:
                payload.update(
                    status="finished",
                    percentage=100,
                    image_urls=[f"https://cdn.example.com/{task_id}/{i}.png" for i in range(4)],
                )
            body = self._body(payload)
            headers = {"content-type": "application/json", "x-webhook-secret": APIFRAME_V1_SECRET}
            return Callback(f"{n}", "apiframe", task_id, body, headers)
        provider = "evolink" if kind == "evolink" else "apiframe"
        task_id = (
            f"task-unified-{self.run}-{n:07d}" if kind == "evolink" else f"{self.run}-v2-{n:07d}"
        )
        simulated = build_callback(provider, status, task_id, self.settings)
        body = self._body(simulated.payload)
        return Callback(f"{n}", provider, task_id, body, simulated.headers(body))

    def _body(self, payload: dict[str, Any]) -> bytes:
        if self.pad:
            payload = {**payload, "padding": "x" * self.pad}
        return orjson.dumps(payload)


@dataclass
class Load:
    """Providers posting to relays from a thread; whatever gets no 2xx is retried later.

    ``bases`` are the relays' base URLs (the load is spread across them, a retry goes to the
    next one); ``paths`` the minted URL path per provider. ``acked`` maps each callback to the
    event id of its 2xx answer (a retry of a callback whose answer was lost to a kill may be
    answered as a duplicate: it carries the same event id).
    """

    bases: list[str]
    paths: dict[str, str]
    concurrency: int = 4
    #: Seconds between a failed attempt and its retry.
    retry_after: float = 0.2
    providers: Providers = field(default_factory=Providers)
    acked: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    #: Attempts that got no answer (connection refused or reset) or a non-2xx status.
    unanswered: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    generating: bool = True
    _retry: collections.deque[tuple[float, int, Callback]] = field(
        default_factory=collections.deque
    )
    _thread: threading.Thread | None = None
    _sent: int = 0

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def finish(self, timeout: float) -> bool:
        """Stop making new callbacks; wait until every one made was answered 2xx."""
        self.generating = False
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def made(self) -> int:
        return self.providers.count

    def _next(self) -> tuple[int, Callback] | None:
        now = time.monotonic()
        if self._retry and self._retry[0][0] <= now:
            _, base, callback = self._retry.popleft()
            return base, callback
        if self.generating:
            self._sent += 1
            return self._sent % len(self.bases), self.providers.next()
        return None

    async def _sender(self, client: httpx.AsyncClient) -> None:
        while True:
            picked = self._next()
            if picked is None:
                if not self._retry and not self.generating:
                    return
                await asyncio.sleep(0.05)
                continue
            base, callback = picked
            url = self.bases[base] + self.paths[callback.provider]
            try:
                answer = await client.post(url, content=callback.body, headers=callback.headers)
            except httpx.TransportError:
                status = 0
            else:
                status = answer.status_code
            self.statuses[status] += 1
            if 200 <= status < 300:
                self.acked[callback.key] = answer.json()["event_id"]
                self.tasks[callback.key] = callback.task_id
                continue
            self.unanswered += 1
            next_base = (base + 1) % len(self.bases)
            self._retry.append((time.monotonic() + self.retry_after, next_base, callback))
            await asyncio.sleep(0.01)  # a dead relay refuses at once: do not spin

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            await asyncio.gather(*(self._sender(client) for _ in range(self.concurrency)))


def accepted(sink: SubscriberServer) -> collections.Counter[str]:
    """How many times the subscriber answered 2xx to each event."""
    with sink.lock:
        return collections.Counter(r.event_id for r in sink.receipts if r.status < 300)


@dataclass
class Delivered:
    """What the subscriber saw of a set of acknowledged events."""

    at_least_once: int
    duplicates: int
    never: set[str]

    @classmethod
    def of(cls, acked: set[str], sink: SubscriberServer) -> Delivered:
        counts = accepted(sink)
        return cls(
            at_least_once=len(acked & set(counts)),
            duplicates=sum(count - 1 for count in counts.values()),
            never=acked - set(counts),
        )


def settle(
    relay: RelayProcess, acked: set[str], sink: SubscriberServer, timeout: float
) -> tuple[float, int]:
    """Wait until ``relay``'s store has nothing pending; then, as the person on call would,
    replay what failed (a delivery that used up its retries on the subscriber's errors) until
    every acked event reached ``sink`` or nothing failed is left. (seconds, replayed)."""
    begun = time.monotonic()
    deadline = begun + timeout
    replayed = 0

    def quiet() -> bool:
        return not relay.all_deliveries("pending")

    while True:
        wait_until(quiet, max(0.0, deadline - time.monotonic()), every=0.3)
        failed = relay.all_deliveries("failed")
        if acked <= set(accepted(sink)) or not failed or time.monotonic() > deadline:
            return time.monotonic() - begun, replayed
        answer = httpx.post(
            f"{relay.base}/v1/deliveries/replay", json={}, headers=relay.admin, timeout=30
        )
        answer.raise_for_status()
        replayed += len(failed)
