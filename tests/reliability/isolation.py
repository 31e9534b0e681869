"""One bad input harms nobody else: a poison callback in a burst, a subscriber answering NUL.

PostgreSQL refuses what SQLite takes (NUL in text, index entries over ~2.7 KB) and its store
sends the statements of one loop iteration together, so these run on SQLite and on two
PostgreSQL replicas, with real ``relay serve`` processes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx

from tests.conftest import EVOLINK_COMPLETED
from tests.relay_process import RelayProcess
from tests.reliability import Context, Row, free_port
from tests.reliability._harness import stored_events, subscribe, wait_until
from tests.subscriber_server import SubscriberServer

SECTION = "One bad input harms nobody else"

POISONS = {
    "NUL in the task id": "x\u0000",
    "task id of 10 KB of random characters": base64.b64encode(os.urandom(7_500)).decode(),
}


@contextmanager
def _relays(ctx: Context, store: str) -> Iterator[list[RelayProcess]]:
    """One relay on a SQLite file, or two replicas on one fresh PostgreSQL schema."""
    with ExitStack() as stack:
        if store == "sqlite":
            work = ctx.scratch("isolation-sqlite")
            relays = [RelayProcess(work, free_port(), RELAY_DELIVERY_TIMEOUT="2")]
        else:
            url = stack.enter_context(ctx.postgres())
            relays = [
                RelayProcess(
                    ctx.scratch(f"isolation-pg-{n}"),
                    free_port(),
                    RELAY_DATABASE_URL=url,
                    RELAY_DELIVERY_TIMEOUT="2",
                )
                for n in range(2)
            ]
        for relay in relays:
            relay.start()
            stack.callback(relay.stop)
        yield relays


def _completed(task_id: str) -> dict[str, Any]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = task_id
    return payload


def _mint(relay: RelayProcess) -> str:
    answer = httpx.post(
        f"{relay.base}/v1/callback-urls",
        json={"provider": "evolink", "reusable": True},
        headers=relay.admin,
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["url"])


async def _burst(posts: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Every callback at the same instant, each on its own connection: the statuses."""
    limits = httpx.Limits(max_connections=len(posts))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.post(url, json=body) for url, body in posts), return_exceptions=True
        )
    return [a.status_code if isinstance(a, httpx.Response) else 0 for a in answers]


def poison_in_a_burst(ctx: Context) -> list[Row]:
    rows = []
    bursts = ctx.pick(3, 20)
    for store in ("sqlite", "postgres"):
        for name, poison in POISONS.items():
            with _relays(ctx, store) as relays:
                urls = [_mint(relay) for relay in relays]
                acked: set[str] = set()
                refused: set[str] = set()
                answers: collections.Counter[str] = collections.Counter()
                for burst in range(bursts):
                    posts = [
                        (urls[n % len(urls)], _completed(f"burst-{burst}-{n}")) for n in range(40)
                    ]
                    posts.insert(20, (urls[0], _completed(poison)))
                    for (_, body), status in zip(posts, asyncio.run(_burst(posts)), strict=True):
                        kind = "poison" if body["id"] == poison else "normal"
                        answers[f"{kind} {status}"] += 1
                        if kind == "normal":
                            (acked if status == 200 else refused).add(body["id"])
                stored = set(stored_events(relays[0]).values())
            where = "SQLite, one relay" if store == "sqlite" else "PostgreSQL, two replicas"
            row = Row(
                SECTION,
                f"{where}: {name}, sent amid 40 normal callbacks",
                {
                    "bursts": bursts,
                    "answers": ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())),
                    "normal acked / stored": f"{len(acked)} / {len(acked & stored)}",
                    "normal refused yet stored": len(refused & stored),
                    "poison stored": int(poison in stored),
                },
                "Each burst posts 40 genuine Evolink callbacks and the poison at the same "
                "instant, each on its own connection (spread over the replicas); every answer "
                "is then compared with GET /v1/events.",
            )
            row.expect(answers["poison 422"] == bursts, "the poison was not refused with 422")
            row.expect(not refused, f"{len(refused)} normal callbacks were not acknowledged")
            row.expect(acked <= stored, "acknowledged callbacks are missing from the store")
            row.expect(poison not in stored, "the poison was stored")
            rows.append(row)
    return rows


def nul_answers(ctx: Context) -> list[Row]:
    rows = []
    count = ctx.pick(30, 200)
    for store in ("sqlite", "postgres"):
        hostile = SubscriberServer(answer_body=b"ok\x00\xff" * 300, host="127.0.0.2")
        hostile.script = lambda n: (200, 0.0)
        healthy = SubscriberServer(host="127.0.0.3")
        with ExitStack() as stack:
            for sink in (hostile, healthy):
                sink.start()
                stack.callback(sink.stop)
            relays = stack.enter_context(_relays(ctx, store))
            for sink in (hostile, healthy):
                subscribe(relays[0], sink)
            urls = [_mint(relay) for relay in relays]
            for n in range(count):
                httpx.post(urls[n % len(urls)], json=_completed(f"nul-{n}"), timeout=10)
            first = relays[0]
            started = time.monotonic()
            settled = wait_until(
                lambda r=first: len(r.all_deliveries("succeeded")) >= 2 * count, 30
            )
            took = time.monotonic() - started
            # A delivery whose answer could not be recorded stays pending and is sent again:
            # once none is pending, each was answered and recorded, and none is sent again.
            wait_until(lambda r=first: not r.all_deliveries("pending"), 30)
            pending = len(relays[0].all_deliveries("pending"))
            per_event = collections.Counter(r.event_id for r in hostile.receipts)
            subscribers = httpx.get(f"{first.base}/v1/subscribers", headers=first.admin).json()
            hostile_id = next(s["id"] for s in subscribers["items"] if s["url"] == hostile.url)
            sample = next(
                d for d in first.all_deliveries("succeeded") if d["subscriber_id"] == hostile_id
            )
            detail = httpx.get(
                f"{first.base}/v1/deliveries/{sample['id']}", headers=first.admin
            ).json()
        where = "SQLite, one relay" if store == "sqlite" else "PostgreSQL, two replicas"
        excerpt = str(detail["attempts"][-1]["response_excerpt"] or "")
        row = Row(
            SECTION,
            f"{where}: a subscriber answers 200 with NUL and bytes that are not UTF-8",
            {
                "callbacks": count,
                "deliveries succeeded (both subscribers)": f"{2 * count if settled else 'fewer'}",
                "settled after (s)": f"{took:.1f}",
                "still pending": pending,
                "hostile: events received / delivered twice": (
                    f"{len(per_event)} / {sum(1 for v in per_event.values() if v > 1)}"
                ),
                "healthy: received": len(healthy.receipts),
                "excerpt stored (first 12 characters)": repr(excerpt[:12]),
            },
            "A subscriber answering `ok\\0\\xff` x300 with 200 and a healthy one beside it; "
            "callbacks alternate between the replicas; deliveries and the stored excerpt from "
            "the admin API.",
        )
        row.expect(settled, "not every delivery succeeded")
        row.expect(pending == 0, f"{pending} deliveries still pending")
        row.expect(len(per_event) == count, "the hostile subscriber missed events")
        row.expect(max(per_event.values(), default=0) == 1, "events were delivered twice")
        row.expect(len(healthy.receipts) == count, "the healthy subscriber got a wrong count")
        row.expect(excerpt.startswith("ok\ufffd\ufffd"), "the excerpt was not stored safely")
        rows.append(row)
    return rows


SCENARIOS = [poison_in_a_burst, nul_answers]
